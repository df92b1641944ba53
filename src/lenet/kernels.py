"""The fused C kernels (``kernels.c``): built on first use with the system C compiler, checked, loaded.

LeNet-5's two conv blocks are most of a CPU training step in eager PyTorch (see
``docs/benchmarks.md``); ``kernels.c`` does each block image by image in L1 cache, forward and
backward. It is plain C (no Python or torch headers), so it compiles in well under a second.
This module only builds, checks and calls it on tensors; the operators the models use, with
PyTorch's own ops as the fallback, are in :mod:`lenet.ops`.

Safety and caching:

- The library is cached in :func:`cache_dir` (``$LENET_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/lenet``, else ``~/.cache/lenet``), created 0700. A folder (or a library in
  it) owned by another user, or writable by group/others, is refused: loading a planted ``.so``
  would run someone else's code.
- The cache key hashes the source, the flag sets, the compiler (path, size, mtime), torch's
  version and the CPU's model and flags; a change to any of them builds anew.
- A failed build leaves ``kernels-<key>.failed`` holding the compiler's last lines, and later
  processes do not try again. To retry: delete that file, or set ``LENET_KERNELS_REBUILD=1``.
- ``kernels.c`` exports ``lenet_kernels_abi()``, a string listing every entry point and its
  argument types; it must equal the one rendered from :data:`PROTOTYPES` (which also sets the
  ctypes argument types), or the kernels stay off.

Without a compiler, after a failed build, on a refused cache or ABI mismatch, or with
``LENET_KERNELS=0``, :func:`available` is False (one log line says why) and nothing fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch

from lenet.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Tried in order; the first set the compiler accepts wins. -ffp-contract=fast lets the compiler
# use FMA (ISO C mode would forbid it); no -ffast-math, so NaN and rounding stay IEEE.
_FLAG_SETS = [
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-ffp-contract=fast", "-fopenmp"],
    ["-O3", "-ffp-contract=fast"],  # no OpenMP: one thread
]
_BUILD_TIMEOUT_S = 120

# Every entry point of kernels.c and its argument types, in order (all return int: 0 = done).
# "f32*"/"u8*" are pointers to float/uint8 buffers, "i64" is int64_t. The last argument of each
# is the thread count. This one table both sets the ctypes argtypes and renders the string that
# must equal kernels.c's lenet_kernels_abi().
PROTOTYPES = {
    # x, n, h, w, weight, bias, oc, k, pad, out, argmax, threads
    "lenet_conv_pool_relu_fwd": "f32* i64 i64 i64 f32* f32* i64 i64 i64 f32* u8* i64",
    # x, n, h, w, grad_out, argmax, oc, k, pad, grad_weight, grad_bias, threads
    "lenet_conv_pool_relu_bwd": "f32* i64 i64 i64 f32* u8* i64 i64 i64 f32* f32* i64",
    # x, n, h, w, ic, weight, bias, k, out, argmax, threads
    "lenet_conv16_pool_relu_fwd": "f32* i64 i64 i64 i64 f32* f32* i64 f32* u8* i64",
    # x, n, h, w, ic, weight, k, grad_out, argmax, grad_x, grad_weight, grad_bias, threads
    "lenet_conv16_pool_relu_bwd": "f32* i64 i64 i64 i64 f32* i64 f32* u8* f32* f32* f32* i64",
    # as the max-pool ones, with the saved sigmoid outputs (f32*) in place of the argmax
    "lenet_conv_sig_avg_fwd": "f32* i64 i64 i64 f32* f32* i64 i64 i64 f32* f32* i64",
    "lenet_conv_sig_avg_bwd": "f32* i64 i64 i64 f32* f32* i64 i64 i64 f32* f32* i64",
    "lenet_conv16_sig_avg_fwd": "f32* i64 i64 i64 i64 f32* f32* i64 f32* f32* i64",
    "lenet_conv16_sig_avg_bwd": "f32* i64 i64 i64 i64 f32* i64 f32* f32* f32* f32* f32* i64",
}
_CTYPES = {"f32*": ctypes.c_void_p, "u8*": ctypes.c_void_p, "i64": ctypes.c_int64}


def expected_abi() -> str:
    """The ABI string ``kernels.c`` must export: one ``name(type,...)`` per line, table order."""
    return "\n".join(f"{name}({','.join(args.split())})" for name, args in PROTOTYPES.items())


F32 = dict(dtype=torch.float32, device="cpu")  # every buffer the C code reads or writes
_lib: ctypes.CDLL | None = None
_tried = False  # set (after _lib) once loading was attempted: the lock-free fast path
_off = False  # True inside turned_off()
_lock = threading.Lock()
_warned_markers: set[str] = set()  # failed-build markers already logged at WARNING


def cache_dir() -> Path:
    """Where built kernels are kept: ``$LENET_CACHE_DIR``, else ``$XDG_CACHE_HOME/lenet``."""
    if os.environ.get("LENET_CACHE_DIR"):
        return Path(os.environ["LENET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lenet"


def _unsafe(path: Path, st: os.stat_result) -> str | None:
    """Why ``path`` must not be trusted (another owner, group/other-writable), or None."""
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user ({os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _safe_dir(path: Path) -> Path | None:
    """``path`` created 0700 if missing; None (after one log line) if it cannot be trusted."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        log.info("fused CPU kernels off: cache folder %s: %s", path, e)
        return None
    why = _unsafe(path, st)
    if why:
        log.info("fused CPU kernels off: refusing the cache folder: %s", why)
        return None
    return path


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


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (may hold flags), else ``cc``/``gcc`` on the PATH."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    return cc if cc[0] else None


