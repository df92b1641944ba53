"""Fused LeNet block operators (the C kernels of :mod:`lenet.kernels`) with the ATen path as fallback.

The models call these in their forward: one call per conv block
(:func:`conv_maxpool_relu`, :func:`conv_sigmoid_avgpool`) and one for a convolution whose
kernel covers its whole input (:func:`whole_input_conv`). Each gives the same values and
gradients as PyTorch's own ops up to float32 rounding, with the same modules and parameters,
so ``state_dict`` files are unchanged. The fused kernel runs when it applies: a CPU float32
input that needs no gradient (block 1) and sizes ``kernels.c`` handles, plain modules of the
kernel's types (conv, pool and activation) with no hooks, the kernels built
(:func:`lenet.kernels.available`, not inside :func:`lenet.kernels.turned_off`), and not while
tracing, scripting, exporting or compiling. Anything else calls the model's own modules
(so hooks on its conv, pool or activation see the block, and ONNX export, ``torch.export``
and ``torch.compile`` see ATen ops only).

The fused blocks are ``torch.autograd.Function`` subclasses, not ``torch.library.custom_op``
operators: a ``lenet5-relu`` training step at batch 16 was ~1.2x slower with the custom ops'
dispatch (``docs/benchmarks.md``, "Kernels as operators").
"""

from __future__ import annotations

import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from lenet import kernels


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool_2x2(pool: nn.Module, kind: type) -> bool:
    """``pool`` is a plain 2x2, stride-2 pool of type ``kind`` (what the kernels implement)."""
    if type(pool) is not kind:
        return False
    if kind is nn.AvgPool2d:
        plain = pool.divisor_override is None
    else:
        plain = _pair(pool.dilation) == (1, 1) and not pool.return_indices
    return (
        plain
        and _pair(pool.kernel_size) == (2, 2)
        and _pair(pool.stride or pool.kernel_size) == (2, 2)
        and _pair(pool.padding) == (0, 0)
        and not pool.ceil_mode
    )


def _plain_conv(conv: nn.Conv2d) -> bool:
    """A square-kernel (<= 7), stride-1, zero-padded conv with bias (what the kernels do)."""
    k = conv.kernel_size[0]
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (k, k)
        and k <= 7
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.bias is not None
    )


def _cpu_float32(conv: nn.Conv2d) -> bool:
    """The conv's weight and bias are float32 CPU tensors (``model.to()`` can change that)."""
    w, b = conv.weight, conv.bias  # parameters: each read goes through Module.__getattr__
    return w.dtype == b.dtype == torch.float32 and w.device.type == b.device.type == "cpu"


# Layer hyper-parameters are fixed when a model is built, so whether a (conv, pool, activation)
# triple fits the kernels is worked out once per conv layer, not on every forward (~5 us of
# Python each time, a tenth of a batch-1 forward). Weak keys: a dropped model frees its entry.
_FITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layers_fit(conv: nn.Conv2d, pool: nn.Module, act: nn.Module, kind: type) -> bool:
    """``_pool_2x2`` and ``_plain_act`` and ``_plain_conv``, remembered per conv layer."""
    entry = _FITS.get(conv)
    if entry is None or entry[0] is not pool or entry[1] is not act or entry[2] is not kind:
        fits = _pool_2x2(pool, kind) and _plain_act(act, kind) and _plain_conv(conv)
        entry = (pool, act, kind, fits)
        _FITS[conv] = entry
    return entry[3]


# torch.compiler.is_compiling is new in torch 2.3; torch 2.1/2.2 have torch._dynamo's (importing
# torch._dynamo costs ~1 s, so that one is looked up only when torch._dynamo is loaded anyway).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _compiling() -> bool:
    if _is_compiling is not None:
        return _is_compiling()
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and dynamo.is_compiling()


def _onnx_exporting() -> bool:
    # An export has necessarily imported torch.onnx; asking otherwise would import it (slow).
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _eager(x: torch.Tensor) -> bool:
    """Not under a tracer, TorchScript, ONNX export or torch.compile/export (they see ATen ops)."""
    return not (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or _onnx_exporting()
        or _compiling()
        or type(x) is not torch.Tensor  # a FakeTensor or another subclass: not real memory
    )


