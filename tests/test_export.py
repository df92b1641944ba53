"""Export round trips (ONNX Runtime and TorchScript vs PyTorch on the test set)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, require, run_cli
from lenet.checkpoint import load_model
from lenet.data import load_split
from lenet.engine import train
from lenet.normalization import normalize

require("onnxruntime")


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """A small trained lenet5-relu checkpoint (one short epoch) and the normalized test set."""
    out = tmp_path_factory.mktemp("export")
    res = train(
        epochs=1,
        limit=4096,
        val_size=1000,
        threads=1,
        device="cpu",
        data_dir=str(mnist_dir),
        out=str(out),
        name="run",
        progress=False,
    )
    lm = load_model(res.best_path)
    test = load_split("test", mnist_dir)
    x = normalize(test.images, lm.normalization)
    with torch.no_grad():
        ref = lm.model(x).numpy()
    return res.best_path, x, ref, test


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_matches_pytorch_on_test_set(trained, tmp_path, exporter):
    if exporter == "dynamo":
        require("onnxscript")
    from lenet.export import OnnxRunner, export_onnx

    ckpt, x, ref, test = trained
    path = export_onnx(ckpt, tmp_path / "m.onnx", exporter=exporter)
    runner = OnnxRunner(path, threads=1)
    got = np.concatenate([runner(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    assert got.shape == ref.shape == (10_000, 10)
    assert np.abs(got - ref).max() < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    # dynamic batch: a single image and an odd batch size work too
    assert np.abs(runner(x[:1]) - ref[:1]).max() < 1e-4
    assert runner(x[:7]).shape == (7, 10)
    # the normalization travels in the metadata; uint8 pixels give the same logits
    meta = runner.metadata
    assert meta["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert meta["model"] == "lenet5-relu" and meta["exporter"] == exporter
    assert np.abs(runner.logits_for_images(test.images[:100].numpy()) - ref[:100]).max() < 1e-4


def test_torchscript_round_trip(trained, tmp_path):
    from lenet.export import export_torchscript, load_torchscript

    ckpt, x, ref, _ = trained
    path = export_torchscript(ckpt, tmp_path / "m.torchscript.pt")
    module, meta = load_torchscript(path)
    with torch.no_grad():
        got = module(x).numpy()
        assert module(x[:3]).shape == (3, 10)
    assert np.abs(got - ref).max() < 1e-5
    assert meta["normalization"] == {"mean": 0.1307, "std": 0.3081}


def test_export_cli_default_paths_and_json(trained, tmp_path):
    ckpt, *_ = trained
    out = tmp_path / "cli.onnx"
    proc = run_cli("export", str(ckpt), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(out) and out.is_file()
    assert summary["max_abs_diff_vs_torch"] < 1e-4
    proc = run_cli("export", str(ckpt), "--format", "torchscript")
    assert proc.returncode == 0, proc.stderr
    assert ckpt.with_name("best.torchscript.pt").is_file()


def test_export_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"nope")
    assert_one_line_error(run_cli("export", str(bad)), "not a loadable checkpoint")
    assert_one_line_error(run_cli("export", str(tmp_path / "missing.pt")), "no such checkpoint")


def test_onnx_runner_rejects_non_onnx(tmp_path):
    from lenet.errors import LenetError
    from lenet.export import OnnxRunner

    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(LenetError, match="not a loadable ONNX model"):
        OnnxRunner(bad)
