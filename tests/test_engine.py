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


def test_resume_refuses_a_new_model_before_loading_weights(mnist_dir, tmp_path):
    kw = dict(data_dir=str(mnist_dir), out=str(tmp_path), progress=False, scheduler="none")
    res = train(epochs=1, name="m", **kw, **SMALL)
    with pytest.raises(LenetError, match="cannot change --model "):
        train(resume=res.last_path, model="lenet1", progress=False)
    # A setting given with its saved value is no change; epochs/device/threads may change.
    res2 = train(resume=res.last_path, epochs=2, scheduler="none", threads=1, progress=False)
    assert len(res2.history) == 2


def test_resume_allows_only_where_and_how_long():
    from lenet.config import make_config
    from lenet.engine import resume_config

    saved = make_config(scheduler="none").to_dict()
    cfg = resume_config(saved, {"epochs": 9, "device": "cpu", "threads": 1, "lr": saved["lr"]})
    assert (cfg.epochs, cfg.device, cfg.threads) == (9, "cpu", 1)
    with pytest.raises(LenetError) as e:
        resume_config(saved, {"lr": 0.1, "augment": "both", "epochs": 4})
    assert str(e.value) == (
        "--resume continues a run with its own settings; it cannot change --lr, --augment "
        "(only --epochs, --device, --threads, --data-dir)"
    )


def test_every_settings_path_applies_the_same_override_rules(tmp_path):
    # A recipe, a config= and a resume all refuse unknown settings and map old recipe names.
    from lenet.config import TrainConfig, make_config
    from lenet.engine import resume_config, settings

    saved = make_config(scheduler="none").to_dict()
    for apply in (
        lambda o: make_config(**o),
        lambda o: settings(TrainConfig(), None, o)[0],
        lambda o: resume_config(saved, o),
    ):
        with pytest.raises(LenetError, match="unknown setting\\(s\\): bogus"):
            apply({"bogus": 1})
    with pytest.warns(DeprecationWarning):
        assert settings(TrainConfig(), None, {"recipe": "seed"})[0].recipe == "note"
    with pytest.raises(LenetError, match="unknown setting"):  # the public API: one clear line
        train(TrainConfig(), bogus=1)


def test_config_and_resume_together_are_refused(tmp_path):
    from lenet.config import TrainConfig

    with pytest.raises(LenetError, match="config or resume, not both"):
        train(TrainConfig(), resume=tmp_path / "last.pt")


def test_seed_recipe_is_the_note_recipe_with_a_deprecation_warning():
    from lenet.config import make_config

    with pytest.warns(DeprecationWarning, match="'seed' is now called 'note'"):
        old = make_config("seed")
    assert old == make_config("note")


def test_seed_streams_are_distinct_and_pure():
    from lenet.config import derive_seed

    per_purpose = {p: derive_seed(3, p, epoch=2, rank=1) for p in ("order", "dropout", "augment")}
    assert len(set(per_purpose.values())) == 3
    assert derive_seed(5, "order", 2) == derive_seed(5, "order", 2) != derive_seed(6, "order", 2)
    assert derive_seed(0, "dropout", 1, rank=0) != derive_seed(0, "dropout", 1, rank=1)


def test_training_imports_neither_dynamo_nor_matplotlib(mnist_dir, tmp_path):
    """Start-up: torch._dynamo (~1 s) and matplotlib stay out of the process until the curves
    are drawn after the last epoch (checked from inside a fresh process)."""
    import subprocess
    import sys

    code = f"""
import sys
from lenet.engine import train
seen = []
train(epochs=2, data_dir={str(mnist_dir)!r}, out={str(tmp_path)!r}, name="s", progress=False,
      limit=512, val_size=500, batch_size=64, device="cpu", threads=1,
      on_epoch=lambda row, res: seen.append(
          sorted(m for m in ("torch._dynamo", "matplotlib") if m in sys.modules)))
print(seen)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[[], []]", p.stdout + p.stderr
