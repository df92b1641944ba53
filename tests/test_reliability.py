"""Nothing a user owns is overwritten or lost; absurd input is one line (issue 16's findings)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from lenet import fileio

# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = fileio.atomic_write_bytes(tmp_path / "shared.pt", b"x")
        q = fileio.create_new(tmp_path / "new.png", b"y")
    finally:
        os.umask(old)
    # mkstemp's 0600 would leave a teammate or a service account unable to read them.
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(q.stat().st_mode) == 0o644


def test_atomic_write_fsyncs_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    fileio.atomic_write_bytes(tmp_path / "a", b"x")
    assert synced == [False, True]  # the file, then the folder holding the rename


def test_stale_temp_files_from_a_kill_are_cleaned(tmp_path):
    stale = tmp_path / ".best.pt.abc123.tmp"
    young = tmp_path / ".best.pt.def456.tmp"  # may be a write still in progress elsewhere
    other = tmp_path / ".last.pt.abc123.tmp"
    for p in (stale, young, other):
        p.write_bytes(b"half")
    old = time.time() - 2 * fileio.STALE_TMP_S
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    fileio.atomic_write_bytes(tmp_path / "best.pt", b"x")
    assert not stale.exists() and young.exists() and other.exists()


def test_create_new_never_replaces(tmp_path):
    p = tmp_path / "3.png"
    p.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        fileio.create_new(p, b"theirs")
    assert p.read_bytes() == b"mine"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["3.png"]  # no temp file left


# ---------------------------------------------------------------------------- the torch floor


def _torch_requirement() -> str:
    import re

    from conftest import ROOT

    # The quoted requirement inside pyproject.toml's dependencies (tomllib needs Python 3.11).
    return re.search(r'"(torch[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)


def test_torch_floor_excludes_known_weights_only_bypasses():
    """torch.load(weights_only=True) is our safety line: CVE-2025-32434 (bypass, <= 2.5.1) and
    CVE-2026-24747 (memory corruption, fixed in 2.10) must be outside the allowed range, the
    range must stay a range (a GPU user brings their own build), and CI's pin must be inside it."""
    from conftest import ROOT

    req = _torch_requirement().replace(" ", "")
    floor = req.split(">=")[1].split(",")[0]
    assert tuple(int(x) for x in floor.split(".")[:2]) >= (2, 10), req
    assert "<" in req and "==" not in req, req
    pins = [
        ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.startswith("torch==")
    ]
    pinned = tuple(int(x) for x in pins[0].split("==")[1].split(".")[:2])
    assert pinned >= (2, 10), pins
    assert f"`{req}`" in (ROOT / "README.md").read_text()  # the README quotes the range


# ---------------------------------------------------------------------------- absurd flags


def _cli_error(capsys, *argv: str) -> str:
    """Run ``lenet ARGV`` in process; the single ``lenet: error:`` line it printed (exit 2)."""
    from lenet.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("lenet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--optimizer", "sgd", "--lr", "nan"], "--lr must be a finite number"),
        (["--momentum=-0.5"], "--momentum must be at least 0"),
        (["--momentum", "nan"], "--momentum must be a finite number"),
        (["--weight-decay=-1e-4"], "--weight-decay must not be negative"),
        (["--gamma", "nan"], "--gamma must be a finite number"),
        (["--gamma", "0"], "--gamma must be above 0"),
        (["--threads", "1000"], "--threads 1000 is more than the"),
        (["--dist-timeout", "nan"], "--dist-timeout: not a finite number"),
        (["--dist-timeout", "inf"], "--dist-timeout: not a finite number"),
        (["--nproc", "100000"], "--nproc 100000 is more processes than"),
    ],
)
def test_absurd_train_flags_are_one_line(capsys, tmp_path, flags, needle):
    out = ["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "runs")]
    assert needle in _cli_error(capsys, "train", *flags, *out)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "none").exists()


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_serve_worker_counts_are_bounded(capsys, flag):
    assert "must be between 1 and" in _cli_error(capsys, "serve", flag, "100000")


