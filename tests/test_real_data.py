"""The real dev sets: pinned downloads, folder counts and sizes, refusals, resume, the optdigits renderer."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA_DIR, assert_one_line_error, run_cli
from lenet import realdata
from lenet.errors import DataError
from lenet.realdata import REAL_SETS, fetch_real, real_dir, render_optdigit, verify_real


def _digit_counts(folder):
    return [len(list((folder / str(d)).glob("*.png"))) for d in range(10)]


@pytest.mark.slow
def test_fetch_real_sets_counts_sizes_and_noop(real_sets, monkeypatch):
    import cv2

    assert set(real_sets) == {"pen-digits", "optdigits"}
    assert _digit_counts(real_sets["pen-digits"]) == [25] * 10
    assert _digit_counts(real_sets["optdigits"]) == list(realdata.OPT_COUNTS)
    assert sum(realdata.OPT_COUNTS) == 1797
    for name, side in (("pen-digits", 32), ("optdigits", 64)):
        assert verify_real(DATA_DIR, name) == real_sets[name]
        img = cv2.imread(str(next(real_sets[name].glob("7/*.png"))), cv2.IMREAD_GRAYSCALE)
        assert img.shape == (side, side)
        assert img[0, 0] > 200 and img.min() < 80  # dark ink on white paper
    # A second fetch writes nothing and downloads nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in real_sets["optdigits"].glob("*/*.png")}

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(realdata, "_download", no_download)
    assert fetch_real(DATA_DIR) == real_sets
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


@pytest.mark.slow
def test_cli_real_and_verify(real_sets, mnist_dir, tmp_path):
    import json
    import shutil

    proc = run_cli("data", "--real", "--data-dir", str(DATA_DIR), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fetched"] == [] and out["real"]["optdigits"]["images"] == 1797
    proc = run_cli("data", "--verify", "--data-dir", str(DATA_DIR), "--json")
    assert json.loads(proc.stdout)["real_verified"] == ["optdigits", "pen-digits"]
    # A damaged PNG in a copy: one clear line naming it.
    copy = tmp_path / "d"
    for name, folder in real_sets.items():  # both, so nothing is downloaded
        shutil.copytree(folder, real_dir(copy, name))
    (real_dir(copy, "pen-digits") / "4" / "Digit_4_Sample01.png").write_bytes(b"not a png")
    proc = run_cli("data", "--real", "--data-dir", str(copy))
    assert_one_line_error(proc, "Digit_4_Sample01.png: not a readable PNG")


@pytest.mark.slow
def test_wrong_pinned_sha256_is_refused(tmp_path, monkeypatch):
    # pip's hash-checking mode refuses the file before anything from it runs: one clear line.
    rs = REAL_SETS["pen-digits"]
    monkeypatch.setitem(
        REAL_SETS, "pen-digits", realdata.RealSet(**{**rs.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(DataError, match="could not download pyclustering-0.10.1.2.tar.gz") as e:
        fetch_real(tmp_path, ("pen-digits",))
    assert "\n" not in str(e.value) and "HASHES" in str(e.value)
    assert not real_dir(tmp_path, "pen-digits").exists()


def test_our_own_check_refuses_a_file_with_another_hash(tmp_path):
    # The same size as the pinned wheel, other bytes: refused before the archive is opened.
    fake = tmp_path / realdata.OPT_FILE
    fake.write_bytes(b"\0" * realdata.OPT_SIZE)
    with pytest.raises(DataError, match="sha256 .* expected f8b0cc.*refusing to open it"):
        fetch_real(tmp_path, ("optdigits",), sources={"optdigits": fake})
    fake.write_bytes(b"short")
    with pytest.raises(DataError, match="5 bytes, expected 13322034"):
        fetch_real(tmp_path, ("optdigits",), sources={"optdigits": fake})


def test_unknown_set_and_incomplete_folder(tmp_path):
    with pytest.raises(DataError, match="unknown real set 'usps'"):
        real_dir(tmp_path, "usps")
    (real_dir(tmp_path, "pen-digits") / "3").mkdir(parents=True)
    with pytest.raises(DataError, match="images per digit .*lenet data --real"):
        verify_real(tmp_path, "pen-digits")


def test_render_optdigit_dark_stroke_on_white_with_margin():
    counts = np.zeros((8, 8), np.int64)
    counts[1:7, 3:5] = 16  # a vertical bar, fully inked
    img = render_optdigit(counts)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    m = realdata.OPT_MARGIN
    assert m == 16  # 25% of the side
    # White margin all round, white paper away from the stroke, dark ink on it.
    for border in (img[:m], img[-m:], img[:, :m], img[:, -m:]):
        assert border.min() == 255
    assert img[m + 16, m + 16] < 30 and img[m + 16, m + 2] > 225
    assert img[m + 1, m + 16] > 225  # row 0 of the 8x8 is blank


def test_render_optdigit_scales_with_count():
    light, dark = np.full((8, 8), 4), np.full((8, 8), 12)
    assert render_optdigit(light)[32, 32] > render_optdigit(dark)[32, 32]
    assert render_optdigit(np.zeros((8, 8), np.int64)).min() == 255
    with pytest.raises(DataError, match="8x8"):
        render_optdigit(np.zeros((4, 4)))
