"""Nothing a user owns is overwritten or lost; absurd input is one line (issue 16's findings)."""

from __future__ import annotations

import os
import stat
import time

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