_module = torch.nn.modules.module  # holds the global hook dicts


def _unhooked(*modules: nn.Module) -> bool:
    """No hooks would be skipped: a hooked layer (``lenet summary``'s shape trace, a user's
    feature-map or gradient hook) must really run, so the block then takes PyTorch's path."""
    g = _module
    if (
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    ):
        return False
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    return True


def _cpu_float(x: torch.Tensor, channels: int) -> bool:
    return (
        x.dim() == 4
        and x.shape[1] == channels
        and x.dtype == torch.float32
        and x.device.type == "cpu"
    )


def _plain_act(act: nn.Module, pool_kind: type) -> bool:
    """``act`` is the activation the kernel for ``pool_kind`` applies (sigmoid with average
    pooling, ReLU with max pooling), of exactly that type (a subclass may change it)."""
    return type(act) is (nn.Sigmoid if pool_kind is nn.AvgPool2d else nn.ReLU)


def _block_modules_ok(x, conv, pool, act, kind: type) -> bool:
    return (
        _eager(x)  # first: under torch.compile nothing below is traced
        and kernels.available()
        and _layers_fit(conv, pool, act, kind)
        and _cpu_float32(conv)
        and _unhooked(conv, pool, act)
    )


def block1_supported(
    x: torch.Tensor, conv: nn.Conv2d, pool: nn.Module, act: nn.Module, kind: type
) -> bool:
    """Whether the one-input-channel block kernel covers ``conv`` -> ``pool``/``act`` on ``x``."""
    if not _block_modules_ok(x, conv, pool, act, kind):
        return False
    k = conv.kernel_size[0]
    if not (conv.in_channels == 1 and conv.out_channels <= 16):
        return False
    # The kernel gives no input gradient (saliency maps need one): then use PyTorch's ops.
    if not (_cpu_float(x, 1) and not x.requires_grad):
        return False
    p = conv.padding[0]
    ho, wo = x.shape[2] + 2 * p - k + 1, x.shape[3] + 2 * p - k + 1
    sizes_ok = ho >= 2 and wo >= 2 and ho % 2 == 0 and wo % 2 == 0 and wo <= 32
    return sizes_ok and x.shape[2] + 2 * p <= 38


def block2_supported(
    x: torch.Tensor, conv: nn.Conv2d, pool: nn.Module, act: nn.Module, kind: type
) -> bool:
    """Whether the 16-output-channel block kernel covers ``conv`` -> ``pool``/``act`` on ``x``."""
    if not _block_modules_ok(x, conv, pool, act, kind):
        return False
    k = conv.kernel_size[0]
    if not (conv.out_channels == 16 and conv.in_channels <= 16 and conv.padding == (0, 0)):
        return False
    if not _cpu_float(x, conv.in_channels):
        return False
    ho, wo = x.shape[2] - k + 1, x.shape[3] - k + 1
    return ho >= 2 and wo >= 2 and ho % 2 == 0 and wo % 2 == 0 and wo <= 12


class _Block1(torch.autograd.Function):
    """Block 1 (one input channel); gradients for the conv's weight and bias (x needs none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, sigmoid: bool, keep: bool):
        out, saved = kernels.block1_forward(x, weight, bias, padding, sigmoid, keep)
        if keep:
            ctx.save_for_backward(x, saved)
            ctx.meta = (weight.shape, padding, sigmoid)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward: an error, never 0
    def backward(ctx, grad_out):
        x, saved = ctx.saved_tensors
        gw, gb = kernels.block1_backward(x, saved, grad_out, *ctx.meta)
        return None, gw, gb, None, None, None


class _Block2(torch.autograd.Function):
    """Block 2 (16 output channels, no padding); gradients for x, weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, sigmoid: bool, keep: bool):
        out, saved = kernels.block2_forward(x, weight, bias, sigmoid, keep)
        if keep:
            ctx.save_for_backward(x, weight, saved)
            ctx.sigmoid = sigmoid
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, saved = ctx.saved_tensors
        gx, gw, gb = kernels.block2_backward(x, weight, saved, grad_out, ctx.sigmoid)
        return gx, gw, gb, None, None