@pytest.mark.parametrize("raw", ["nan", "inf", "-5", "0"])
def test_dist_timeout_from_the_environment_is_checked(monkeypatch, raw):
    from lenet import distributed
    from lenet.errors import LenetError

    monkeypatch.setenv(distributed.TIMEOUT_ENV, raw)
    with pytest.raises(LenetError, match="distributed timeout must be a number of seconds"):
        distributed.resolve_timeout()


# ---------------------------------------------------------------------------- NaN never wins

SMALL = dict(limit=512, val_size=500, batch_size=128, device="cpu", threads=1, progress=False)


def test_a_diverging_run_stops_and_keeps_the_good_best_pt(mnist_dir, tmp_path, monkeypatch):
    import torch

    from lenet import engine
    from lenet.checkpoint import load_model

    real = engine.train_epoch

    def diverge_in_epoch_2(t, data, cfg, epoch, strategy, progress):
        out = real(t, data, cfg, epoch, strategy, progress)
        if epoch == 1:  # what a too-high LR does: the weights and the loss become NaN
            with torch.no_grad():
                next(t.model.parameters()).fill_(float("nan"))
            return (float("nan"), *out[1:])
        return out

    monkeypatch.setattr(engine, "train_epoch", diverge_in_epoch_2)
    kw = dict(epochs=3, data_dir=str(mnist_dir), out=str(tmp_path), name="d", select_on="last")
    with pytest.raises(engine.LenetError, match="training diverged in epoch 2"):
        engine.train(**kw, **SMALL)
    run = tmp_path / "d"
    for name in ("best.pt", "last.pt"):
        lm = load_model(run / name)  # still the finite epoch-1 weights
        assert lm.checkpoint["epoch"] == 1


def test_sgd_with_an_exploding_lr_saves_no_nan_checkpoint(mnist_dir, tmp_path):
    from lenet.engine import LenetError, train

    kw = dict(epochs=1, data_dir=str(mnist_dir), out=str(tmp_path), name="x", optimizer="sgd")
    with pytest.raises(LenetError, match="diverged in epoch 1.*no checkpoint was written"):
        train(lr=1e30, scheduler="none", **kw, **SMALL)
    assert not (tmp_path / "x" / "best.pt").exists()


def _nan_checkpoint(tmp_path):
    import torch

    from lenet.checkpoint import read_checkpoint, save_checkpoint
    from lenet.predictor import bundled_checkpoint

    ck = read_checkpoint(bundled_checkpoint())
    sd = dict(ck["state_dict"])
    key = next(iter(sd))
    sd[key] = torch.full_like(sd[key], float("nan"))
    return save_checkpoint(tmp_path / "nan.pt", {**ck, "state_dict": sd})


def test_nan_weights_are_refused_when_loaded(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "7.png"
    Image.new("L", (28, 28), 0).save(img)
    line = _cli_error(capsys, "predict", str(img), "--model", str(_nan_checkpoint(tmp_path)))
    assert "hold NaN or inf" in line


def test_a_model_answering_nan_is_an_error_never_digit_0(tmp_path):
    import numpy as np
    import torch

    from lenet.predictor import NONFINITE, Predictor

    pred = Predictor()
    with torch.no_grad():
        for p in pred.model.parameters():
            p.fill_(float("nan"))
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255
    out = pred.predict_one(img)
    assert out.error == NONFINITE and out.digit is None and out.confidence is None


def test_the_service_answers_nan_with_json_not_500():
    from conftest import require

    require("fastapi")
    import torch

    from hostile import drawn_one, encode
    from lenet.predictor import NONFINITE, Predictor
    from lenet.server import create_app
    from test_hostile import post

    pred = Predictor()
    with torch.no_grad():
        for p in pred.model.parameters():
            p.fill_(float("nan"))
    status, body, _ = post(create_app(pred), encode(drawn_one(), "PNG"))
    assert status == 422 and body == {"error": NONFINITE}


# ---------------------------------------------------------------------------- odd checkpoints


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"model": "lenet5-relu"}, "'model' is not a {name, config} record"),
        ({"model": {"name": 5, "config": {}}}, "'model' is not a {name, config} record"),
        ({"model": {"name": "lenet5-relu", "config": [1]}}, "model config is not a dict"),
        ({"model": {"name": "nope", "config": {}}}, "unknown model 'nope'"),
        ({"normalization": {"mean": 0.1, "sd": 0.3}}, "normalization"),
        ({"normalization": {"mean": 0.1, "std": 0.0}}, "normalization"),
        ({"normalization": "mnist"}, "normalization"),
        ({"format_version": "1"}, "format_version is '1', not a number"),
        ({"format_version": 99}, "newer than this lenet"),
        ({"state_dict": [1, 2]}, "'state_dict' is not a dict of named tensors"),
    ],
)
def test_odd_checkpoints_are_one_line(tmp_path, capsys, change, needle):
    from lenet.checkpoint import read_checkpoint
    from lenet.predictor import bundled_checkpoint

    ck = {**read_checkpoint(bundled_checkpoint()), **change}
    import torch

    torch.save(ck, tmp_path / "odd.pt")  # as another tool would write it: no checks on the way
    line = _cli_error(capsys, "summary", str(tmp_path / "odd.pt"))
    assert needle in line


