"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# A temp file of a write that was killed (kill -9, power loss) is removed by the next write to the
# same folder once it is this old: a younger one may belong to a write still in progress.
STALE_TMP_S = 3600.0


def _umask() -> int:
    """The process umask: from /proc where Linux shows it (reading it there changes nothing),
    else by setting it and putting it straight back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is the folder's data)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows, or a folder we may write but not open: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the data itself is synced
    finally:
        os.close(fd)


def clean_stale_temps(folder: str | os.PathLike, name: str, older_than_s: float = STALE_TMP_S):
    """Remove ``.NAME.*.tmp`` files in ``folder`` older than ``older_than_s`` (left by a kill)."""
    cutoff = time.time() - older_than_s
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:  # another process took it first, or it is not ours to remove
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, fsync it, rename it over ``path``,
    fsync the folder. The file gets the permissions a plain ``open()`` would (0666 less the
    umask), not ``mkstemp``'s owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def safe_stem(name: str) -> str:
    """A file stem from an input's name (``-`` is stdin) with only ``[A-Za-z0-9._-]`` in it."""
    stem = Path(name).stem if name != "-" else "stdin"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "image"


def create_unique(
    folder: str | os.PathLike, stem: str, data: bytes, used: set[str], suffix: str = ".png"
) -> Path:
    """Write ``data`` as ``folder/<stem><suffix>``, or ``<stem>-1``, ``-2``... : the first name
    neither in ``used`` (names this run took; updated) nor taken on disk at the moment of
    writing (:func:`create_new`), so no existing file is ever replaced."""
    cand, n = stem, 1
    while True:
        if cand not in used:
            used.add(cand)
            try:
                return create_new(Path(folder) / f"{cand}{suffix}", data)
            except FileExistsError:
                pass
        cand, n = f"{stem}-{n}", n + 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def create_new(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` only if no file of that name exists (else ``FileExistsError``).

    Written to a temp file first and then hard-linked into place: the link fails when the name
    is taken at that very moment, so a file that appeared meanwhile is never replaced and the
    name never shows a half-written file. Where hard links are not supported, an exclusive
    create (``O_EXCL``) keeps the first promise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (FAT, some network shares)
            with open(path, "xb") as f:
                f.write(data)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path
