"""lenet5-ensemble: K independently trained ``lenet5-relu`` networks answering as ONE network:
the mean of their log-probabilities (a committee, as the 1998 paper's boosted LeNet-4 combined
three LeNet-4s). Members trained from different seeds disagree on digits unlike any they have
seen, and their average is steadier on writers MNIST never had than any one of them.

The members run one after the other, each through lenet5-relu's fused CPU blocks. Stacking
them side by side in grouped convolutions (``groups=K``) was measured first and was slower:
5 members at batch 256 took 96 ms grouped against 16 ms one by one (torch 2.13 CPU, 1 thread).

Shapes for one 28x28 digit (batch N omitted):

    input    1x28x28    MNIST mean/std normalization (as lenet5-relu)
    member k 10         lenet5-relu logits (see lenet5_relu.py), k = 1..K
    votes    Kx10       log-softmax per member
    logits   10         mean over the K members (a geometric mean of their probabilities)

Build one from trained members with :func:`stack`; training it directly (``lenet train --model
lenet5-ensemble``) also works, but couples the members through the shared loss.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lenet.models.lenet5_relu import LeNet5ReLU
from lenet.models.registry import register_model
from lenet.normalization import MNIST_STATS

MEMBERS = 5


@register_model(
    "lenet5-ensemble",
    "a committee of lenet5-relu networks answering the mean of their log-probabilities "
    "(5 members: 308,530 params)",
    normalization=MNIST_STATS,
    num_classes=10,
    members=MEMBERS,
)
class LeNet5Ensemble(nn.Module):
    """``members`` lenet5-relu networks whose log-probabilities are averaged."""

    def __init__(self, num_classes: int = 10, members: int = MEMBERS):
        super().__init__()
        if members < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(LeNet5ReLU(num_classes) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        votes = torch.stack([m(x) for m in self.members], dim=1)  # (N, K, 10)
        return torch.log_softmax(votes, dim=2).mean(dim=1)  # (N, 10)


def stack(members: list[LeNet5ReLU]) -> LeNet5Ensemble:
    """One :class:`LeNet5Ensemble` holding copies of ``members`` (in eval mode)."""
    if not members or any(type(m) is not LeNet5ReLU for m in members):
        raise ValueError("stack() takes one or more lenet5-relu networks")
    classes = {m.output.out_features for m in members}
    if len(classes) != 1:
        raise ValueError("the members answer different numbers of classes")
    ens = LeNet5Ensemble(num_classes=classes.pop(), members=len(members))
    for slot, m in zip(ens.members, members, strict=True):
        slot.load_state_dict(copy.deepcopy(m.state_dict()))
    return ens.eval()
