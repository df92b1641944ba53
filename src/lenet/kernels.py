"""Fused CPU kernels (``kernels.c``), built on first use with the system C compiler.

LeNet-5's two conv blocks, conv -> 2x2 max pool -> ReLU, are most of a CPU training step in
eager PyTorch (see ``docs/benchmarks.md``); ``kernels.c`` does each block image by image in L1
cache, forward and backward, and never materialises the full-size conv output. It is plain C (no Python or torch
headers), so it compiles in well under a second; the library is cached under
``$LENET_CACHE_DIR`` (default ``~/.cache/lenet``), named by a hash of the source, the flags and
the machine, and written atomically. Everything here is optional: without a C compiler, on a
machine where the build fails, or with ``LENET_KERNELS=0``, :func:`available` is False and
callers use PyTorch's own operators (same math).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ABI = 2  # lenet_kernels_abi() in kernels.c; bump both when a signature changes
# Tried in order; the first set the compiler accepts wins. -ffp-contract=fast lets the compiler
# use FMA (ISO C mode would forbid it); no -ffast-math, so NaN and rounding stay IEEE.
_FLAG_SETS = [
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-ffp-contract=fast"],  # no OpenMP: one thread
]
_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()
F32 = dict(dtype=torch.float32, device="cpu")  # every buffer the C code reads or writes


def cache_dir() -> Path:
    """Where built kernels are kept: ``$LENET_CACHE_DIR``, else ``$XDG_CACHE_HOME/lenet``."""
    if os.environ.get("LENET_CACHE_DIR"):
        return Path(os.environ["LENET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lenet"


def _source() -> bytes:
    return resources.files("lenet").joinpath("kernels.c").read_bytes()


def _cpu_id() -> str:
    """The CPU's model and instruction-set flags: -march=native code is only valid on such a CPU.

    Part of the cache key, so a home folder shared between different machines (a cluster's
    NFS home) never hands one CPU a library built for another's instructions.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        info = "".join(dict.fromkeys(lines))  # one copy of each distinct line
    except OSError:
        info = platform.processor() or platform.machine()
    return hashlib.sha256(info.encode()).hexdigest()[:12]


def _build(src: bytes, out_dir: Path) -> Path | None:
    """Compile ``src`` into a shared library in ``out_dir`` (atomically); None on failure."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if not cc[0]:
        log.info("fused CPU kernels off: no C compiler found")
        return None
    tag = f"{platform.machine()}-{platform.system()}-{torch.__version__}-abi{ABI}-{_cpu_id()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for flags in _FLAG_SETS:
        key = hashlib.sha256(src + repr((cc, flags, tag)).encode()).hexdigest()[:16]
        target = out_dir / f"kernels-{key}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            c_file, so_file = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
            c_file.write_bytes(src)
            cmd = [*cc, *flags, "-std=c11", "-shared", "-fPIC", str(c_file), "-o", str(so_file)]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                log.info("fused CPU kernels: %s failed: %s", " ".join(cc), e)
                return None
            if done.returncode == 0:
                os.replace(so_file, target)  # atomic: a concurrent builder sees all or nothing
                return target
    log.info("fused CPU kernels off: %s could not build kernels.c", " ".join(cc))
    return None


def _load() -> ctypes.CDLL | None:
    if os.environ.get("LENET_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        path = _build(_source(), cache_dir())
    except OSError as e:  # unwritable cache folder and the like: fall back, never fail
        log.info("fused CPU kernels off: %s", e)
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.info("fused CPU kernels off: cannot load %s: %s", path, e)
        return None
    if lib.lenet_kernels_abi() != ABI:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64  # the last i64 of each: the thread count
    lib.lenet_conv_pool_relu_fwd.argtypes = [p, i64, i64, i64, p, p, i64, i64, i64, p, p, i64]
    lib.lenet_conv_pool_relu_bwd.argtypes = [p, i64, i64, i64, p, p, i64, i64, i64, p, p, i64]
    lib.lenet_conv16_pool_relu_fwd.argtypes = [p, i64, i64, i64, i64, p, p, i64, p, p, i64]
    lib.lenet_conv16_pool_relu_bwd.argtypes = [p, i64, i64, i64, i64, p, i64, p, p, p, p, p, i64]
    lib.lenet_conv_sig_avg_fwd.argtypes = lib.lenet_conv_pool_relu_fwd.argtypes
    lib.lenet_conv_sig_avg_bwd.argtypes = lib.lenet_conv_pool_relu_bwd.argtypes
    lib.lenet_conv16_sig_avg_fwd.argtypes = lib.lenet_conv16_pool_relu_fwd.argtypes
    lib.lenet_conv16_sig_avg_bwd.argtypes = lib.lenet_conv16_pool_relu_bwd.argtypes
    for f in ("conv_pool_relu_fwd", "conv_pool_relu_bwd", "conv16_pool_relu_fwd",
              "conv16_pool_relu_bwd", "conv_sig_avg_fwd", "conv_sig_avg_bwd",
              "conv16_sig_avg_fwd", "conv16_sig_avg_bwd"):  # fmt: skip
        getattr(lib, f"lenet_{f}").restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the fused kernels are built and loaded (the first call builds them)."""
    global _lib, _tried
    with _lock:  # one build per process, even when the first calls race
        if not _tried:
            _lib = _load()
            _tried = True
    return _lib is not None


