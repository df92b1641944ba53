"""LeNet-5 as published: LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to
document recognition", Proc. IEEE 86(11), 1998, section II-B and appendix A.

Shapes for one digit (batch N omitted); parameters and connections as the paper counts them
(a connection is one input of one unit, bias included):

    input    1x28x28   scaled so background = -0.1, ink = 1.175 (``PAPER_1998`` normalization)
    pad      1x32x32   the paper's 32x32 field: MNIST's 28x28 centred with 2 pixels of background
    c1       6x28x28   5x5 conv                          156 params   122,304 connections
    s2       6x14x14   2x2 sum * coefficient + bias       12 params     5,880 connections
    c3      16x10x10   5x5 conv, Table I connections   1,516 params   151,600 connections
    s4      16x5x5     2x2 sum * coefficient + bias       32 params     2,000 connections
    c5     120x1x1     5x5 conv over all 16 maps      48,120 params    48,120 connections
    f6      84         full                           10,164 params    10,164 connections
    output  10         Euclidean RBF, fixed prototypes      0 params       840 connections
                                                      60,000 params   340,908 connections

Every layer up to f6 is followed by f(a) = 1.7159 tanh(2a/3); weights start uniform in
+-2.4/sqrt(fan-in) (the paper's choices; the paper prints 2.4/fan-in, which cannot keep the
weighted sums in the sigmoid's range as it says it does: see ``lecun_uniform_``).

Choices where the paper cannot be followed literally (documented in the README):

* RBF prototypes: the paper draws them as 7x12 bitmaps of the ASCII characters (+1 ink, -1
  background) but does not publish the bitmaps; ``DIGIT_BITMAPS`` below are our own 7x12
  digit drawings in that style, fixed (a buffer, not a parameter).
* Loss: the output returns ``-y_i`` (negative squared distances) and the engine's cross-entropy
  on it equals the paper's MAP criterion (eq. 9) without its constant rubbish-class term
  ``exp(-j)`` (the paper gives no value for j); ``--rbf-j`` adds it (``lenet.engine.loss_logits``).
  The default recipes train with our optimizers; ``--recipe paper`` uses the paper's stochastic
  diagonal Levenberg-Marquardt (``lenet.optim.SDLM``) and eta schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from lenet.models.layers import (
    PAPER_1998,
    EuclideanRBF,
    PadTo,
    PartialConv2d,
    ScaledTanh,
    Subsample,
    lecun_uniform_,
)
from lenet.models.registry import register_model

FIELD = 32  # the paper's input field
KERNEL = 5
C1_MAPS, C3_MAPS, C5_UNITS, F6_UNITS = 6, 16, 120, 84
C1_SIZE = FIELD - KERNEL + 1  # 28
S2_SIZE = C1_SIZE // 2  # 14
C3_SIZE = S2_SIZE - KERNEL + 1  # 10
S4_SIZE = C3_SIZE // 2  # 5 -> c5's 5x5 kernel leaves 1x1

# Table I of the paper: which S2 maps (0-5) each C3 map (0-15) sees. Maps 0-5 take 3
# contiguous S2 maps, 6-11 take 4 contiguous, 12-14 take 4 non-contiguous, 15 takes all six.
C3_TABLE: list[tuple[int, ...]] = [
    *[tuple((i + k) % C1_MAPS for k in range(3)) for i in range(6)],
    *[tuple((i + k) % C1_MAPS for k in range(4)) for i in range(6)],
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
]

# Our 7x12 bitmaps of the digits 0-9 ('#' = ink -> +1, '.' = background -> -1), in the style
# of the paper's Figure 3 (stylized characters on a 7x12 grid, hence F6's 84 units).
DIGIT_BITMAPS: list[str] = [
    "..###.. .#...#. #.....# #.....# #.....# #.....# #.....# #.....# #.....# #.....# .#...#. ..###..",
    "...#... ..##... .#.#... ...#... ...#... ...#... ...#... ...#... ...#... ...#... ...#... .#####.",
    "..###.. .#...#. #.....# ......# .....#. ....#.. ...#... ..#.... .#..... #...... #...... #######",
    ".#####. #.....# ......# ......# .....#. ..###.. .....#. ......# ......# ......# #.....# .#####.",
    ".....#. ....##. ...#.#. ..#..#. .#...#. #....#. #######  .....#. .....#. .....#. .....#. .....#.",
    "####### #...... #...... #...... ######. ......# ......# ......# ......# ......# #.....# .#####.",
    "..####. .#..... #...... #...... #.###.. ##...#. #.....# #.....# #.....# #.....# .#...#. ..###..",
    "####### ......# .....#. .....#. ....#.. ....#.. ...#... ...#... ..#.... ..#.... ..#.... ..#....",
    "..###.. .#...#. #.....# #.....# .#...#. ..###.. .#...#. #.....# #.....# #.....# .#...#. ..###..",
    "..###.. .#...#. #.....# #.....# #.....# .#...## ..###.# ......# ......# .....#. ....#.. .###...",
]
BITMAP_W, BITMAP_H = 7, 12


def digit_prototypes() -> torch.Tensor:
    """(10, 84) prototype vectors: +1 for ink, -1 for background, row by row."""
    rows = []
    for art in DIGIT_BITMAPS:
        lines = art.split()
        assert len(lines) == BITMAP_H and all(len(r) == BITMAP_W for r in lines), art
        rows.append([1.0 if c == "#" else -1.0 for line in lines for c in line])
    return torch.tensor(rows)


@register_model(
    "lenet5-1998",
    "LeNet-5 exactly as in LeCun et al. 1998: 32x32 input, scaled tanh, trainable subsampling, "
    "Table I C3, fixed RBF output (60,000 params, 340,908 connections)",
    normalization=PAPER_1998,
    num_classes=10,
)
class LeNet5_1998(nn.Module):
    """The 1998 paper's LeNet-5 (see the module docstring for shapes, counts and choices)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        if num_classes != 10:
            raise ValueError("lenet5-1998's RBF prototypes are the ten digits")
        self.pad = PadTo(FIELD)
        self.c1 = nn.Conv2d(1, C1_MAPS, KERNEL)
        self.s2 = Subsample(C1_MAPS)
        self.c3 = PartialConv2d(C1_MAPS, C3_TABLE, KERNEL)
        self.s4 = Subsample(C3_MAPS)
        self.c5 = nn.Conv2d(C3_MAPS, C5_UNITS, KERNEL)
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(C5_UNITS, F6_UNITS)
        self.output = EuclideanRBF(digit_prototypes())
        self.act = ScaledTanh()
        lecun_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)  # (N, 1, 32, 32)
        x = self.act(self.c1(x))  # (N, 6, 28, 28)
        x = self.act(self.s2(x))  # (N, 6, 14, 14)
        x = self.act(self.c3(x))  # (N, 16, 10, 10)
        x = self.act(self.s4(x))  # (N, 16, 5, 5)
        x = self.act(self.c5(x))  # (N, 120, 1, 1)
        x = self.act(self.f6(self.flatten(x)))  # (N, 84)
        return self.output(x)  # (N, 10): minus squared distance to each digit's prototype