def test_a_folder_as_model_says_so(tmp_path, capsys):
    line = _cli_error(capsys, "summary", str(tmp_path))
    assert "is a folder, not a checkpoint file" in line


# ---------------------------------------------------------------------------- run folders


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from lenet import engine
    from lenet.config import make_config

    monkeypatch.setattr(engine.time, "strftime", lambda fmt: "20260101-000000")
    cfg = make_config(out=str(tmp_path))
    a, _ = engine._new_run_dir(cfg, overwrite=False)
    b, _ = engine._new_run_dir(cfg, overwrite=False)
    assert a != b and a.is_dir() and b.is_dir()
    assert b.name == a.name + "-2"


def test_the_same_name_is_claimed_once(tmp_path):
    from lenet import engine
    from lenet.config import make_config

    cfg = make_config(out=str(tmp_path), name="mine")
    (tmp_path / "mine").mkdir()  # an empty folder made beforehand may be used...
    run, created = engine._new_run_dir(cfg, overwrite=False)
    assert run == tmp_path / "mine" and not created
    with pytest.raises(engine.LenetError, match="already exists"):  # ...by one run only
        engine._new_run_dir(cfg, overwrite=False)


def test_a_run_that_fails_before_starting_leaves_no_folder(tiny_mnist, tmp_path):
    from lenet.data import FILES, raw_dir
    from lenet.engine import LenetError, train

    (raw_dir(tiny_mnist) / FILES["train", "images"]).write_bytes(b"\0\0\x08")  # damaged
    kw = dict(epochs=1, data_dir=str(tiny_mnist), out=str(tmp_path / "runs"), val_size=8)
    for name in ("", "n"):
        with pytest.raises(LenetError, match="truncated"):
            train(**kw, name=name, progress=False)
    assert list((tmp_path / "runs").iterdir()) == []


