"""The fused block operators (lenet.ops, lenet.kernels) against PyTorch's own ops, and their build."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lenet import kernels, ops
from lenet.models import create_model

CL = torch.channels_last
SRC = Path(__file__).resolve().parents[1] / "src" / "lenet"


# The operators with a fresh activation module (the models pass their own).
def _max_relu(x, conv, pool):
    return ops.conv_maxpool_relu(x, conv, pool, torch.nn.ReLU())


def _sig_avg(x, conv, pool):
    return ops.conv_sigmoid_avgpool(x, conv, torch.nn.Sigmoid(), pool)


def _act(kind: type) -> torch.nn.Module:
    return torch.nn.ReLU() if kind is torch.nn.MaxPool2d else torch.nn.Sigmoid()


def _supported1(x, conv, pool, kind):
    return ops.block1_supported(x, conv, pool, _act(kind), kind)


def _supported2(x, conv, pool, kind):
    return ops.block2_supported(x, conv, pool, _act(kind), kind)


@pytest.fixture(scope="module", autouse=True)
def built():
    """The kernels must build on a machine with a C compiler; in CI that is a failure, not a skip."""
    if not kernels.available():
        if os.environ.get("CI"):
            pytest.fail("lenet.kernels could not be built in CI (is a C compiler installed?)")
        pytest.skip("no C compiler here: lenet.kernels is off (PyTorch fallback)")


@pytest.fixture
def reload_kernels(monkeypatch):
    """Load the library afresh in this test (changed environment), and again afterwards."""
    kernels._reset_for_tests()
    yield
    monkeypatch.undo()
    kernels._reset_for_tests()
    assert kernels.available()


def _plain(monkeypatch) -> None:
    """Make every operator take PyTorch's path, as without a compiler."""
    monkeypatch.setattr(kernels, "available", lambda: False)


