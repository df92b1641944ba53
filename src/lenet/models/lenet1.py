"""LeNet-1: the network of LeCun et al., "Handwritten digit recognition with a back-propagation
network" (NIPS 2, 1990), listed as LeNet-1 (1.7% MNIST test error) in LeCun et al. 1998,
section III-C.

Shapes for one digit (batch N omitted); connections as the papers count them (one input of one
unit, bias included):

    input    1x28x28                                      params   connections
    h1       4x24x24   5x5 conv                              104        59,904
    h2       4x12x12   2x2 sum * coefficient + bias            8         2,880
    h3      12x8x8     5x5 conv, partial table (20 kernels)  512        32,768
    h4      12x4x4     2x2 sum * coefficient + bias           24           960
    output  10         full                                1,930         1,930
                                                           2,578        98,442

These totals are exactly the 1990 paper's "98,442 connections, 2,578 independent parameters",
which pins down the structure: trainable subsampling (2 parameters per map) and 20 kernels
between H2 and H3. The paper does not print *which* H2 maps each H3 map sees; our table
(``H3_TABLE``) gives maps 0-3 one H2 map each and maps 4-11 a pair each (every pair of the four
H2 maps once, plus two). Squashing is the 1998 paper's f(a) = 1.7159 tanh(2a/3) after every
hidden layer; the input uses the 1998 scaling (background -0.1, ink 1.175); the output is ten
plain units trained with cross-entropy (our choice; the 1990 paper used squared error).
"""

from __future__ import annotations

import torch
from torch import nn

from lenet.models.layers import PAPER_1998, PartialConv2d, ScaledTanh, Subsample, lecun_uniform_
from lenet.models.registry import register_model

IMAGE_SIZE = 28
KERNEL = 5
H1_MAPS, H3_MAPS = 4, 12
H1_SIZE = IMAGE_SIZE - KERNEL + 1  # 24
H2_SIZE = H1_SIZE // 2  # 12
H3_SIZE = H2_SIZE - KERNEL + 1  # 8
H4_SIZE = H3_SIZE // 2  # 4

# H3 map -> the H2 maps it sees: 4 single + 8 pairs = 20 kernels (the count the paper's 2,578
# parameters require).
H3_TABLE: list[tuple[int, ...]] = [
    (0,), (1,), (2,), (3,),
    (0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3), (0, 1), (2, 3),
]  # fmt: skip


@register_model(
    "lenet1",
    "LeNet-1 (LeCun et al. 1990): 4 and 12 feature maps, trainable subsampling, 28x28 input "
    "(2,578 params, 98,442 connections)",
    normalization=PAPER_1998,
    num_classes=10,
)
class LeNet1(nn.Module):
    """LeNet-1 (see the module docstring for shapes, counts and choices)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.h1 = nn.Conv2d(1, H1_MAPS, KERNEL)
        self.h2 = Subsample(H1_MAPS)
        self.h3 = PartialConv2d(H1_MAPS, H3_TABLE, KERNEL)
        self.h4 = Subsample(H3_MAPS)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(H3_MAPS * H4_SIZE * H4_SIZE, num_classes)
        self.act = ScaledTanh()
        lecun_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.h1(x))  # (N, 4, 24, 24)
        x = self.act(self.h2(x))  # (N, 4, 12, 12)
        x = self.act(self.h3(x))  # (N, 12, 8, 8)
        x = self.act(self.h4(x))  # (N, 12, 4, 4)
        return self.output(self.flatten(x))  # (N, 10) logits