def _start_train(tmp_path, mnist_dir, *extra):
    """A tiny ``lenet train`` in the background (one epoch of 256 images)."""
    import subprocess
    import sys

    args = ["--data-dir", str(mnist_dir), "--out", str(tmp_path / "runs"), "--epochs", "1"]
    args += ["--limit", "256", "--val-size", "256", "--threads", "1", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "lenet", "-q", "train", *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_drill_two_trainings_at_once_never_share_a_folder(mnist_dir, tmp_path):
    import json

    procs = [_start_train(tmp_path, mnist_dir, "--seed", str(s), "--json") for s in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = [json.loads(o.strip().splitlines()[-1])["run_dir"] for o, _ in outs]
    assert len(set(dirs)) == 2, dirs
    for seed, d in zip((1, 2), dirs, strict=True):  # each folder holds its own run only
        assert json.loads((Path(d) / "config.json").read_text())["seed"] == seed

    # The same --name at once: one run gets the folder, the other one clear line.
    procs = [_start_train(tmp_path, mnist_dir, "--name", "same", "--seed", str(s)) for s in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_, e) in zip(procs, outs, strict=True) if p.returncode == 2)
    assert err.count("lenet: error:") == 1 and "already exists" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- --save-preprocessed


def test_save_preprocessed_never_overwrites(tmp_path, capsys):
    from PIL import Image, ImageDraw

    from lenet.cli import main

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    # 3-1.png: an earlier output the user kept (read as an input too, being in the folder).
    for path in (photos / "3.png", photos / "sub" / "3.jpg", photos / "3-1.png"):
        img = Image.new("L", (60, 60), 255)
        ImageDraw.Draw(img).line([(30, 10), (30, 50)], fill=0, width=6)
        img.save(path)
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    # Saved into the folder of the inputs themselves: the worst case of the finding.
    assert main(["-q", "predict", str(photos), "--save-preprocessed", str(photos)]) == 0
    capsys.readouterr()
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was overwritten"
    new = {p.name for p in photos.glob("*.png")} - {p.name for p in before}
    assert new == {"3-1-1.png", "3-2.png", "3-3.png"}, new  # one per input, each a free name
    assert not list(photos.glob(".*.tmp"))


# ---------------------------------------------------------------------------- fuzzing


def mutate(blob: bytes, rng) -> bytes:
    """One seeded damage: bit flips, a truncation, a tail added, a span overwritten or cut."""
    b = bytearray(blob)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[rng.randrange(len(b)) :]
    elif kind == 2:
        b += rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        i = rng.randrange(len(b))
        b[i : i + 8] = rng.randbytes(len(b[i : i + 8]))
    else:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 64)]
    return bytes(b)


class _Hang(Exception):
    pass


def _fuzz(original: bytes, path: Path, load, same, n: int = 1000, seed: int = 16) -> dict:
    """Write ``n`` seeded mutations of ``original`` to ``path`` and ``load`` each: it must raise
    a LenetError (one line), or give what the original gives (``same``); never another
    exception, never a hang (10 s each). Returns the count of each outcome."""
    import random
    import signal

    from lenet.errors import LenetError

    def alarm(signum, frame):
        raise _Hang

    rng, seen = random.Random(seed), {"refused": 0, "identical": 0, "unchanged bytes": 0}
    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for i in range(n):
            blob = mutate(original, rng)
            path.write_bytes(blob)
            signal.alarm(10)
            try:
                got = load(path)
            except LenetError as e:
                assert "\n" not in str(e), (i, str(e))
                seen["refused"] += 1
                continue
            except _Hang:
                pytest.fail(f"mutation {i} (seed {seed}) hung")
            finally:
                signal.alarm(0)
            assert same(got), f"mutation {i} (seed {seed}) loaded silently as something else"
            seen["unchanged bytes" if blob == original else "identical"] += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    return seen


def _same_tree(a, b) -> bool:
    import torch

    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_fuzz_idx_file(mnist_dir, tmp_path):
    from lenet.data import FILES, raw_dir, read_checked

    base = FILES["test", "labels"]  # 10,008 bytes: the official file, so its MD5 is pinned
    original = (raw_dir(mnist_dir) / base).read_bytes()
    want = read_checked(raw_dir(mnist_dir) / base, base)
    seen = _fuzz(
        original,
        tmp_path / base,
        lambda p: read_checked(p, base, ndim=1),
        lambda got: got.shape == want.shape and (got == want).all(),
    )
    assert seen["identical"] == 0, seen  # every changed byte of a pinned file is caught


def test_fuzz_checkpoint(tmp_path):
    import torch

    from lenet.checkpoint import load_model, make_payload, read_checkpoint, save_checkpoint
    from lenet.models import create_model, model_config
    from lenet.normalization import MNIST_STATS

    torch.manual_seed(0)
    model = create_model("lenet1")  # the smallest of the family: a small file, a fast loop
    path = save_checkpoint(
        tmp_path / "best.pt",
        make_payload(model, "lenet1", model_config("lenet1"), MNIST_STATS, epoch=1, metrics={}),
    )
    want = read_checkpoint(path)

    def load(p):
        lm = load_model(p)
        return lm.checkpoint

    seen = _fuzz(path.read_bytes(), tmp_path / "fuzzed.pt", load, lambda c: _same_tree(c, want))
    assert seen["refused"] > 700, seen  # the rest: a tail added past the zip, padding bytes