def _pool_2x2(pool: torch.nn.Module) -> bool:
    if isinstance(pool, torch.nn.AvgPool2d):
        plain = pool.divisor_override is None
    else:
        plain = (
            isinstance(pool, torch.nn.MaxPool2d)
            and _pair(pool.dilation) == (1, 1)
            and not pool.return_indices
        )
    return (
        plain
        and _pair(pool.kernel_size) == (2, 2)
        and _pair(pool.stride or pool.kernel_size) == (2, 2)
        and _pair(pool.padding) == (0, 0)
        and not pool.ceil_mode
    )


def _kind(pool: torch.nn.Module) -> str:
    return "sigmoid_avg" if isinstance(pool, torch.nn.AvgPool2d) else "max_relu"


def _plain_conv(conv: torch.nn.Conv2d) -> bool:
    k = conv.kernel_size[0]
    return (
        conv.kernel_size == (k, k)
        and k <= 7
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.bias is not None
        and conv.weight.dtype == conv.bias.dtype == torch.float32
        and conv.weight.device.type == conv.bias.device.type == "cpu"
    )


def _cpu_float(x: torch.Tensor, channels: int) -> bool:
    return (
        x.dim() == 4
        and x.shape[1] == channels
        and x.dtype == torch.float32
        and x.device.type == "cpu"
    )


# Two kinds of LeNet block, named by what follows the conv: "max_relu" is
# relu(max_pool2d(conv(x), 2)) (lenet5-relu; ReLU after the pool, which commutes exactly with
# it), "sigmoid_avg" is avg_pool2d(sigmoid(conv(x)), 2) (the study note's lenet5). The pool
# module passed in picks the kind: MaxPool2d -> max_relu, AvgPool2d -> sigmoid_avg.
KINDS = ("max_relu", "sigmoid_avg")


def block1_supported(x: torch.Tensor, conv: torch.nn.Conv2d, pool: torch.nn.Module) -> bool:
    """Whether :func:`block1` can run this one-input-channel conv block on ``x``."""
    if not (_pool_2x2(pool) and _plain_conv(conv)):
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
    return sizes_ok and x.shape[2] + 2 * p <= 38 and available()


def block2_supported(x: torch.Tensor, conv: torch.nn.Conv2d, pool: torch.nn.Module) -> bool:
    """Whether :func:`block2` can run this 16-output-channel conv block on ``x``."""
    if not (_pool_2x2(pool) and _plain_conv(conv)):
        return False
    k = conv.kernel_size[0]
    if not (conv.out_channels == 16 and conv.in_channels <= 16 and conv.padding == (0, 0)):
        return False
    if not _cpu_float(x, conv.in_channels):
        return False
    ho, wo = x.shape[2] - k + 1, x.shape[3] - k + 1
    return ho >= 2 and wo >= 2 and ho % 2 == 0 and wo % 2 == 0 and wo <= 12 and available()


def _require() -> None:
    if not available():
        raise RuntimeError("lenet kernels are not available (see lenet.kernels.available)")


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise RuntimeError(f"lenet kernels: {name} failed ({rc})")


