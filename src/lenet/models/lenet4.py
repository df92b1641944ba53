"""LeNet-4: LeCun et al. 1998, section III-C.7 ("LeNet-4 ... 32x32 input, 4 first-level feature
maps, subsampling, 16 feature maps, subsampling, a fully connected layer of 120 units, 10
outputs: about 260,000 connections and about 17,000 free parameters"; 1.1% MNIST test error).

Shapes for one digit (batch N omitted); connections as the paper counts them:

    input    1x28x28                                           params   connections
    pad      1x32x32   MNIST's 28x28 centred in the 32x32 field
    c1       4x28x28   5x5 conv                                   104        81,536
    s2       4x14x14   2x2 sum * coefficient + bias                 8         3,920
    c3      16x10x10   5x5 conv from all 4 maps                 1,616       161,600
    s4      16x5x5     2x2 sum * coefficient + bias                32         2,000
    f5     120x1x1     5x5 windows, each unit sees 4 of 16 maps 12,120        12,120
    output  10         full                                     1,210         1,210
                                                               15,090       262,386

The paper gives no connection tables. Taken literally (120 units fully connected to 16x5x5
maps) the f5 layer alone would have 48,120 parameters, three times the stated total, so the
layer must be partially connected. Our choice: f5 is a grouped 5x5 convolution, the 16 S4 maps
in 4 groups of 4 consecutive maps with 30 units per group, which lands near both stated totals
(15,090 vs "about 17,000" parameters, 262,386 vs "about 260,000" connections). C3 is fully
connected (4 -> 16). Squashing, input scaling and initialization as in the 1998 paper; the
output is ten plain units trained with cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

from lenet.models.layers import PAPER_1998, PadTo, ScaledTanh, Subsample, lecun_uniform_
from lenet.models.registry import register_model

FIELD = 32
KERNEL = 5
C1_MAPS, C3_MAPS, F5_UNITS = 4, 16, 120
F5_GROUPS = 4  # each f5 unit sees C3_MAPS / F5_GROUPS = 4 of the S4 maps
S4_SIZE = ((FIELD - KERNEL + 1) // 2 - KERNEL + 1) // 2  # 32 -> 28 -> 14 -> 10 -> 5


@register_model(
    "lenet4",
    "LeNet-4 (LeCun et al. 1998): 32x32 field, 4 and 16 feature maps, 120 hidden units "
    "(15,090 params, 262,386 connections)",
    normalization=PAPER_1998,
    num_classes=10,
)
class LeNet4(nn.Module):
    """LeNet-4 (see the module docstring for shapes, counts and choices)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.pad = PadTo(FIELD)
        self.c1 = nn.Conv2d(1, C1_MAPS, KERNEL)
        self.s2 = Subsample(C1_MAPS)
        self.c3 = nn.Conv2d(C1_MAPS, C3_MAPS, KERNEL)
        self.s4 = Subsample(C3_MAPS)
        self.f5 = nn.Conv2d(C3_MAPS, F5_UNITS, S4_SIZE, groups=F5_GROUPS)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(F5_UNITS, num_classes)
        self.act = ScaledTanh()
        lecun_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)  # (N, 1, 32, 32)
        x = self.act(self.c1(x))  # (N, 4, 28, 28)
        x = self.act(self.s2(x))  # (N, 4, 14, 14)
        x = self.act(self.c3(x))  # (N, 16, 10, 10)
        x = self.act(self.s4(x))  # (N, 16, 5, 5)
        x = self.act(self.f5(x))  # (N, 120, 1, 1)
        return self.output(self.flatten(x))  # (N, 10) logits
