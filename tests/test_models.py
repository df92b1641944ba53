"""Model shapes, parameter counts, the note's state_dict format, and layers against references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenet.checkpoint import load_model
from lenet.models import count_parameters, create_model, list_models


class NoteMyLeNet5(nn.Module):
    """The study note's net.py, verbatim in structure (the reference for the seed format)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5, padding=2, stride=1)
        self.Sigmoid = nn.Sigmoid()
        self.s2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c3 = nn.Conv2d(in_channels=6, out_channels=16, kernel_size=5)
        self.s4 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c5 = nn.Conv2d(in_channels=16, out_channels=120, kernel_size=5)
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, 10)

    def forward(self, x):
        x = self.Sigmoid(self.c1(x))
        x = self.s2(x)
        x = self.Sigmoid(self.c3(x))
        x = self.s4(x)
        x = self.c5(x)
        x = self.flatten(x)
        x = self.f6(x)
        x = self.output(x)
        return x


def test_registry_has_core_models():
    assert {"lenet5", "lenet5-relu"} <= set(list_models())


def test_lenet5_parameter_count_matches_note():
    # c1 (5*5+1)*6 = 156, c3 (6*25+1)*16 = 2416, c5 (16*25+1)*120 = 48120, f6 121*84, out 85*10
    expected = 156 + 2416 + 48120 + (120 + 1) * 84 + (84 + 1) * 10
    assert expected == 61_706
    assert count_parameters(create_model("lenet5")) == 61_706
    assert count_parameters(create_model("lenet5-relu")) == 61_706


def test_lenet5_layer_shapes_follow_the_note():
    m = create_model("lenet5")
    x = torch.zeros(16, 1, 28, 28)  # the note's batch: torch.Size([16, 1, 28, 28])
    c1 = m.Sigmoid(m.c1(x))
    assert c1.shape == (16, 6, 28, 28)
    s2 = m.s2(c1)
    assert s2.shape == (16, 6, 14, 14)
    c3 = m.c3(s2)
    assert c3.shape == (16, 16, 10, 10)
    s4 = m.s4(c3)
    assert s4.shape == (16, 16, 5, 5)
    assert m.c5(s4).shape == (16, 120, 1, 1)
    assert m(x).shape == (16, 10)


def test_c1_matches_functional_conv2d_reference():
    m = create_model("lenet5")
    x = torch.randn(3, 1, 28, 28)
    ref = F.conv2d(F.pad(x, (2, 2, 2, 2)), m.c1.weight, m.c1.bias)
    torch.testing.assert_close(m.c1(x), ref)


def test_note_state_dict_loads_unchanged(tmp_path):
    torch.manual_seed(1)
    note = NoteMyLeNet5().eval()
    path = tmp_path / "best_model2.0.pth"
    torch.save(note.state_dict(), path)  # exactly what the note's train.py does
    lm = load_model(path)
    assert lm.name == "lenet5"
    assert lm.normalization.mean == 0.0 and lm.normalization.std == 1.0
    assert list(lm.model.state_dict()) == list(note.state_dict())
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(lm.model(x), note(x))


def test_every_model_runs_forward_and_backward():
    for name in list_models():
        m = create_model(name)
        out = m(torch.randn(2, 1, 28, 28))
        assert out.shape == (2, 10), name
        out.sum().backward()