def _cache_key(src: bytes, cc: list[str]) -> str:
    """A hash of everything the library depends on: source, flags, compiler, torch, CPU."""
    exe = shutil.which(cc[0]) or cc[0]
    try:  # the compiler's identity without running it: an upgrade changes size or mtime
        st = os.stat(exe)
        ident = (os.path.realpath(exe), st.st_size, st.st_mtime_ns)
    except OSError:
        ident = (exe,)
    tag = (cc, ident, _FLAG_SETS, platform.machine(), platform.system(), torch.__version__)
    return hashlib.sha256(src + repr((tag, _cpu_id())).encode()).hexdigest()[:16]


class _Transient(Exception):
    """The build could not run to an answer (a timeout, an OSError): worth trying again later."""


def _compile(src: bytes, cc: list[str], out_dir: Path, target: Path) -> str | None:
    """Build ``src`` into ``target`` atomically, trying each flag set; None, or the last error
    when the compiler ran and refused every flag set. Raises :class:`_Transient` when it could
    not run (timeout, OSError): that says nothing about the next try, so it is not remembered."""
    error = ""
    for flags in _FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            c_file, so_file = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
            c_file.write_bytes(src)
            cmd = [*cc, *flags, "-std=c11", "-shared", "-fPIC", str(c_file), "-o", str(so_file)]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=_BUILD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise _Transient(f"$ {shlex.join(cmd)}\n{e}") from e
            if done.returncode == 0:
                so_file.chmod(0o700)
                os.replace(so_file, target)  # atomic: a concurrent builder sees all or nothing
                return None
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-20:]
            error = "\n".join([f"$ {shlex.join(cmd)}", *tail])
    return error


def _build() -> Path | None:
    """The cached library for this source and machine, built if needed; None (logged) if not."""
    cc = _compiler()
    if cc is None:
        log.info("fused CPU kernels off: no C compiler found (set CC, or install gcc)")
        return None
    out_dir = _safe_dir(cache_dir())
    if out_dir is None:
        return None
    src = _source()
    key = _cache_key(src, cc)
    target, failed = out_dir / f"kernels-{key}.so", out_dir / f"kernels-{key}.failed"
    if target.exists():
        return target
    if failed.exists() and os.environ.get("LENET_KERNELS_REBUILD", "") != "1":
        # WARNING: a remembered failure disables the kernels for good, so say how to retry
        # (once per process and marker).
        if str(failed) in _warned_markers:
            return None
        _warned_markers.add(str(failed))
        log.warning(
            "fused CPU kernels off: the build failed before (%s); delete that file or set "
            "LENET_KERNELS_REBUILD=1 to try again",
            failed,
        )
        return None
    try:
        error = _compile(src, cc, out_dir, target)
    except _Transient as e:  # not remembered: the next process tries again
        log.info("fused CPU kernels off: building kernels.c did not finish: %s", e)
        return None
    if error is None:
        failed.unlink(missing_ok=True)
        return target
    atomic_write_text(failed, error + "\n")
    log.info("fused CPU kernels off: %s could not build kernels.c (see %s)", cc[0], failed)
    return None


