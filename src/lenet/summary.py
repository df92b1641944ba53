"""``lenet summary``: per layer output shape, parameters and connections, traced from a forward pass.

Connections are counted the way LeCun et al. (1998) count them: one per input of each unit,
bias included (for a convolution: output positions x (kernel taps + 1)). That is also the number
of multiply-adds of the layer, and it makes LeNet-5 come out at the paper's 340,908.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lenet.models import count_parameters
from lenet.models.layers import EuclideanRBF, PartialConv2d, Subsample

INPUT_SHAPE = (1, 28, 28)  # what every registered model is fed (the engine is model-agnostic)


@dataclass
class LayerRow:
    """One traced layer: a direct child module of the model, in the order it was called."""

    name: str
    type: str
    output_shape: list[int]
    params: int
    connections: int
    # the layer's output for the traced input and, if a parameter-free shape-keeping module
    # (an activation) ran right after it, that module's output: what the next layer sees
    output: torch.Tensor | None = field(default=None, repr=False)
    activated: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (without the traced tensors)."""
        d = asdict(self)
        d.pop("output")
        d.pop("activated")
        return d


@dataclass
class Summary:
    """The whole table: model name, input shape, rows, totals."""

    model: str
    description: str
    input_shape: list[int]
    layers: list[LayerRow]
    total_params: int
    total_connections: int

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {
            "model": self.model,
            "description": self.description,
            "input_shape": self.input_shape,
            "layers": [r.to_dict() for r in self.layers],
            "total_params": self.total_params,
            "total_connections": self.total_connections,
        }


def leaf_connections(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Connections of one leaf module for ONE sample (its batch dimension divided out)."""
    n = out.shape[0]
    per_sample = out.numel() // n
    if isinstance(module, nn.Conv2d):
        return per_sample * (module.weight[0].numel() + (module.bias is not None))
    if isinstance(module, PartialConv2d):
        return math.prod(out.shape[2:]) * module.connections_per_output
    if isinstance(module, nn.Linear):
        return module.out_features * (module.in_features + (module.bias is not None))
    if isinstance(module, Subsample):
        return per_sample * (module.window**2 + 1)
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        k = module.kernel_size
        return per_sample * (k * k if isinstance(k, int) else math.prod(k))
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return inp.numel() // n
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return per_sample  # one multiply-add per value (foldable into the conv at inference)
    if isinstance(module, EuclideanRBF):
        return module.prototypes.numel()
    return 0


def _is_leaf(m: nn.Module) -> bool:
    return isinstance(m, PartialConv2d | Subsample | EuclideanRBF) or not any(m.children())


@torch.no_grad()
def _called_children(model: nn.Module):
    """(name, module) of each direct child the forward calls; a ModuleList (never called
    itself, e.g. an ensemble's members) stands for its items, named ``members.0`` etc."""
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            yield from ((f"{name}.{i}", m) for i, m in enumerate(child))
        else:
            yield name, child


def trace(model: nn.Module, x: torch.Tensor, keep_outputs: bool = False) -> list[LayerRow]:
    """Run ``model(x)`` once and return a row per call of each direct child module.

    Parameter-free modules that keep the shape (activations, dropout) get no row of their own;
    their output is stored as the previous row's ``activated`` map instead.
    """
    rows: list[LayerRow] = []
    seen: set[int] = set()
    current: list[LayerRow | None] = [None]
    hooks = []

    def child_pre(name):
        def hook(m, args):
            current[0] = LayerRow(name, type(m).__name__, [], 0, 0)

        return hook

    def child_post(m, args, out):
        row = current[0]
        current[0] = None
        inp = args[0] if args else None
        row.output_shape = list(out.shape[1:])
        if id(m) not in seen:
            row.params = count_parameters(m)
            seen.add(id(m))
        passthrough = (
            row.params == 0
            and row.connections == 0
            and inp is not None
            and tuple(inp.shape) == tuple(out.shape)
        )
        if passthrough and rows:
            if keep_outputs:
                rows[-1].activated = out.detach()
            return
        if keep_outputs:
            row.output = out.detach()
        rows.append(row)

    def leaf_post(m, args, out):
        if current[0] is not None and isinstance(out, torch.Tensor):
            current[0].connections += leaf_connections(m, args[0], out)

    for name, child in _called_children(model):
        # leaf hooks first: a child that is itself a leaf must count before child_post closes it
        for sub in child.modules():
            if _is_leaf(sub):
                hooks.append(sub.register_forward_hook(leaf_post))
        hooks.append(child.register_forward_pre_hook(child_pre(name)))
        hooks.append(child.register_forward_hook(child_post))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def summarize(model: nn.Module, name: str = "", description: str = "") -> Summary:
    """Trace one zero digit of :data:`INPUT_SHAPE` through ``model`` and total the counts."""
    device = next(model.parameters()).device
    rows = trace(model, torch.zeros(1, *INPUT_SHAPE, device=device))
    total_params = count_parameters(model)
    if sum(r.params for r in rows) != total_params:
        # a parameter owned by the model itself rather than a child: show it as its own row
        rows.append(
            LayerRow("(other)", "Parameter", [], total_params - sum(r.params for r in rows), 0)
        )
    connections = sum(r.connections for r in rows)
    return Summary(name, description, list(INPUT_SHAPE), rows, total_params, connections)


def shape_str(shape: list[int]) -> str:
    """``[6, 28, 28]`` -> ``6x28x28``."""
    return "x".join(str(s) for s in shape) if shape else "-"


def format_summary(s: Summary) -> str:
    """The summary as an aligned text table."""
    head = ("layer", "type", "output", "params", "connections")
    lines = [("input", "", shape_str(s.input_shape), "", "")]
    for r in s.layers:
        lines.append(
            (r.name, r.type, shape_str(r.output_shape), f"{r.params:,}", f"{r.connections:,}")
        )
    lines.append(("total", "", "", f"{s.total_params:,}", f"{s.total_connections:,}"))
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(5)]

    def fmt(row):
        left = "  ".join(row[i].ljust(widths[i]) for i in range(3))
        right = "  ".join(row[i].rjust(widths[i]) for i in range(3, 5))
        return f"{left}  {right}".rstrip()

    rule = "-" * len(fmt(head))
    title = f"{s.model}: {s.description}" if s.description else s.model
    return "\n".join([title, "", fmt(head), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])
