"""The fused C kernels (lenet.kernels) against PyTorch's own conv -> max pool -> ReLU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lenet import kernels
from lenet.models import create_model
from lenet.speed import FusedLeNet5, FusedLeNet5ReLU, optimize_model

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def built():
    """The kernels must build on a machine with a C compiler; in CI that is a failure, not a skip."""
    if not kernels.available():
        if os.environ.get("CI"):
            pytest.fail("lenet.kernels could not be built in CI (is a C compiler installed?)")
        pytest.skip("no C compiler here: lenet.kernels is off (PyTorch fallback)")


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


# The two kinds of block: (pool module, PyTorch's own ops for the block).
KINDS = {
    "max_relu": (torch.nn.MaxPool2d(2), lambda z: F.relu(F.max_pool2d(z, 2))),
    "sigmoid_avg": (torch.nn.AvgPool2d(2), lambda z: F.avg_pool2d(torch.sigmoid(z), 2)),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "n,size,cout,k,pad", [(7, 28, 6, 5, 2), (3, 28, 4, 5, 0), (5, 16, 16, 3, 1), (1, 30, 8, 7, 3)]
)
def test_block1_matches_pytorch(kind, n, size, cout, k, pad):
    x = _images(n, 1, size, seed=n)
    conv = _conv(1, cout, k, pad, seed=k)
    pool, after = KINDS[kind]
    assert kernels.block1_supported(x, conv, pool)
    ref = after(conv(x))
    out = kernels.block1(x, conv, pool)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=CL)
    g = torch.randn_like(ref)
    for a, b in zip(
        _grads(out, (conv.weight, conv.bias), g),
        _grads(ref, (conv.weight, conv.bias), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "n,cin,size,k", [(6, 6, 14, 5), (3, 3, 12, 3), (2, 16, 10, 7), (4, 1, 6, 1)]
)
def test_block2_matches_pytorch(n, cin, size, k):
    x = F.relu(_images(n, cin, size, seed=cin)).contiguous(memory_format=CL).requires_grad_()
    conv = _conv(cin, 16, k, 0, seed=size)
    pool = torch.nn.MaxPool2d(2)
    assert kernels.block2_supported(x, conv, pool)
    ref = F.relu(pool(conv(x)))
    out = kernels.block2(x, conv, pool)
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
    out = kernels.block1(x, conv, torch.nn.MaxPool2d(2))
    torch.testing.assert_close(out, ref)
    x2 = torch.ones(2, 6, 14, 14, requires_grad=True)
    conv2 = _conv(6, 16, 5, 0, seed=4)
    ref2 = F.relu(F.max_pool2d(conv2(x2), 2))
    out2 = kernels.block2(x2, conv2, torch.nn.MaxPool2d(2))
    g = torch.ones_like(ref2)
    (gx_ref,) = torch.autograd.grad(ref2, x2, g)
    (gx,) = torch.autograd.grad(out2, x2, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic():
    x = _images(64, 1, 28, seed=0)
    model = optimize_model(create_model("lenet5-relu"), "cpu")
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(), grads(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,cls", [("lenet5-relu", FusedLeNet5ReLU), ("lenet5", FusedLeNet5)])
def test_fused_model_matches_plain_model(name, cls):
    torch.manual_seed(0)
    ref = create_model(name)
    fast = create_model(name)
    fast.load_state_dict(ref.state_dict())
    optimize_model(fast, "cpu")
    assert type(fast) is cls
    assert fast.state_dict().keys() == ref.state_dict().keys()
    x = _images(32, 1, 28, seed=1)
    y = torch.randint(0, 10, (32,))
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_ref, y).backward()
    F.cross_entropy(out_fast, y).backward()
    for (k, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_unsupported_inputs_fall_back_to_pytorch():
    torch.manual_seed(0)
    ref = create_model("lenet5-relu")
    fast = optimize_model(create_model("lenet5-relu"), "cpu")
    fast.load_state_dict(ref.state_dict())
    conv, pool = fast.c1, fast.s2
    # An input that needs a gradient (saliency maps): the kernel has no input gradient.
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert not kernels.block1_supported(x, conv, pool)
    (gx,) = torch.autograd.grad(fast(x).sum(), x)
    (gx_ref,) = torch.autograd.grad(ref(x).sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-5)
    # Other dtypes and sizes the kernels do not cover.
    assert not kernels.block1_supported(torch.randn(2, 1, 28, 28).double(), conv, pool)
    assert not kernels.block1_supported(torch.randn(2, 1, 27, 27), conv, pool)
    assert not kernels.block1_supported(torch.randn(2, 1, 64, 64), conv, pool)
    assert not kernels.block1_supported(torch.randn(2, 3, 28, 28), conv, pool)
    assert not kernels.block1_supported(torch.randn(2, 1, 28, 28), conv, torch.nn.MaxPool2d(3))
    assert not kernels.block2_supported(
        torch.randn(2, 6, 14, 14), fast.c3, torch.nn.AvgPool2d(2, divisor_override=3)
    )
    assert not kernels.block2_supported(torch.randn(2, 6, 30, 30), fast.c3, fast.s4)
    x = torch.randn(2, 6, 30, 30)  # too wide for block 2's kernel: PyTorch's ops run instead
    torch.testing.assert_close(fast.block2(x), ref.block2(x), rtol=1e-5, atol=1e-5)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )


def test_switch_off_and_build_failure_fall_back(tmp_path):
    code = "from lenet import kernels; print(kernels.available())"
    off = _run(code, {"LENET_KERNELS": "0"})
    assert off.returncode == 0 and off.stdout.strip() == "False", off.stderr
    # No working compiler: kernels off, no exception, no half-written library in the cache.
    broken = _run(code, {"CC": "/bin/false", "LENET_CACHE_DIR": str(tmp_path / "cache")})
    assert broken.returncode == 0 and broken.stdout.strip() == "False", broken.stderr
    assert not list((tmp_path / "cache").glob("*.so"))
    # A fresh cache folder: built once, then reused.
    fresh = {"LENET_CACHE_DIR": str(tmp_path / "fresh")}
    assert _run(code, fresh).stdout.strip() == "True"
    built = list((tmp_path / "fresh").glob("kernels-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert _run(code, fresh).stdout.strip() == "True"
    assert built[0].stat().st_mtime_ns == mtime


def test_predictor_uses_the_fused_model_and_agrees_with_the_plain_one():
    import numpy as np

    from lenet.checkpoint import load_model
    from lenet.normalization import normalize
    from lenet.predictor import Predictor

    pred = Predictor()  # the bundled lenet5-relu weights
    assert type(pred.model) is FusedLeNet5ReLU
    plain = load_model(pred.path, "cpu").model
    images = (np.random.default_rng(0).random((64, 28, 28)) * 255).astype(np.uint8)
    with torch.no_grad():
        ref = torch.softmax(plain(normalize(torch.from_numpy(images), pred.normalization)), 1)
    np.testing.assert_allclose(pred.probabilities(images), ref.numpy(), atol=1e-5)


ASAN_SCRIPT = """
import torch
import torch.nn.functional as F
from lenet import kernels
from lenet.models import create_model
from lenet.speed import optimize_model
assert kernels.available(), "kernels did not build"
torch.manual_seed(0)
for name in ("lenet5-relu", "lenet5"):
    m = optimize_model(create_model(name), "cpu")
    for bs in (1, 7, 65):
        x, y = torch.randn(bs, 1, 28, 28), torch.randint(0, 10, (bs,))
        F.cross_entropy(m(x), y).backward()