def _switched_off() -> bool:
    return os.environ.get("LENET_KERNELS", "1").strip().lower() in ("0", "false", "no", "off")


def _load() -> ctypes.CDLL | None:
    if _switched_off():
        return None
    try:
        path = _build()
        if path is None:
            return None
        why = _unsafe(path, os.lstat(path))
        if why or path.is_symlink():
            log.info("fused CPU kernels off: refusing the library: %s", why or f"{path} is a link")
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as e:  # unwritable cache folder, unloadable library: fall back, never fail
        log.info("fused CPU kernels off: %s", e)
        return None
    try:
        abi_fn = lib.lenet_kernels_abi
    except AttributeError:
        log.info("fused CPU kernels off: %s exports no lenet_kernels_abi()", path)
        return None
    abi_fn.restype, abi_fn.argtypes = ctypes.c_char_p, []
    abi = (abi_fn() or b"").decode(errors="replace")
    if abi != expected_abi():
        log.info(
            "fused CPU kernels off: kernels.c's ABI does not match lenet.kernels.PROTOTYPES "
            "(C: %r; Python: %r)",
            abi,
            expected_abi(),
        )
        return None
    for name, args in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.argtypes = [_CTYPES[a] for a in args.split()]
        fn.restype = ctypes.c_int
    return lib


@contextlib.contextmanager
def turned_off():
    """Inside this block models run PyTorch's own operators: :func:`available` is False and
    :func:`lenet.ops.whole_input_conv` runs the convolution (``lenet bench`` measures them side by
    side with the fused kernels). Not thread-local: it is meant for a whole measurement."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def is_turned_off() -> bool:
    """True inside :func:`turned_off`: every lenet.ops operator must take PyTorch's own path."""
    return _off


def available() -> bool:
    """True when the fused kernels are built and loaded (the first call builds them)."""
    if _off:
        return False
    if not _tried:  # double-checked: after the first call this is one global read, no lock
        _init()
    return _lib is not None


def _init() -> None:
    global _lib, _tried
    with _lock:  # one build per process, even when the first calls race
        if not _tried:
            _lib = _load()
            _tried = True


