"""Checkpoint round trip, atomic writes, resume equality and determinism (CPU, small subsets)."""

from __future__ import annotations

import pytest
import torch

from lenet.checkpoint import load_model, read_checkpoint, save_checkpoint
from lenet.engine import train
from lenet.errors import CheckpointError, LenetError

SMALL = dict(limit=1024, val_size=1000, batch_size=64, device="cpu", threads=1)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip(mnist_dir, tmp_path):
    res = train(
        epochs=1, data_dir=str(mnist_dir), out=str(tmp_path), name="rt", progress=False, **SMALL
    )
    ck = read_checkpoint(res.best_path)  # weights_only=True inside
    assert ck["format_version"] == 1
    assert ck["model"] == {"name": "lenet5-relu", "config": {"num_classes": 10}}
    assert ck["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert ck["train_config"]["batch_size"] == 64
    assert set(ck["versions"]) == {"lenet", "torch", "python"}
    lm = load_model(res.best_path)
    assert _same_weights(lm.model.state_dict(), ck["state_dict"])
    for f in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png"):
        assert (res.run_dir / f).is_file(), f
    assert not list(res.run_dir.glob(".*.tmp")), "temp files left behind"


def test_atomic_write_keeps_old_file_when_writer_dies(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"x": torch.ones(2)})
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def bad_save(obj, f):  # dies halfway through writing
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise Boom

    orig = torch.save
    torch.save = bad_save
    try:
        with pytest.raises(Boom):
            save_checkpoint(path, {"x": torch.zeros(2)})
    finally:
        torch.save = orig
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_garbage_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_model(p)


def test_same_seed_gives_identical_weights(mnist_dir, tmp_path):
    kw = dict(epochs=1, data_dir=str(mnist_dir), out=str(tmp_path), progress=False, seed=7, **SMALL)
    a = train(name="a", **kw)
    b = train(name="b", **kw)
    c = train(name="c", **{**kw, "seed": 8})
    wa, wb, wc = (read_checkpoint(r.last_path)["state_dict"] for r in (a, b, c))
    assert _same_weights(wa, wb)
    assert not _same_weights(wa, wc)


def test_resume_after_kill_equals_uninterrupted(mnist_dir, tmp_path):
    kw = dict(epochs=5, data_dir=str(mnist_dir), out=str(tmp_path), progress=False, **SMALL)
    full = train(name="full", **kw)

    def kill_after_3(row, res):
        if row.epoch == 3:
            raise KeyboardInterrupt  # what Ctrl-C / a kill between epochs looks like

    with pytest.raises(KeyboardInterrupt):
        train(name="cut", on_epoch=kill_after_3, **kw)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 3
    resumed = train(resume=tmp_path / "cut" / "last.pt", progress=False)
    assert len(resumed.history) == 5
    assert _same_weights(
        read_checkpoint(full.last_path)["state_dict"],
        read_checkpoint(resumed.last_path)["state_dict"],
    )
    assert resumed.best_epoch == full.best_epoch


def test_existing_run_folder_is_not_overwritten(mnist_dir, tmp_path):
    kw = dict(epochs=1, data_dir=str(mnist_dir), out=str(tmp_path), progress=False, **SMALL)
    train(name="x", **kw)
    with pytest.raises(LenetError, match="already exists"):
        train(name="x", **kw)


def test_tiny_runs_and_config_plus_overrides(mnist_dir, tmp_path):
    from lenet.config import make_config

    # 1 step in all: too short for a one-cycle warm-up, must still train (constant LR).
    cfg = make_config(data_dir=str(mnist_dir), out=str(tmp_path), limit=200, val_size=100)
    res = train(cfg, epochs=1, name="tiny", device="cpu", threads=1, progress=False)
    assert res.config.epochs == 1 and res.config.limit == 200
    assert len(res.history) == 1


def test_resume_cannot_stretch_a_one_cycle_schedule(mnist_dir, tmp_path):
    kw = dict(data_dir=str(mnist_dir), out=str(tmp_path), progress=False, **SMALL)
    res = train(epochs=1, name="oc", **kw)
    with pytest.raises(LenetError, match="onecycle schedule is fixed for 1 epochs"):
        train(resume=res.last_path, epochs=2, progress=False)