for kind in (torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(2)):  # generic (non-LeNet) sizes
    c1, c3 = torch.nn.Conv2d(1, 5, 7, padding=3), torch.nn.Conv2d(3, 16, 3)
    x = torch.randn(3, 1, 30, 30)
    kernels.block1(x, c1, kind).sum().backward()
    h = torch.randn(3, 3, 12, 12, requires_grad=True)
    kernels.block2(h, c3, kind).sum().backward()
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
    assert kernels.block1(torch.zeros(0, 1, 28, 28), conv, pool).shape == (0, 6, 14, 14)
    # float64 as the default dtype: the model is still float32, and so is every buffer.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = _images(3, 1, 28, seed=5).float()
        out = kernels.block1(x, conv, pool)
        torch.testing.assert_close(out, F.relu(pool(conv(x))), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_default_dtype(old)
    # Weights that are not on the CPU, or a bias of another dtype: PyTorch's ops decide.
    x = torch.randn(2, 1, 28, 28)
    assert not kernels.block1_supported(x, torch.nn.Conv2d(1, 6, 5, padding=2, device="meta"), pool)
    odd = _conv(1, 6, 5, 2, seed=0)
    odd.bias.data = odd.bias.data.double()
    assert not kernels.block1_supported(x, odd, pool)


def test_nan_after_the_relu_passes_the_gradient_like_pytorch():
    # F.relu keeps a NaN, and its gradient passes there (NaN <= 0 is false): so must ours.
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = float("nan")
    conv = _conv(1, 6, 5, 2, seed=1)
    pool = torch.nn.MaxPool2d(2)
    ref = F.relu(pool(conv(x)))
    out = kernels.block1(x, conv, pool)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    g = torch.ones_like(ref)
    (gb_ref,) = torch.autograd.grad(ref, conv.bias, g)
    (gb,) = torch.autograd.grad(kernels.block1(x, conv, pool), conv.bias, g)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-5)


def test_double_backward_is_an_error_not_a_silent_zero():
    x = torch.randn(2, 6, 14, 14, requires_grad=True)
    conv = _conv(6, 16, 5, 0, seed=2)
    out = kernels.block2(x, conv, torch.nn.MaxPool2d(2))
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.pow(2).sum().backward()


def test_inference_keeps_no_backward_data():
    conv = _conv(1, 6, 5, 2, seed=0)
    with torch.no_grad():
        out = kernels.block1(torch.randn(2, 1, 28, 28), conv, torch.nn.MaxPool2d(2))
    assert out.grad_fn is None
