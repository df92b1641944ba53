"""CPU speed-ups that keep a model's math and weights: memory layout and GEMM-shaped convolutions.

LeNet-sized layers are far too small for oneDNN's convolution kernels to run near peak; per-call
overhead and poorly vectorised shapes dominate. Measured on 2-core Xeons (single thread, CPU time,
``docs/benchmarks.md``), the two changes below give about +20% (batch 16) to +40% (batch 256) for
a training step, with the same parameters, the same ``state_dict`` keys and the same outputs up to
float32 rounding. Things measured and *not* adopted are listed in ``docs/benchmarks.md``
(torch.compile, unfold convolutions, bf16 autocast, fused optimizers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
            # (N, C, k, k) -> (N, C*k*k) @ (C*k*k, out) -> (N, out, 1, 1)
            w = self.weight.reshape(self.out_channels, -1)
            return F.linear(x.reshape(n, -1), w, self.bias).reshape(n, self.out_channels, 1, 1)
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


def optimize_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Speed a model up for ``device`` without changing its math (in place; returns it).

    On CPU: channels-last weights (oneDNN's faster NHWC convolution and pooling paths) and
    GEMM-shaped whole-input convolutions. Elsewhere (CUDA/MPS) cuDNN already handles these
    shapes well, so the model is returned unchanged.
    """
    if torch.device(device).type != "cpu":
        return model
    gemm_convolutions(model)
    return model.to(memory_format=torch.channels_last)