# ---- the operators the models call --------------------------------------------------------


def _keep(*tensors: torch.Tensor) -> bool:
    """Whether backward data must be kept (autograd records this call)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _fused(x, conv: nn.Conv2d, pool: nn.Module, act: nn.Module, pool_type: type, sigmoid: bool):
    """The block as one fused kernel call, or None where the kernels do not apply."""
    w, b = conv.weight, conv.bias
    # The channel counts pick the kernel that may apply, so a call pays for one support check.
    if conv.in_channels == 1 and block1_supported(x, conv, pool, act, pool_type):
        return _Block1.apply(x, w, b, conv.padding[0], sigmoid, _keep(w, b))
    if conv.out_channels == 16 and block2_supported(x, conv, pool, act, pool_type):
        return _Block2.apply(x, w, b, sigmoid, _keep(x, w, b))
    return None


def conv_maxpool_relu(
    x: torch.Tensor, conv: nn.Conv2d, pool: nn.Module, relu: nn.Module
) -> torch.Tensor:
    """``relu(pool(conv(x)))``: ReLU after the pool, with which it commutes exactly (lenet5-relu).

    The fallback calls the model's own modules, so hooks on them (``lenet viz``, ``summary``,
    a user's) see the block's activation.
    """
    out = _fused(x, conv, pool, relu, nn.MaxPool2d, sigmoid=False)
    return relu(pool(conv(x))) if out is None else out


def conv_sigmoid_avgpool(
    x: torch.Tensor, conv: nn.Conv2d, sigmoid: nn.Module, pool: nn.Module
) -> torch.Tensor:
    """``pool(sigmoid(conv(x)))``: the study note's block (lenet5), with the model's modules."""
    out = _fused(x, conv, pool, sigmoid, nn.AvgPool2d, sigmoid=True)
    return pool(sigmoid(conv(x))) if out is None else out


def whole_input_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` as one matrix product when the kernel covers the whole CPU input (LeNet's c5).

    c5 (16x5x5 maps, 5x5 kernel, no padding) is a full connection in convolution's clothes:
    (N, C, k, k) x (out, C*k*k) -> (N, out, 1, 1). ``F.linear`` does it ~4x faster than the
    convolution kernel on CPU, forward and backward. Other shapes and devices, a hooked
    ``conv``, and tracing or export run ``conv(x)``.
    """
    if not (
        _eager(x)  # exported and compiled graphs keep the convolution they were written with
        and not kernels.is_turned_off()  # PyTorch's own operators asked for: the convolution
        and _unhooked(conv)
        and x.dim() == 4
        and x.device.type == "cpu"
        and tuple(x.shape[-2:]) == tuple(conv.kernel_size)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and type(conv) is nn.Conv2d
    ):
        return conv(x)
    n, cl = x.shape[0], torch.channels_last
    if x.is_contiguous(memory_format=cl) and conv.weight.is_contiguous(memory_format=cl):
        # Both in NHWC memory: flatten in (k, k, C) order, which is then a view of each (no
        # copies forward or backward); the same sum, in another order.
        xf = x.permute(0, 2, 3, 1).reshape(n, -1)
        w = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
    else:
        xf, w = x.reshape(n, -1), conv.weight.reshape(conv.out_channels, -1)
    # (N, C*k*k) @ (C*k*k, out) -> (N, out, 1, 1)
    return F.linear(xf, w, conv.bias).reshape(n, conv.out_channels, 1, 1)


def prepare_for_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Lay ``model``'s weights out for ``device`` (in place; returns it): channels-last on CPU.

    oneDNN's NHWC convolution and pooling paths are the faster ones at LeNet's sizes, and the
    fused kernels write NHWC. Nothing else changes: same class, parameters and ``state_dict``.
    Elsewhere (CUDA/MPS) the model is returned as it is. On CPU this also builds the fused
    kernels now (:func:`lenet.kernels.available`, a one-off compile the first time), so a
    predictor, a serve worker or the trainer pays for it at start-up, not in its first
    request or epoch.
    """
    if torch.device(device).type != "cpu":
        return model
    kernels.available()
    return model.to(memory_format=torch.channels_last)
