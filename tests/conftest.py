"""Shared fixtures: real MNIST (fetched once into ./data), tiny IDX folders, a CLI runner."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lenet.data import FILES, encode_idx, ensure_mnist, raw_dir

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LENET_TEST_DATA", ROOT / "data"))


@pytest.fixture(scope="session")
def real_sets() -> dict[str, Path]:
    """The two real dev sets as ImageFolder trees, ``{name: DATA_DIR/real/<name>}``, fetched once."""
    from lenet.realdata import fetch_real

    return fetch_real(DATA_DIR)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST, fetched and verified on first use (cached across runs in ./data)."""
    ensure_mnist(DATA_DIR)
    return DATA_DIR


def require(module: str):
    """Import an optional dependency: skip without it locally, but FAIL in CI (CI=true), where
    scripts/test.sh installs every extra and a silent skip would hide a broken install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(
                f"{module} is missing in CI: scripts/test.sh must install it", pytrace=False
            )
        pytest.skip(f"needs {module}", allow_module_level=True)


def write_tiny_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """A small, valid MNIST-layout folder with random digits (for bad-data tests to damage)."""
    rng = np.random.default_rng(seed)
    d = raw_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        (d / FILES[split, "images"]).write_bytes(
            encode_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        )
        (d / FILES[split, "labels"]).write_bytes(encode_idx(rng.integers(0, 10, n, dtype=np.uint8)))
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A fresh tiny MNIST folder per test."""
    return write_tiny_mnist(tmp_path / "tiny")


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m lenet ARGS`` in a subprocess, capturing text output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lenet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user mistake: non-zero exit, one ``lenet: error:`` line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lenet: error:")]
    assert len(err_lines) == 1, proc.stderr
    for n in needles:
        assert n in err_lines[0], err_lines[0]
    return err_lines[0]


def asgi_scope(
    body_len: int | None = None, content_type: str = "image/png", extra: list | None = None
) -> dict:
    """An ASGI HTTP scope for ``POST /api/predict`` from 127.0.0.1 (driving the app in process)."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode())]
    if body_len is not None:
        headers.append((b"content-length", str(body_len).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"",
        "root_path": "",
        "headers": headers + list(extra or []),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