def _reset_for_tests() -> None:
    """Forget the loaded library so the next :func:`available` loads again (tests only)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


def _call(name: str, *args) -> None:
    rc = getattr(_lib, name)(*args)
    if rc != 0:
        raise RuntimeError(f"lenet kernels: {name} failed ({rc})")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# The calls below take and return plain tensors (no autograd); lenet.ops wraps them. "max" is
# relu(max_pool2d(conv(x), 2)), "sigmoid" is avg_pool2d(sigmoid(conv(x)), 2); 2x2 pools.


def block1_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding: int,
    sigmoid: bool,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block 1 (one input channel): (N, 1, H, W) -> (N, oc, H'/2, W'/2) channels-last, and the
    data its backward needs when ``keep`` (uint8 argmax codes, or the (N, oc, H', 32) sigmoid
    outputs), else None."""
    n, _, h, w = x.shape
    oc, _, k, _ = weight.shape
    x = x.detach().contiguous()  # (N, 1, H, W): one channel, so any layout is NCHW
    wt = weight.detach().reshape(oc, k * k).contiguous()
    b = bias.detach().contiguous()
    ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    # (N, oc, ho/2, wo/2) in channels-last memory: NHWC, as the kernel writes it.
    out = torch.empty((n, oc, ho // 2, wo // 2), memory_format=torch.channels_last, **F32)
    if sigmoid:  # the sigmoid outputs, (N, oc, ho, 32) with columns >= wo unused
        saved = torch.empty((n, oc, ho, 32), **F32) if keep else None
        name = "lenet_conv_sig_avg_fwd"
    else:  # the argmax code of each pooled value
        saved = torch.empty_like(out, dtype=torch.uint8) if keep else None
        name = "lenet_conv_pool_relu_fwd"
    _call(
        name,
        x.data_ptr(),
        n,
        h,
        w,
        wt.data_ptr(),
        b.data_ptr(),
        oc,
        k,
        padding,
        out.data_ptr(),
        _ptr(saved),
        torch.get_num_threads(),
    )
    return out, saved


def block1_backward(
    x: torch.Tensor,
    saved: torch.Tensor,
    grad_out: torch.Tensor,
    weight_shape,
    padding: int,
    sigmoid: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of block 1's weight (``weight_shape``) and bias; the input gets none."""
    n, _, h, w = x.shape
    oc, _, k, _ = weight_shape
    x = x.detach().contiguous()
    g = grad_out.contiguous(memory_format=torch.channels_last)
    gw = torch.empty((oc, k * k), **F32)
    gb = torch.empty(oc, **F32)
    name = "lenet_conv_sig_avg_bwd" if sigmoid else "lenet_conv_pool_relu_bwd"
    _call(
        name,
        x.data_ptr(),
        n,
        h,
        w,
        g.data_ptr(),
        saved.data_ptr(),
        oc,
        k,
        padding,
        gw.data_ptr(),
        gb.data_ptr(),
        torch.get_num_threads(),
    )
    return gw.reshape(weight_shape), gb


def block2_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, sigmoid: bool, keep: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block 2 (16 output channels, no padding): (N, C, H, W) -> (N, 16, (H-k+1)/2, (W-k+1)/2)
    channels-last, and (when ``keep``) the argmax codes or the NHWC (N, H', W', 16) sigmoid
    outputs."""
    n, ic, h, w = x.shape
    k = weight.shape[-1]
    x = x.detach().contiguous(memory_format=torch.channels_last)  # NHWC
    wt = weight.detach().permute(0, 2, 3, 1).contiguous()  # (16, k, k, ic)
    b = bias.detach().contiguous()
    ho, wo = h - k + 1, w - k + 1
    out = torch.empty((n, 16, ho // 2, wo // 2), memory_format=torch.channels_last, **F32)
    if sigmoid:
        saved = torch.empty((n, ho, wo, 16), **F32) if keep else None
        name = "lenet_conv16_sig_avg_fwd"
    else:
        saved = torch.empty_like(out, dtype=torch.uint8) if keep else None
        name = "lenet_conv16_pool_relu_fwd"
    _call(
        name,
        x.data_ptr(),
        n,
        h,
        w,
        ic,
        wt.data_ptr(),
        b.data_ptr(),
        k,
        out.data_ptr(),
        _ptr(saved),
        torch.get_num_threads(),
    )
    return out, saved


def block2_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    saved: torch.Tensor,
    grad_out: torch.Tensor,
    sigmoid: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of block 2's input (channels-last), weight (16, C, k, k) and bias."""
    n, ic, h, w = x.shape
    k = weight.shape[-1]
    x = x.detach().contiguous(memory_format=torch.channels_last)
    wt = weight.detach().permute(0, 2, 3, 1).contiguous()  # (16, k, k, ic)
    g = grad_out.contiguous(memory_format=torch.channels_last)
    gx = torch.empty((n, ic, h, w), memory_format=torch.channels_last, **F32)
    gw = torch.empty((16, k, k, ic), **F32)
    gb = torch.empty(16, **F32)
    name = "lenet_conv16_sig_avg_bwd" if sigmoid else "lenet_conv16_pool_relu_bwd"
    _call(
        name,
        x.data_ptr(),
        n,
        h,
        w,
        ic,
        wt.data_ptr(),
        k,
        g.data_ptr(),
        saved.data_ptr(),
        gx.data_ptr(),
        gw.data_ptr(),
        gb.data_ptr(),
        torch.get_num_threads(),
    )
    return gx, gw.permute(0, 3, 1, 2), gb  # gw: (16, ic, k, k), channels-last memory
