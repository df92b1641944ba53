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
