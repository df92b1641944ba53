"""CPU speed-ups that keep a model's math and weights: layout, GEMM-shaped convs, fused kernels.

LeNet-sized layers are far too small for oneDNN's convolution kernels to run near peak; per-call
overhead and poorly vectorised shapes dominate. Measured on 2-core Xeons (single thread, CPU time,
``docs/benchmarks.md``), the two changes below give about +20% (batch 16) to +40% (batch 256) for
a training step, with the same parameters, the same ``state_dict`` keys and the same outputs up to
float32 rounding. On top, LeNet-5's conv blocks (``lenet5-relu``: conv -> max pool -> ReLU;
the note's ``lenet5``: conv -> sigmoid -> average pool) run as fused C kernels
(:mod:`lenet.kernels`) when those can be built. Things measured and *not* adopted are listed in
``docs/benchmarks.md`` (torch.compile, unfold convolutions, bf16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenet import kernels
from lenet.models.lenet5 import LeNet5
from lenet.models.lenet5_relu import LeNet5ReLU


class WholeInputConv2d(nn.Conv2d):
    """A ``Conv2d`` that runs as one matrix product when its kernel covers the whole input.

    LeNet's c5 (16x5x5 maps, 5x5 kernel, no padding) is a full connection in convolution's
    clothes: (N, C, k, k) x (out, C*k*k) -> (N, out, 1, 1). ``F.linear`` does it ~4x faster
    than the convolution kernel on CPU, forward and backward. Any other input shape falls back
    to the ordinary convolution, so the swap is always safe.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() == 4
            and tuple(x.shape[-2:]) == tuple(self.kernel_size)
            and self.padding in ((0, 0), "valid")
            and self.groups == 1
            and self.dilation == (1, 1)
        ):
            n = x.shape[0]
            cl = torch.channels_last
            if x.is_contiguous(memory_format=cl) and self.weight.is_contiguous(memory_format=cl):
                # Both in NHWC memory: flatten in (k, k, C) order, which is then a view of each
                # (no copies forward or backward); the same sum, in another order.
                xf = x.permute(0, 2, 3, 1).reshape(n, -1)
                w = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            else:
                xf, w = x.reshape(n, -1), self.weight.reshape(self.out_channels, -1)
            # (N, C*k*k) @ (C*k*k, out) -> (N, out, 1, 1)
            return F.linear(xf, w, self.bias).reshape(n, self.out_channels, 1, 1)
        return super().forward(x)


def gemm_convolutions(model: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` a :class:`WholeInputConv2d` in place; returns how many.

    Only the class changes (a subclass with one overridden ``forward``): the parameters, the
    ``state_dict`` keys and ``isinstance(m, nn.Conv2d)`` all stay as they were.
    """
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and m.padding_mode == "zeros":
            m.__class__ = WholeInputConv2d
            n += 1
    return n


class _FusedBlocks:
    """Mixin: ``block1``/``block2`` as fused CPU kernels where they apply (:mod:`lenet.kernels`).

    Same modules, parameters and ``state_dict``; each block falls back to the model's own
    modules for anything the kernels do not cover (other devices or dtypes, an input that needs
    a gradient, a machine without a C compiler).
    """

    def block1(self, x: torch.Tensor) -> torch.Tensor:
        """c1 -> s2 (with the block's activation) in one pass over each image."""
        if kernels.block1_supported(x, self.c1, self.s2):
            return kernels.block1(x, self.c1, self.s2)
        return super().block1(x)

    def block2(self, x: torch.Tensor) -> torch.Tensor:
        """c3 -> s4 (with the block's activation) in one pass over each image."""
        if kernels.block2_supported(x, self.c3, self.s4):
            return kernels.block2(x, self.c3, self.s4)
        return super().block2(x)


class FusedLeNet5ReLU(_FusedBlocks, LeNet5ReLU):
    """:class:`LeNet5ReLU` with fused conv -> max pool -> ReLU blocks."""


class FusedLeNet5(_FusedBlocks, LeNet5):
    """The study note's :class:`LeNet5` with fused conv -> sigmoid -> average pool blocks."""


_FUSED = {LeNet5ReLU: FusedLeNet5ReLU, LeNet5: FusedLeNet5}


def optimize_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Speed a model up for ``device`` without changing its math (in place; returns it).

    On CPU: channels-last weights (oneDNN's faster NHWC convolution and pooling paths),
    GEMM-shaped whole-input convolutions, and fused conv blocks for ``lenet5``/``lenet5-relu``
    when :func:`lenet.kernels.available` (``LENET_KERNELS=0`` turns them off). Elsewhere
    (CUDA/MPS) cuDNN already handles these shapes well, so the model is returned unchanged.
    """
    if torch.device(device).type != "cpu":
        return model
    gemm_convolutions(model)
    if type(model) in _FUSED and kernels.available():
        model.__class__ = _FUSED[type(model)]
    return model.to(memory_format=torch.channels_last)
