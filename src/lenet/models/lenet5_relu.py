"""LeNet-5 with modern layers, registered as ``lenet5-relu`` (the default): the study note's
layers and parameter count, with ReLU after every hidden layer and max pooling.

Shapes for one 28x28 MNIST digit (batch dimension N omitted) are those of ``lenet5``:

    input   1x28x28
    c1      6x28x28   5x5 conv, padding 2
    s2      6x14x14   2x2 max pooling, then ReLU
    c3     16x10x10   5x5 conv
    s4     16x5x5     2x2 max pooling, then ReLU
    c5    120x1x1     5x5 conv (a full connection over the 5x5 maps), ReLU
    f6     84         ReLU
    output 10         logits
"""

from __future__ import annotations

import torch
from torch import nn

from lenet import ops
from lenet.models.lenet5 import C1_MAPS, C3_MAPS, C5_UNITS, F6_UNITS, KERNEL
from lenet.models.registry import register_model
from lenet.normalization import MNIST_STATS


@register_model(
    "lenet5-relu",
    "modern LeNet-5: ReLU after every hidden layer, max pooling (61,706 params; the default)",
    normalization=MNIST_STATS,
    num_classes=10,
)
class LeNet5ReLU(nn.Module):
    """Same layers and parameter count as :class:`lenet.models.lenet5.LeNet5`, with ReLU and max pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, C1_MAPS, kernel_size=KERNEL, padding=2)
        self.s2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.c3 = nn.Conv2d(C1_MAPS, C3_MAPS, kernel_size=KERNEL)
        self.s4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.c5 = nn.Conv2d(C3_MAPS, C5_UNITS, kernel_size=KERNEL)
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(C5_UNITS, F6_UNITS)
        self.output = nn.Linear(F6_UNITS, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)  # (N, 6, 14, 14)
        x = self.block2(x)  # (N, 16, 5, 5)
        x = self.relu(self.conv5(x))  # (N, 120, 1, 1)
        x = self.relu(self.f6(self.flatten(x)))  # (N, 84)
        return self.output(x)  # (N, 10)

    # Each block pools, then applies ReLU: the two commute exactly (max is monotone, and the
    # gradients match too), and the ReLU then touches a 4x smaller map. Each block is one
    # operator: a fused CPU kernel where it applies, else PyTorch's ops on these modules.
    # TorchScript cannot compile lenet.ops, so scripting takes the modules.
    def block1(self, x: torch.Tensor) -> torch.Tensor:
        """c1 -> s2 -> ReLU: (N, 1, 28, 28) -> (N, 6, 28, 28) -> (N, 6, 14, 14)."""
        if torch.jit.is_scripting():
            return self.relu(self.s2(self.c1(x)))
        return self._op_block1(x)

    def block2(self, x: torch.Tensor) -> torch.Tensor:
        """c3 -> s4 -> ReLU: (N, 6, 14, 14) -> (N, 16, 10, 10) -> (N, 16, 5, 5)."""
        if torch.jit.is_scripting():
            return self.relu(self.s4(self.c3(x)))
        return self._op_block2(x)

    def conv5(self, x: torch.Tensor) -> torch.Tensor:
        """c5: (N, 16, 5, 5) -> (N, 120, 1, 1), one matrix product on CPU."""
        if torch.jit.is_scripting():
            return self.c5(x)
        return self._op_conv5(x)

    @torch.jit.unused
    def _op_block1(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv_maxpool_relu(x, self.c1, self.s2, self.relu)

    @torch.jit.unused
    def _op_block2(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv_maxpool_relu(x, self.c3, self.s4, self.relu)

    @torch.jit.unused
    def _op_conv5(self, x: torch.Tensor) -> torch.Tensor:
        return ops.whole_input_conv(x, self.c5)