def test_fuzz_bundled_weights(tmp_path):
    from lenet.checkpoint import load_model, read_checkpoint
    from lenet.predictor import bundled_checkpoint

    want = read_checkpoint(bundled_checkpoint())
    seen = _fuzz(
        bundled_checkpoint().read_bytes(),
        tmp_path / "lenet5-relu.pt",
        lambda p: load_model(p).checkpoint,
        lambda c: _same_tree(c, want),
    )
    assert seen["refused"] > 700, seen  # the rest: a tail added past the zip, padding bytes


# ---------------------------------------------------------------------------- fault drills

DRILL = ["--epochs", "4", "--limit", "4096", "--val-size", "500", "--batch-size", "64"]
DRILL += ["--scheduler", "none", "--threads", "1", "--device", "cpu", "--seed", "3"]


def _train_cmd(mnist_dir, out, *extra) -> list[str]:
    import sys

    args = ["--data-dir", str(mnist_dir), "--out", str(out), *DRILL, *extra]
    return [sys.executable, "-m", "lenet", "-q", "train", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _state(run: Path) -> dict:
    """What must be bit-identical after a resume: weights, optimizer, best.pt, the metrics."""
    import csv

    from lenet.checkpoint import read_checkpoint

    last, best = read_checkpoint(run / "last.pt"), read_checkpoint(run / "best.pt")
    timing = ("seconds", "images_per_s")  # the machine's, not the run's
    with open(run / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(f)]
    return {
        "weights": last["state_dict"],
        "optimizer": last["optimizer"],
        "best": (best["epoch"], best["state_dict"]),
        "metrics": rows,
    }


@pytest.mark.slow
def test_drill_kill_9_during_training_then_resume_is_bit_identical(mnist_dir, tmp_path):
    """Ten kill -9 at seeded random moments of a small run (start-up, an epoch, a checkpoint
    write): what is left loads, and --resume ends bit-identical to a run never killed."""
    import csv
    import random
    import signal
    import subprocess
    import sys
    import time

    from lenet.checkpoint import read_checkpoint

    ref = subprocess.run(
        _train_cmd(mnist_dir, tmp_path, "--name", "ref"), capture_output=True, text=True, env=_env()
    )
    assert ref.returncode == 0, ref.stderr
    want = _state(tmp_path / "ref")
    with open(tmp_path / "ref" / "metrics.csv") as f:
        epoch_s = max(float(r["seconds"]) for r in csv.DictReader(f)) * 1.5 + 0.05

    rng, outcomes = random.Random(16), []
    for trial in range(10):
        name = f"k{trial}"
        p = subprocess.Popen(
            [a for a in _train_cmd(mnist_dir, tmp_path, "--name", name) if a != "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        # A random moment: the "training ..." line (folder claimed, data loaded), then 0-2
        # finished epochs (each prints its line once its files are written), then a random
        # part of an epoch: inside the loop, or inside a checkpoint write.
        while "lenet: training" not in p.stderr.readline():
            assert p.poll() is None, trial
        for _ in range(rng.randrange(3)):
            p.stdout.readline()
        time.sleep(rng.uniform(0, epoch_s))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        run = tmp_path / name
        for f in ("best.pt", "last.pt"):  # whatever a kill left must load
            if (run / f).exists():
                read_checkpoint(run / f)
        if (run / "last.pt").exists():
            done = read_checkpoint(run / "last.pt")["epoch"]
            cmd = [sys.executable, "-m", "lenet", "-q", "train", "--resume", str(run / "last.pt")]
        else:  # killed before its first epoch was saved: the claimed folder is started over
            done, cmd = 0, _train_cmd(mnist_dir, tmp_path, "--name", name, "--overwrite")
        outcomes.append(done)
        if done < 4:
            fin = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            assert fin.returncode == 0, (trial, done, fin.stderr)
        got = _state(run)
        assert got["metrics"] == want["metrics"], (trial, done)
        assert _same_tree(got, want), f"trial {trial}: resumed after epoch {done} differs"
    assert len(set(outcomes)) >= 2, outcomes  # the kills landed at different moments


@pytest.mark.slow
def test_drill_full_disk_during_a_checkpoint_keeps_the_previous_one(mnist_dir, tmp_path):
    """The resumed epoch's best.pt cannot be written (RLIMIT_FSIZE on the child: every write
    past 100 kB fails, as on a full disk): one line, and best.pt/last.pt are still epoch 1's."""
    import resource
    import signal
    import subprocess
    import sys

    first = subprocess.run(
        _train_cmd(mnist_dir, tmp_path, "--name", "f", "--epochs", "1", "--select-on", "last"),
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert first.returncode == 0, first.stderr
    run = tmp_path / "f"
    before = {f: (run / f).read_bytes() for f in ("best.pt", "last.pt")}

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process

    p = subprocess.run(
        [sys.executable, "-m", "lenet", "-q", "train", "--resume", str(run / "last.pt")]
        + ["--epochs", "2"],
        capture_output=True,
        text=True,
        env=_env(),
        preexec_fn=small_disk,
    )
    from conftest import assert_one_line_error

    assert_one_line_error(p, "could not write", "best.pt", "untouched")
    for f, data in before.items():
        assert (run / f).read_bytes() == data, f
    assert not list(run.glob(".*.tmp"))  # the failed temp file was removed


_DATA_DRIVER = """
import sys, time
import lenet.data as data
from dataclasses import replace
from lenet.cli import main

# The source: the verified MNIST files of the test data folder (no download); a pause after
# the STOP_AFTER-th file gives the drill a moment with 1, 2 or 3 of the 4 files in place.
src, stop_after = sys.argv[1], int(sys.argv[2])
files = {b: (data.raw_dir(src) / b).read_bytes() for b in data.FILES.values()}
data.REGISTRY["mnist"] = replace(data.REGISTRY["mnist"], fetch=lambda d, s: files)
real = data.atomic_write_bytes
def slow(path, blob):
    out = real(path, blob)
    print("wrote", path.name, flush=True)
    if len(list(path.parent.iterdir())) == stop_after:  # wait here to be killed
        time.sleep(60)
    return out
data.atomic_write_bytes = slow
sys.exit(main(["data", "--data-dir", sys.argv[3]]))
"""


@pytest.mark.slow
def test_drill_kill_9_during_lenet_data_then_it_completes(mnist_dir, tmp_path):
    """kill -9 before any file, after 1, 2 and 3 of the 4 files: the next `lenet data`
    fetches what is missing and verifies all four."""
    import signal
    import subprocess
    import sys

    from lenet.data import missing_files, verify

    driver = tmp_path / "driver.py"
    driver.write_text(_DATA_DRIVER)
    for written in (0, 1, 2, 3):
        d = tmp_path / f"d{written}"
        cmd = [sys.executable, str(driver), str(mnist_dir)]
        stop = [str(written or 9), str(d)]
        p = subprocess.Popen(cmd + stop, stdout=subprocess.PIPE, text=True, env=_env())
        for _ in range(written):
            assert p.stdout.readline().startswith("wrote"), written
        if written == 0:  # before the first file: while the source is read
            while not (d / "MNIST" / "raw").exists() and p.poll() is None:
                pass
        p.send_signal(signal.SIGKILL)
        p.communicate()
        if written:
            assert len(missing_files(d)) == 4 - written  # the moment the drill wanted
        again = subprocess.run(cmd + ["9", str(d)], capture_output=True, text=True, env=_env())
        assert again.returncode == 0, (written, again.stderr)
        assert "fetched and verified" in again.stdout, again.stdout
        assert len(verify("mnist", d)) == 4


def test_readme_says_what_is_guaranteed():
    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## What is guaranteed", 1)[1].split("\n## ", 1)[0]
    for needle in ("A kill", "Never overwritten", "Checksummed", "--resume", "MD5", "sha256"):
        assert needle in section, needle