def _images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    x[:, :, : size // 4] = 0.0  # a blank band, as on MNIST's borders: exact ties in the pools
    return x


def _conv(cin: int, cout: int, k: int, padding: int, seed: int) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(cin, cout, k, padding=padding)


def _grads(out: torch.Tensor, params, g: torch.Tensor):
    return torch.autograd.grad(out, params, g)


def _fused_ran(out: torch.Tensor) -> bool:
    return out.grad_fn is not None and type(out.grad_fn).__name__.startswith("_Block")


# The two kinds of block: (operator, pool module, pool type, PyTorch's own ops for the block).
BLOCKS = {
    "max_relu": (
        _max_relu,
        torch.nn.MaxPool2d(2),
        torch.nn.MaxPool2d,
        lambda z: F.relu(F.max_pool2d(z, 2)),
    ),
    "sigmoid_avg": (
        _sig_avg,
        torch.nn.AvgPool2d(2),
        torch.nn.AvgPool2d,
        lambda z: F.avg_pool2d(torch.sigmoid(z), 2),
    ),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize(
    "n,size,cout,k,pad", [(7, 28, 6, 5, 2), (3, 28, 4, 5, 0), (5, 16, 16, 3, 1), (1, 30, 8, 7, 3)]
)
def test_block1_matches_pytorch(kind, n, size, cout, k, pad):
    x = _images(n, 1, size, seed=n)
    conv = _conv(1, cout, k, pad, seed=k)
    op, pool, pool_type, after = BLOCKS[kind]
    assert _supported1(x, conv, pool, pool_type)
    ref = after(conv(x))
    out = op(x, conv, pool)
    assert _fused_ran(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=CL)
    g = torch.randn_like(ref)
    for a, b in zip(
        _grads(out, (conv.weight, conv.bias), g),
        _grads(ref, (conv.weight, conv.bias), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(BLOCKS))
@pytest.mark.parametrize(
    "n,cin,size,k", [(6, 6, 14, 5), (3, 3, 12, 3), (2, 16, 10, 7), (4, 1, 6, 1)]
)
def test_block2_matches_pytorch(kind, n, cin, size, k):
    x = F.relu(_images(n, cin, size, seed=cin)).contiguous(memory_format=CL).requires_grad_()
    conv = _conv(cin, 16, k, 0, seed=size)
    op, pool, pool_type, after = BLOCKS[kind]
    assert _supported2(x, conv, pool, pool_type)
    ref = after(conv(x))
    out = op(x, conv, pool)
    assert _fused_ran(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    params = (x, conv.weight, conv.bias)
    for a, b in zip(_grads(out, params, g), _grads(ref, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ties_route_the_gradient_like_max_pool2d():
    # A constant image: every conv output in a window is equal; PyTorch gives the gradient to
    # the first position of each window, and so must the kernels (bit for bit here: no sums).
    x = torch.full((2, 1, 28, 28), 0.5)
    conv = _conv(1, 6, 5, 2, seed=3)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.fill_(0.2)
    ref = F.relu(F.max_pool2d(conv(x), 2))
    out = _max_relu(x, conv, torch.nn.MaxPool2d(2))
    torch.testing.assert_close(out, ref)
    x2 = torch.ones(2, 6, 14, 14, requires_grad=True)
    conv2 = _conv(6, 16, 5, 0, seed=4)
    ref2 = F.relu(F.max_pool2d(conv2(x2), 2))
    out2 = _max_relu(x2, conv2, torch.nn.MaxPool2d(2))
    assert _fused_ran(out2)
    g = torch.ones_like(ref2)
    (gx_ref,) = torch.autograd.grad(ref2, x2, g)
    (gx,) = torch.autograd.grad(out2, x2, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    x = _images(64, 1, 28, seed=0)
    model = ops.prepare_for_device(create_model("lenet5-relu"), "cpu")
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(), grads(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lenet5-relu", "lenet5"])
def test_fused_model_matches_plain_model(name, monkeypatch):
    torch.manual_seed(0)
    fast = ops.prepare_for_device(create_model(name), "cpu")
    ref = create_model(name)
    ref.load_state_dict(fast.state_dict())
    assert fast.state_dict().keys() == ref.state_dict().keys()
    x = _images(32, 1, 28, seed=1)
    y = torch.randint(0, 10, (32,))
    assert _fused_ran(fast.block1(x)) and _fused_ran(fast.block2(fast.block1(x)))
    out_fast = fast(x)
    F.cross_entropy(out_fast, y).backward()
    _plain(monkeypatch)
    assert not _fused_ran(ref.block1(x))
    out_ref = ref(x)
    F.cross_entropy(out_ref, y).backward()
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_unsupported_inputs_fall_back_to_pytorch(monkeypatch):
    torch.manual_seed(0)
    fast = ops.prepare_for_device(create_model("lenet5-relu"), "cpu")
    ref = create_model("lenet5-relu")
    ref.load_state_dict(fast.state_dict())
    conv, pool, mp = fast.c1, fast.s2, torch.nn.MaxPool2d
    # An input that needs a gradient (saliency maps): the kernel has no input gradient.
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert not _supported1(x, conv, pool, mp)
    (gx,) = torch.autograd.grad(fast(x).sum(), x)
    # Other dtypes and sizes the kernels do not cover.
    assert not _supported1(torch.randn(2, 1, 28, 28).double(), conv, pool, mp)
    assert not _supported1(torch.randn(2, 1, 27, 27), conv, pool, mp)
    assert not _supported1(torch.randn(2, 1, 64, 64), conv, pool, mp)
    assert not _supported1(torch.randn(2, 3, 28, 28), conv, pool, mp)
    assert not _supported1(torch.randn(2, 1, 28, 28), conv, mp(3), mp)
    assert not _supported1(torch.randn(2, 1, 28, 28), conv, pool, torch.nn.AvgPool2d)
    odd_pool = torch.nn.AvgPool2d(2, divisor_override=3)
    assert not _supported2(torch.randn(2, 6, 14, 14), fast.c3, odd_pool, type(odd_pool))
    assert not _supported2(torch.randn(2, 6, 30, 30), fast.c3, fast.s4, mp)
    wide = torch.randn(2, 6, 30, 30)  # too wide for block 2's kernel: PyTorch's ops run instead
    out_wide = fast.block2(wide)
    assert not _fused_ran(out_wide)
    _plain(monkeypatch)
    (gx_ref,) = torch.autograd.grad(ref(x).sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_wide, ref.block2(wide), rtol=1e-5, atol=1e-5)


def test_tracing_and_export_see_pytorch_ops():
    model = ops.prepare_for_device(create_model("lenet5-relu"), "cpu").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
    assert "max_pool2d" in str(traced.inlined_graph)
    prog = torch.export.export(model, (x,))
    targets = {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}
    assert any("max_pool2d" in t for t in targets) and any("conv" in t for t in targets)
    torch.testing.assert_close(prog.module()(x), model(x), rtol=1e-5, atol=1e-5)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )


AVAILABLE = "from lenet import kernels; print(kernels.available())"


def test_switch_off_and_build_failure_fall_back(tmp_path):
    off = _run(AVAILABLE, {"LENET_KERNELS": "0"})
    assert off.returncode == 0 and off.stdout.strip() == "False", off.stderr
    # No working compiler: kernels off, no exception, no half-written library in the cache.
    broken = _run(AVAILABLE, {"CC": "/bin/false", "LENET_CACHE_DIR": str(tmp_path / "cache")})
    assert broken.returncode == 0 and broken.stdout.strip() == "False", broken.stderr
    assert not list((tmp_path / "cache").glob("*.so"))
    # A fresh cache folder: created 0700, built once, then reused.
    fresh = {"LENET_CACHE_DIR": str(tmp_path / "fresh")}
    assert _run(AVAILABLE, fresh).stdout.strip() == "True"
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    built = list((tmp_path / "fresh").glob("kernels-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert _run(AVAILABLE, fresh).stdout.strip() == "True"
    assert built[0].stat().st_mtime_ns == mtime


def test_a_failed_build_is_remembered(tmp_path):
    calls = tmp_path / "calls"
    cc = tmp_path / "cc"
    cc.write_text(f'#!/bin/sh\necho called >> {calls}\necho "kernels.c:1: error: no" >&2\nexit 1\n')
    cc.chmod(0o755)
    env = {"CC": str(cc), "LENET_CACHE_DIR": str(tmp_path / "cache")}
    first = _run(AVAILABLE, env)
    assert first.stdout.strip() == "False", first.stderr
    tries = len(calls.read_text().splitlines())
    assert tries >= 1
    (marker,) = (tmp_path / "cache").glob("kernels-*.failed")
    assert "error: no" in marker.read_text()
    second = _run(AVAILABLE, env)  # another process: the marker stops it, no compiler call
    assert second.stdout.strip() == "False", second.stderr
    assert len(calls.read_text().splitlines()) == tries
    # The honoured marker is a WARNING naming the file and how to retry.
    assert marker.name in second.stderr, second.stderr  # logging's last-resort handler: WARNING+
    assert "LENET_KERNELS_REBUILD=1" in second.stderr
    retry = _run(AVAILABLE, {**env, "LENET_KERNELS_REBUILD": "1"})  # the documented override
    assert retry.stdout.strip() == "False"
    assert len(calls.read_text().splitlines()) == 2 * tries


@pytest.mark.parametrize("script", ["sleep 5", "exit 0"], ids=["timeout", "vanished"])
def test_a_build_that_could_not_run_is_not_remembered(
    tmp_path, monkeypatch, reload_kernels, script
):
    # A timeout (a loaded box) or an OSError (here: the compiler gone) says nothing about the
    # next try: no marker, and the next process builds again.
    cc = tmp_path / "cc"
    cc.write_text(f"#!/bin/sh\n{script}\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("LENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_BUILD_TIMEOUT_S", 0.5)
    if script == "exit 0":  # it vanishes between the cache key and the build: OSError
        real_key = kernels._cache_key

        def key_then_vanish(src, cc_cmd):
            key = real_key(src, cc_cmd)
            cc.unlink()
            return key

        monkeypatch.setattr(kernels, "_cache_key", key_then_vanish)
    assert not kernels.available()
    assert not list((tmp_path / "cache").glob("kernels-*.failed"))


def test_abi_mismatch_turns_the_kernels_off(monkeypatch, reload_kernels, caplog):
    name = "lenet_conv_pool_relu_fwd"
    fewer = kernels.PROTOTYPES[name].rsplit(" ", 1)[0]  # as if Python forgot an argument
    monkeypatch.setitem(kernels.PROTOTYPES, name, fewer)
    with caplog.at_level(logging.INFO, logger="lenet.kernels"):
        assert not kernels.available()
    assert "ABI does not match" in caplog.text
    # ... and the models still run, on PyTorch's ops.
    out = create_model("lenet5-relu")(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


# C parameter type -> PROTOTYPES' name for it.
_C_TYPES = {
    "const float *": "f32*",
    "float *": "f32*",
    "const uint8_t *": "u8*",
    "uint8_t *": "u8*",
}
_C_TYPES |= {"int64_t": "i64", "const int64_t": "i64"}


def _c_signatures() -> dict[str, str]:
    """Every ``int lenet_...(...)`` definition in kernels.c, as PROTOTYPES writes it."""
    c = (SRC / "kernels.c").read_text()
    sigs = {}
    for name, params in re.findall(r"^int (lenet_\w+)\(([^)]*)\)\s*\{", c, flags=re.M):
        types = []
        for param in params.split(","):
            decl = " ".join(param.split())  # one line, single spaces
            m = re.fullmatch(r"(.*?)\s*(\*?)\s*\w+", decl)
            ctype = (m.group(1) + (" *" if m.group(2) else "")).strip()
            assert ctype in _C_TYPES, f"{name}: unmapped C type {ctype!r}"
            types.append(_C_TYPES[ctype])
        sigs[name] = " ".join(types)
    return sigs


def test_prototypes_match_the_c_definitions():
    # The hand-written table (and so the ABI string) against the C signatures themselves.
    assert _c_signatures() == kernels.PROTOTYPES


def test_the_abi_string_matches_the_table():
    assert kernels._lib.lenet_kernels_abi().decode() == kernels.expected_abi()
    # Every entry point in the table is one the C defines, with as many arguments.
    c = (SRC / "kernels.c").read_text()
    for name, args in kernels.PROTOTYPES.items():
        (params,) = re.findall(rf"\bint {name}\(([^)]*)\)", c)
        assert len(params.split(",")) == len(args.split()), name


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_owned_by_someone_else_is_refused(
    tmp_path, monkeypatch, reload_kernels, caplog
):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    monkeypatch.setenv("LENET_CACHE_DIR", str(theirs))
    with caplog.at_level(logging.INFO, logger="lenet.kernels"):
        assert not kernels.available()
    assert "owned by uid 12345" in caplog.text


def test_a_group_writable_cache_folder_or_library_is_refused(
    tmp_path, monkeypatch, reload_kernels, caplog
):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    monkeypatch.setenv("LENET_CACHE_DIR", str(shared))
    with caplog.at_level(logging.INFO, logger="lenet.kernels"):
        assert not kernels.available()
    assert "writable by group or others" in caplog.text
    assert not list(shared.glob("*.so"))
    # A trusted folder, but the library in it made writable by others after the build.
    mine = tmp_path / "mine"
    monkeypatch.setenv("LENET_CACHE_DIR", str(mine))
    kernels._reset_for_tests()
    assert kernels.available()
    (lib,) = mine.glob("kernels-*.so")
    lib.chmod(0o777)
    kernels._reset_for_tests()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lenet.kernels"):
        assert not kernels.available()
    assert "refusing the library" in caplog.text


def test_no_class_surgery_in_the_package():
    # Kernels are operators the models call, never a class swapped in under them.
    pattern = re.compile(r"\.__class__\s*=(?!=)")
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders


def test_predictor_agrees_with_the_plain_model(monkeypatch):
    import numpy as np

    from lenet.checkpoint import load_model
    from lenet.normalization import normalize
    from lenet.predictor import Predictor

    pred = Predictor()  # the bundled lenet5-relu weights
    plain = load_model(pred.path, "cpu").model
    images = (np.random.default_rng(0).random((64, 28, 28)) * 255).astype(np.uint8)
    calls = []
    for name in ("block1_forward", "block2_forward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    fused = pred.probabilities(images)
    assert set(calls) == {"block1_forward", "block2_forward"}  # both blocks ran fused
    _plain(monkeypatch)
    with torch.no_grad():
        ref = torch.softmax(plain(normalize(torch.from_numpy(images), pred.normalization)), 1)
    np.testing.assert_allclose(fused, ref.numpy(), atol=1e-5)


def test_whole_input_conv_is_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 5)
    for shape in [(2, 3, 5, 5), (2, 3, 9, 7)]:  # matrix product, then ordinary convolution
        x = torch.randn(shape, requires_grad=True)
        out, ref = ops.whole_input_conv(x, conv), conv(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(ref)
        params = (x, conv.weight, conv.bias)
        for a, b in zip(_grads(out, params, g), _grads(ref, params, g), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Channels-last input and weight: the flattened views in (k, k, C) order.
    conv_cl = torch.nn.Conv2d(16, 120, 5).to(memory_format=CL)
    x = torch.randn(8, 16, 5, 5).contiguous(memory_format=CL)
    torch.testing.assert_close(ops.whole_input_conv(x, conv_cl), conv_cl(x), rtol=1e-5, atol=1e-5)


ASAN_SCRIPT = """
import torch
import torch.nn.functional as F
from lenet import kernels, ops
from lenet.models import create_model
assert kernels.available(), "kernels did not build"
torch.manual_seed(0)
for name in ("lenet5-relu", "lenet5"):
    m = ops.prepare_for_device(create_model(name), "cpu")
    for bs in (1, 7, 65):
        x, y = torch.randn(bs, 1, 28, 28), torch.randint(0, 10, (bs,))
        F.cross_entropy(m(x), y).backward()
for op, pool in ((lambda x, c, p: ops.conv_maxpool_relu(x, c, p, torch.nn.ReLU()),
                  torch.nn.MaxPool2d(2)),
                 (lambda x, c, p: ops.conv_sigmoid_avgpool(x, c, torch.nn.Sigmoid(), p),
                  torch.nn.AvgPool2d(2))):  # generic (non-LeNet) sizes
    c1, c3 = torch.nn.Conv2d(1, 5, 7, padding=3), torch.nn.Conv2d(3, 16, 3)
    x = torch.randn(3, 1, 30, 30)
    op(x, c1, pool).sum().backward()
    h = torch.randn(3, 3, 12, 12, requires_grad=True)
    op(h, c3, pool).sum().backward()
print("clean")
"""


@pytest.mark.slow
def test_kernels_are_clean_under_address_sanitizer(tmp_path):
    """Build the kernels with -fsanitize=address and run forward/backward at several sizes."""
    import shutil

    gcc = shutil.which("gcc")
    libasan = (
        gcc
        and subprocess.run(
            [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True
        ).stdout.strip()
    )
    if not gcc or not libasan or not os.path.isabs(libasan):
        pytest.skip("gcc with AddressSanitizer is not available here")
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\nexec {gcc} -fsanitize=address -fno-omit-frame-pointer "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "CC": str(wrapper),
        "LENET_CACHE_DIR": str(tmp_path / "cache"),
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0",
    }
    done = _run(ASAN_SCRIPT, env)
    assert "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stderr[-3000:]


def test_edge_cases_match_pytorch_or_fall_back():
    conv = _conv(1, 6, 5, 2, seed=0)
    pool = torch.nn.MaxPool2d(2)
    # An empty batch.
    assert _max_relu(torch.zeros(0, 1, 28, 28), conv, pool).shape == (0, 6, 14, 14)
    # float64 as the default dtype: the model is still float32, and so is every buffer.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = _images(3, 1, 28, seed=5).float()
        out = _max_relu(x, conv, pool)
        assert _fused_ran(out)
        torch.testing.assert_close(out, F.relu(pool(conv(x))), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_default_dtype(old)
    # Weights that are not on the CPU, or a bias of another dtype: PyTorch's ops decide.
    x = torch.randn(2, 1, 28, 28)
    meta = torch.nn.Conv2d(1, 6, 5, padding=2, device="meta")
    assert not _supported1(x, meta, pool, torch.nn.MaxPool2d)
    odd = _conv(1, 6, 5, 2, seed=0)
    odd.bias.data = odd.bias.data.double()
    assert not _supported1(x, odd, pool, torch.nn.MaxPool2d)


def test_nan_after_the_relu_passes_the_gradient_like_pytorch():
    # F.relu keeps a NaN, and its gradient passes there (NaN <= 0 is false): so must ours.
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = float("nan")
    conv = _conv(1, 6, 5, 2, seed=1)
    pool = torch.nn.MaxPool2d(2)
    ref = F.relu(pool(conv(x)))
    out = _max_relu(x, conv, pool)
    assert _fused_ran(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    g = torch.ones_like(ref)
    (gb_ref,) = torch.autograd.grad(ref, conv.bias, g)
    (gb,) = torch.autograd.grad(out, conv.bias, g)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-5)


def test_double_backward_is_an_error_not_a_silent_zero():
    x = torch.randn(2, 6, 14, 14, requires_grad=True)
    conv = _conv(6, 16, 5, 0, seed=2)
    out = _max_relu(x, conv, torch.nn.MaxPool2d(2))
    assert _fused_ran(out)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.pow(2).sum().backward()


def test_inference_keeps_no_backward_data():
    conv = _conv(1, 6, 5, 2, seed=0)
    with torch.no_grad():
        out = _max_relu(torch.randn(2, 1, 28, 28), conv, torch.nn.MaxPool2d(2))
    assert out.grad_fn is None and out.is_contiguous(memory_format=CL)  # the kernel's NHWC


@pytest.mark.parametrize("name,act", [("lenet5-relu", "relu"), ("lenet5", "Sigmoid")])
def test_hooks_on_the_activation_module_see_the_blocks(name, act):
    # The blocks apply the model's own activation module (feature-map pictures, user hooks).
    model = ops.prepare_for_device(create_model(name), "cpu")
    shapes = []
    getattr(model, act).register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    model(torch.randn(2, 1, 28, 28))
    blocks = [(2, 6, 14, 14), (2, 16, 5, 5)] if act == "relu" else [(2, 6, 28, 28), (2, 16, 10, 10)]
    assert shapes[:2] == blocks


def test_summary_trace_marks_the_blocks_activated_maps():
    from lenet.summary import trace

    for name, activated in (
        ("lenet5", {"c1", "c3"}),  # sigmoid right after each conv
        ("lenet5-relu", {"s2", "s4", "c5", "f6"}),  # ReLU after each pool, c5 and f6
    ):
        model = ops.prepare_for_device(create_model(name), "cpu")
        rows = trace(model, torch.randn(2, 1, 28, 28), keep_outputs=True)
        assert {r.name for r in rows if r.activated is not None} == activated, name


@pytest.mark.parametrize("name", ["lenet5", "lenet5-relu"])
def test_models_can_be_scripted(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_turned_off_runs_the_convolution_for_c5():
    x = torch.randn(2, 16, 5, 5)
    conv = _conv(16, 120, 5, 0, seed=0)
    with kernels.turned_off():
        assert kernels.is_turned_off() and not kernels.available()
        out = ops.whole_input_conv(x, conv)
    assert "Convolution" in type(out.grad_fn).__name__
    assert "Convolution" not in type(ops.whole_input_conv(x, conv).grad_fn).__name__


def test_a_forward_does_not_import_torch_onnx():
    # _eager asks torch.onnx only once an export has imported it (importing it costs start-up).
    code = (
        "import sys, torch\n"
        "from lenet import ops\n"
        "from lenet.models import create_model\n"
        "m = ops.prepare_for_device(create_model('lenet5-relu'), 'cpu')\n"
        "m(torch.randn(2, 1, 28, 28))\n"
        "print('torch.onnx' in sys.modules, 'torch._dynamo' in sys.modules)"
    )
    assert _run(code, {}).stdout.strip() == "False False"


def test_prepare_for_device_builds_the_kernels(monkeypatch):
    # Predictor, serve workers and the trainer pay the one-off build at start-up.
    calls = []
    monkeypatch.setattr(kernels, "available", lambda: calls.append(1) or True)
    ops.prepare_for_device(create_model("lenet5"), "cpu")
    assert calls


def test_hooked_layers_really_run():
    # lenet summary and feature-map pictures hook c1..c5: those layers must then be called.
    model = ops.prepare_for_device(create_model("lenet5-relu"), "cpu")
    seen = []
    for name in ("c1", "s2", "c3", "c5"):
        getattr(model, name).register_forward_hook(lambda m, a, out, n=name: seen.append(n))
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert seen == ["c1", "s2", "c3", "c5"]
    assert not _fused_ran(model.block1(x))
    assert out.shape == (4, 10)


def test_torch_compile_sees_pytorch_ops():
    # Dynamo alone (backend "eager": no code generation) traces the ATen composite.
    model = ops.prepare_for_device(create_model("lenet5"), "cpu")
    x = torch.randn(3, 1, 28, 28)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
