"""Building blocks of the 1990s LeNets: scaled tanh, trainable subsampling, partial connection
tables, padding to 32x32, and the fixed-prototype RBF output layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lenet.normalization import PAPER_1998  # noqa: F401  (re-exported for the model files)

# Appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, so f(1) = 1 and f(-1) = -1.
TANH_A, TANH_S = 1.7159, 2.0 / 3.0


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = 1.7159 tanh(2a/3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TANH_A * torch.tanh(TANH_S * x)


class PadTo(nn.Module):
    """Pad an (N,C,H,W) map symmetrically to ``size`` x ``size``, repeating the border pixel.

    MNIST borders are background, so replicating them pads with background under *any*
    normalization (the paper's -0.1, ToTensor's 0, MNIST mean/std's -0.42).
    """

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self.size - x.shape[-2], self.size - x.shape[-1]
        if dh == 0 and dw == 0:
            return x
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Subsample(nn.Module):
    """The paper's subsampling map: the 2x2 inputs are added, multiplied by one trainable
    coefficient and shifted by one trainable bias per map (2 parameters per map)."""

    window = 2

    def __init__(self, maps: int):
        super().__init__()
        # coefficient 1/4 starts the layer as a plain average
        self.weight = nn.Parameter(torch.full((maps,), 1.0 / self.window**2))
        self.bias = nn.Parameter(torch.zeros(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.window
        summed = F.avg_pool2d(x, k) * (k * k)  # (N, maps, H/2, W/2): sum of each 2x2 block
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"maps={self.weight.numel()}, window={self.window}"


class PartialConv2d(nn.Module):
    """A convolution where output map ``o`` only sees the input maps listed in ``table[o]``.

    Only the kernels that exist are parameters (so parameter counts are exact); the full
    (out, in, k, k) weight is assembled with zeros for the missing connections on each call.
    """

    def __init__(self, in_maps: int, table: Sequence[Sequence[int]], kernel_size: int = 5):
        super().__init__()
        self.in_maps, self.out_maps, self.kernel_size = in_maps, len(table), kernel_size
        self.table = [tuple(int(i) for i in row) for row in table]
        flat = [o * in_maps + i for o, row in enumerate(self.table) for i in row]
        if any(not 0 <= i < in_maps for row in self.table for i in row):
            raise ValueError("connection table refers to a missing input map")
        self.register_buffer("index", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(flat), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.out_maps))

    @property
    def connections_per_output(self) -> int:
        """Kernel taps plus bias, summed over all output maps, for one output position."""
        return self.weight.numel() + self.out_maps

    def full_weight(self) -> torch.Tensor:
        """The dense (out, in, k, k) kernel with zeros where the table has no connection."""
        k = self.kernel_size
        full = self.weight.new_zeros(self.out_maps * self.in_maps, k, k)
        full = full.index_copy(0, self.index, self.weight)
        return full.view(self.out_maps, self.in_maps, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.full_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_maps}, {self.out_maps}, kernel_size={self.kernel_size}, kernels={len(self.index)}"


class EuclideanRBF(nn.Module):
    """Output layer of LeNet-5: y_i = sum_j (x_j - w_ij)^2 to FIXED prototypes w_i.

    Returns ``-y`` so that larger is better and the engine's cross-entropy applies: the
    cross-entropy of ``-y`` is exactly the paper's MAP criterion (eq. 9),
    ``y_D + log(exp(-j) + sum_i exp(-y_i))``, without the constant "rubbish class" term
    ``exp(-j)`` (i.e. with j -> infinity; ``--rbf-j`` adds it in the training loss).
    """

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        # not a parameter: the paper sets the prototypes by hand and keeps them fixed
        self.register_buffer("prototypes", prototypes.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 84) vs (10, 84) -> (N, 10) squared distances
        d = (x.unsqueeze(1) - self.prototypes.unsqueeze(0)).pow(2).sum(-1)
        return -d


def lecun_uniform_(module: nn.Module) -> None:
    """The paper's initialization, as its stated aim requires: weights uniform in
    [-2.4/sqrt(F), 2.4/sqrt(F)] with F the fan-in of the unit; biases zero. Subsampling
    coefficients keep their 1/4 start.

    Why sqrt(F) where the 1998 paper prints 2.4/F: the paper divides by the fan-in so that every
    unit's weighted sum has a standard deviation in the same range, the sigmoid's operating
    region, which only sqrt(F) does (a sum of F inputs with weights of standard deviation
    1.386/F has a standard deviation 1.386/sqrt(F) times its inputs'). Read literally,
    lenet5-1998's weighted sums shrink layer by layer (F6's have a standard deviation of 2e-4 on
    real digits), the weights' second derivatives SDLM estimates are 1e-6 to 1e-4, far below
    mu, and training at the paper's eta diverges in its first pass; with sqrt(F) they stay near 1 and
    the first pass's effective learning rates, eta / (mu + h_kk), top out at 0.012-0.014 against
    the 0.016 the paper reports (docs/training.md, "The paper's training"). Karpathy's reproduction
    of the 1989 network made the same reading of the same formula."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            bound = 2.4 / m.weight[0].numel() ** 0.5  # fan-in of one unit (grouped convs too)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, PartialConv2d):
            # fan-in differs per output map: (number of input maps in its row) * k * k
            with torch.no_grad():
                for o, row in enumerate(m.table):
                    start = sum(len(r) for r in m.table[:o])
                    bound = 2.4 / (len(row) * m.kernel_size**2) ** 0.5
                    m.weight[start : start + len(row)].uniform_(-bound, bound)
                m.bias.zero_()
