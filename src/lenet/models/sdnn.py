"""The Space Displacement Neural Network (LeCun et al. 1998, section VII): a LeNet swept along a
whole line of digits, convolutionally, answering "which digit is centred here, or none" every
few columns. ``lenet read`` uses it as a second opinion on every piece of its segmentation
graph (:mod:`lenet.linescan`); trained with CTC on lines of MNIST training digits
(:mod:`lenet.bench.lines`).

It reads a line image, not a 28x28 digit, so it is not in the model registry (``lenet train``
builds 28x28 classifiers). Shapes for a line W columns wide (batch N omitted; W even, and
columns past the last whole frame are dropped by the pooling), the line's digit height scaled
to MNIST's 20 px box (:data:`LINE_HEIGHT`), with the default frame stride of 2 columns:

    input    1x32xW      MNIST mean/std normalization
    c1      16x32xW      5x5 conv, padding 2, BN, ReLU         (LeNet-5's C1 field)
    s2      16x16xW/2    2x2 max pool
    c3      32x16xW/2    5x5 conv, padding 2, BN, ReLU         (C3's field)
    s4      32x8xW/2     2x1 max pool (height only: frames stay 2 columns apart)
    c5      64x8xW/2     3x3 conv, padding 1, BN, ReLU
    s6      64x4xW/2     2x1 max pool
    f7     192xW/2       the 4 rows as one vector per frame, 9-frame conv, ReLU, dropout
    output  11xW/2       5-frame conv: logits of "no digit centred here" (0) and digits 0-9

Every output frame sees 42 columns (about two digits), so it knows where a digit starts and
where its neighbour's stroke begins. ``SDNNConfig(stride=4)`` pools s4 2x2 as LeNet does
(frames 4 columns apart, 5- and 3-frame convolutions, 48 columns seen): a 1 overlapping its
neighbour by most of its width then often has no frame of its own, and such lines were read
worse (docs/read.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

LINE_HEIGHT = 20  # a digit's height on the line image (MNIST's 20 px box)
ROWS = 32  # line image height (LeNet-5's 32x32 field)
STRIDE = 2  # line-image columns per output frame (s2 x s4), the default
BLANK = 0  # output class 0: no digit centred here; class d + 1: digit d


@dataclass
class SDNNConfig:
    """Sizes of the line network; saved in its checkpoint and used to rebuild it."""

    c1: int = 16
    c3: int = 32
    c5: int = 64
    f7: int = 192
    dropout: float = 0.2
    classes: int = 11  # BLANK + ten digits
    # Columns per frame: 2 (s4 pools height only), or 4 (s4 pools 2x2: half the frames, and two
    # digits overlapping by most of a 1's width may share one).
    stride: int = STRIDE

    def to_dict(self) -> dict:
        """Plain types for the checkpoint."""
        return asdict(self)


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class SDNN(nn.Module):
    """LeNet swept along a line: (N, 1, 32, W) -> logits (N, 11, W / stride)."""

    def __init__(self, cfg: SDNNConfig | None = None):
        super().__init__()
        cfg = cfg or SDNNConfig()
        if cfg.stride not in (2, 4):
            raise ValueError(f"stride must be 2 or 4, not {cfg.stride}")
        self.cfg = cfg
        self.c1 = _conv_bn(1, cfg.c1, 5)
        self.s2 = nn.MaxPool2d(2)
        self.c3 = _conv_bn(cfg.c1, cfg.c3, 5)
        self.s4 = nn.MaxPool2d((2, cfg.stride // 2))
        self.c5 = _conv_bn(cfg.c3, cfg.c5, 3)
        self.s6 = nn.MaxPool2d((2, 1))
        rows = ROWS // 8  # three height halvings: 32 -> 4
        # The frame convolutions span about the same columns whatever the stride (16 and 8
        # between their outer frames): stride 2, 9 and 5 frames; stride 4, 5 and 3.
        k7, k8 = 1 + 16 // cfg.stride, 1 + 8 // cfg.stride
        self.f7 = nn.Sequential(
            nn.Conv1d(cfg.c5 * rows, cfg.f7, k7, padding=k7 // 2),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
        )
        self.output = nn.Conv1d(cfg.f7, cfg.classes, k8, padding=k8 // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, W) normalized line images -> (N, 11, W // stride) logits per frame."""
        x = self.s2(self.c1(x))  # (N, 16, 16, W/2)
        x = self.s4(self.c3(x))  # (N, 32, 8, W/s), s the stride
        x = self.s6(self.c5(x))  # (N, 64, 4, W/s)
        x = x.flatten(1, 2)  # (N, 256, W/s): a frame's 4 rows of 64 maps, one vector
        return self.output(self.f7(x))  # (N, 11, W/s)