class _Block1(torch.autograd.Function):
    """A one-input-channel conv block; gradients for the conv's weight and bias (x needs none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, kind: str, need_grad: bool):
        n, _, h, w = x.shape
        oc, _, k, _ = weight.shape
        x = x.detach().contiguous()  # (N, 1, H, W): one channel, so any layout is NCHW
        wt = weight.detach().reshape(oc, k * k).contiguous()
        b = bias.detach().contiguous()
        ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        # (N, oc, ho/2, wo/2) in channels-last memory: NHWC, as the kernel writes it.
        out = torch.empty((n, oc, ho // 2, wo // 2), memory_format=torch.channels_last, **F32)
        if kind == "max_relu":  # the argmax of each pooled value (uint8)
            saved = torch.empty_like(out, dtype=torch.uint8) if need_grad else None
            fwd = _lib.lenet_conv_pool_relu_fwd
        else:  # the sigmoid outputs, (N, oc, ho, 32) with columns >= wo unused
            saved = torch.empty((n, oc, ho, 32), **F32) if need_grad else None
            fwd = _lib.lenet_conv_sig_avg_fwd
        rc = fwd(
            x.data_ptr(), n, h, w, wt.data_ptr(), b.data_ptr(), oc, k, padding,
            out.data_ptr(), saved.data_ptr() if saved is not None else None,
            torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, fwd.__name__)
        if need_grad:
            ctx.save_for_backward(x, saved)
            ctx.meta = (oc, k, padding, weight.shape, kind)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward: an error, never 0
    def backward(ctx, grad_out):
        x, saved = ctx.saved_tensors
        oc, k, padding, wshape, kind = ctx.meta
        n, _, h, w = x.shape
        g = grad_out.contiguous(memory_format=torch.channels_last)
        gw = torch.empty((oc, k * k), **F32)
        gb = torch.empty(oc, **F32)
        bwd = _lib.lenet_conv_pool_relu_bwd if kind == "max_relu" else _lib.lenet_conv_sig_avg_bwd
        rc = bwd(
            x.data_ptr(), n, h, w, g.data_ptr(), saved.data_ptr(), oc, k, padding,
            gw.data_ptr(), gb.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, bwd.__name__)
        return None, gw.reshape(wshape), gb, None, None, None


class _Block2(torch.autograd.Function):
    """A 16-output-channel conv block (no padding); gradients for x, weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, kind: str, need_grad: bool):
        n, ic, h, w = x.shape
        k = weight.shape[-1]
        x = x.detach().contiguous(memory_format=torch.channels_last)  # NHWC
        wt = weight.detach().permute(0, 2, 3, 1).contiguous()  # (16, k, k, ic)
        b = bias.detach().contiguous()
        ho, wo = h - k + 1, w - k + 1
        out = torch.empty((n, 16, ho // 2, wo // 2), memory_format=torch.channels_last, **F32)
        if kind == "max_relu":
            saved = torch.empty_like(out, dtype=torch.uint8) if need_grad else None
            fwd = _lib.lenet_conv16_pool_relu_fwd
        else:  # sigmoid outputs, NHWC (N, ho, wo, 16)
            saved = torch.empty((n, ho, wo, 16), **F32) if need_grad else None
            fwd = _lib.lenet_conv16_sig_avg_fwd
        rc = fwd(
            x.data_ptr(), n, h, w, ic, wt.data_ptr(), b.data_ptr(), k, out.data_ptr(),
            saved.data_ptr() if saved is not None else None, torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, fwd.__name__)
        if need_grad:
            ctx.save_for_backward(x, wt, saved)
            ctx.kind = kind
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, wt, saved = ctx.saved_tensors
        n, ic, h, w = x.shape
        k = wt.shape[1]
        g = grad_out.contiguous(memory_format=torch.channels_last)
        gx = torch.empty((n, ic, h, w), memory_format=torch.channels_last, **F32)
        gw = torch.empty((16, k, k, ic), **F32)
        gb = torch.empty(16, **F32)
        if ctx.kind == "max_relu":
            bwd = _lib.lenet_conv16_pool_relu_bwd
        else:
            bwd = _lib.lenet_conv16_sig_avg_bwd
        rc = bwd(
            x.data_ptr(), n, h, w, ic, wt.data_ptr(), k, g.data_ptr(), saved.data_ptr(),
            gx.data_ptr(), gw.data_ptr(), gb.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, bwd.__name__)
        return gx, gw.permute(0, 3, 1, 2), gb, None, None  # (16, ic, k, k), channels-last


def block1(x: torch.Tensor, conv: torch.nn.Conv2d, pool: torch.nn.Module) -> torch.Tensor:
    """The block ``conv`` -> ``pool`` (with its activation, see KINDS) as one fused kernel.

    (N, 1, H, W) -> (N, oc, H'/2, W'/2) in channels-last memory. Call only where
    :func:`block1_supported` is True. The input gets no gradient (it is the network's input).
    """
    _require()
    # Inside forward() grad mode is always off: decide here whether backward data is kept.
    need = torch.is_grad_enabled() and (conv.weight.requires_grad or conv.bias.requires_grad)
    return _Block1.apply(x, conv.weight, conv.bias, conv.padding[0], _kind(pool), need)


def block2(x: torch.Tensor, conv: torch.nn.Conv2d, pool: torch.nn.Module) -> torch.Tensor:
    """The block ``conv`` (16 output channels) -> ``pool`` as one fused kernel, like :func:`block1`.

    (N, C, H, W) -> (N, 16, (H-k+1)/2, (W-k+1)/2), channels-last. Call only where
    :func:`block2_supported` is True; gradients flow to ``x`` too.
    """
    _require()
    need = torch.is_grad_enabled() and (
        x.requires_grad or conv.weight.requires_grad or conv.bias.requires_grad
    )
    return _Block2.apply(x, conv.weight, conv.bias, _kind(pool), need)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
