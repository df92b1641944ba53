"""``lenet bench --quick`` smoke run (all six sections in the JSON) and --help of the new verbs."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from lenet.bench.suite import BENCHMARKS, NoteMNIST, format_table


@pytest.mark.slow
def test_bench_quick_writes_all_sections(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    flags = "--quick --threads 1 --device cpu".split()
    proc = run_cli("bench", *flags, "--data-dir", str(mnist_dir), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert list(record["benchmarks"]) == list(BENCHMARKS)
    m = record["machine"]
    for key in ("cpu", "logical_cores", "torch", "torch_threads", "device"):
        assert m[key] not in (None, ""), key
    for name, res in record["benchmarks"].items():
        assert res["rows"], name
        for r in res["rows"]:
            assert {"name", "value", "unit", "target", "meets"} <= set(r)
    train = {r["name"]: r for r in record["benchmarks"]["train-throughput"]["rows"]}
    ratio = train["note recipe speed-up, ours / note's"]["value"]
    assert ratio > 0
    acc = record["benchmarks"]["time-to-accuracy"]["rows"][1]["value"]
    assert 0.0 <= acc <= 1.0
    for bench in BENCHMARKS:  # the printed table names every benchmark
        assert bench in proc.stdout
    assert format_table(record) in proc.stdout


def test_note_to_tensor_matches_normalize():
    import numpy as np
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    t = NoteMNIST.to_tensor(Image.fromarray(a))
    assert t.shape == (1, 28, 28) and t.dtype.is_floating_point
    assert np.allclose(t.numpy()[0], a / 255.0)


def test_bench_unknown_benchmark_is_usage_error():
    proc = run_cli("bench", "--only", "nope")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_python_m_lenet_bench_help():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lenet.bench", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage: lenet bench" in proc.stdout
