"""LeNet-5 as in the study note (its ``MyLeNet5``), registered as ``lenet5``.

Shapes for one 28x28 MNIST digit (batch dimension N omitted):

    input   1x28x28
    c1      6x28x28   5x5 conv, padding 2 (the note pads 28 -> 32 so c1 sees LeNet's 32x32)
    s2      6x14x14   2x2 pooling, stride 2
    c3     16x10x10   5x5 conv
    s4     16x5x5     2x2 pooling, stride 2
    c5    120x1x1     5x5 conv (a full connection over the 5x5 maps)
    f6     84
    output 10         logits
"""

from __future__ import annotations

import torch
from torch import nn

from lenet import ops
from lenet.models.registry import register_model
from lenet.normalization import TOTENSOR

IMAGE_SIZE = 28
KERNEL = 5
C1_MAPS, C3_MAPS, C5_UNITS, F6_UNITS = 6, 16, 120, 84
# Spatial size after c1 (same padding), s2, c3 (valid), s4:
S2_SIZE = IMAGE_SIZE // 2  # 14
C3_SIZE = S2_SIZE - KERNEL + 1  # 10
S4_SIZE = C3_SIZE // 2  # 5  (c5's 5x5 kernel covers it exactly -> 1x1)


@register_model(
    "lenet5",
    "the study note's MyLeNet5: sigmoid after c1/c3, average pooling, linear c5/f6 (61,706 params)",
    normalization=TOTENSOR,
    num_classes=10,
)
class LeNet5(nn.Module):
    """The note's network, module for module, so its saved ``state_dict`` loads unchanged."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, C1_MAPS, kernel_size=KERNEL, padding=2, stride=1)
        self.Sigmoid = nn.Sigmoid()  # the note's module list; both blocks call it
        self.s2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c3 = nn.Conv2d(C1_MAPS, C3_MAPS, kernel_size=KERNEL)
        self.s4 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.c5 = nn.Conv2d(C3_MAPS, C5_UNITS, kernel_size=KERNEL)
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(C5_UNITS, F6_UNITS)
        self.output = nn.Linear(F6_UNITS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)  # (N, 6, 14, 14)
        x = self.block2(x)  # (N, 16, 5, 5)
        x = self.conv5(x)  # (N, 120, 1, 1); the note applies no activation here
        x = self.flatten(x)  # (N, 120)
        x = self.f6(x)  # (N, 84); nor here
        return self.output(x)  # (N, 10)

    # Each block is one operator: a fused CPU kernel where it applies, else PyTorch's ops on
    # these modules. TorchScript cannot compile lenet.ops, so scripting takes the modules.
    def block1(self, x: torch.Tensor) -> torch.Tensor:
        """c1 -> sigmoid -> s2: (N, 1, 28, 28) -> (N, 6, 28, 28) -> (N, 6, 14, 14)."""
        if torch.jit.is_scripting():
            return self.s2(self.Sigmoid(self.c1(x)))
        return self._op_block1(x)

    def block2(self, x: torch.Tensor) -> torch.Tensor:
        """c3 -> sigmoid -> s4: (N, 6, 14, 14) -> (N, 16, 10, 10) -> (N, 16, 5, 5)."""
        if torch.jit.is_scripting():
            return self.s4(self.Sigmoid(self.c3(x)))
        return self._op_block2(x)

    def conv5(self, x: torch.Tensor) -> torch.Tensor:
        """c5: (N, 16, 5, 5) -> (N, 120, 1, 1), one matrix product on CPU."""
        if torch.jit.is_scripting():
            return self.c5(x)
        return self._op_conv5(x)

    @torch.jit.unused
    def _op_block1(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv_sigmoid_avgpool(x, self.c1, self.Sigmoid, self.s2)

    @torch.jit.unused
    def _op_block2(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv_sigmoid_avgpool(x, self.c3, self.Sigmoid, self.s4)

    @torch.jit.unused
    def _op_conv5(self, x: torch.Tensor) -> torch.Tensor:
        return ops.whole_input_conv(x, self.c5)
