"""Predicting outside images: the pipeline on realistic photos vs clean MNIST (and vs a naive
resize), the bundled weights against the README, the Predictor API, `lenet predict`, rejection."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, assert_one_line_error, run_cli
from lenet.data import load_split
from lenet.evaluation import evaluate, rejection_curve
from lenet.predictor import Prediction, Predictor, bundled_checkpoint
from photos import KINDS, make_photos, naive_28x28, shadowed_png


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()  # the bundled weights


@pytest.fixture(scope="module")
def mnist_test(mnist_dir):
    s = load_split("test", mnist_dir)
    return s.images.numpy(), s.labels.numpy()


def pipeline_vs_clean(predictor: Predictor, images, labels, seed: int):
    """(clean accuracy, pipeline accuracy on photos, naive accuracy, per-kind accuracy)."""
    clean = (predictor.probabilities(images).argmax(1) == labels).mean()
    photos = make_photos(images, seed=seed)
    res = predictor.predict(photos)
    assert all(r.error is None for r in res)
    got = np.array([-1 if r.digit is None else r.digit for r in res])
    naive = predictor.probabilities(np.stack([naive_28x28(p) for p in photos])).argmax(1)
    kinds = np.arange(len(images)) % len(KINDS)
    per_kind = {k: (got[kinds == i] == labels[kinds == i]).mean() for i, k in enumerate(KINDS)}
    return clean, (got == labels).mean(), (naive == labels).mean(), per_kind


def test_photos_within_1_5_points_of_clean_and_naive_far_below(predictor, mnist_test):
    images, labels = mnist_test[0][:600], mnist_test[1][:600]
    clean, pipe, naive, per_kind = pipeline_vs_clean(predictor, images, labels, seed=1)
    assert pipe >= clean - 0.015, (clean, pipe, per_kind)
    assert naive < clean - 0.5, (clean, naive)  # the pipeline is what makes photos work
    assert min(per_kind.values()) >= clean - 0.05, per_kind  # no kind of photo is left behind


def test_a_digit_under_a_shadowed_edge(predictor, mnist_test):
    """A digit near the top of a page that darkens steeply towards that edge: the background
    surface follows the shadow to the edge (lenet.preprocess.background_surface). When it
    stopped flat at the outer blocks' centres, 6 of these 60 pages were read right (the
    shadow band was taken for the digit)."""
    images, labels = mnist_test[0][:60], mnist_test[1][:60]
    got = []
    for im in images:
        page = np.zeros((240, 320), np.float32)
        page[6:90, 100:184] = np.clip(cv2.resize(im / 255.0, (84, 84)), 0, 1)
        got.append(predictor.predict_one(shadowed_png(page, "top")).digit)
    assert (np.array(got) == labels).mean() >= 0.95, got


@pytest.mark.slow
def test_photos_within_1_5_points_of_clean_1500(predictor, mnist_test):
    images, labels = mnist_test[0][3000:4500], mnist_test[1][3000:4500]
    clean, pipe, naive, per_kind = pipeline_vs_clean(predictor, images, labels, seed=7)
    assert pipe >= clean - 0.015, (clean, pipe, per_kind)
    assert naive < clean - 0.5


# ----------------------------------------------------------------------------- bundled weights


def readme_bundled_accuracy() -> float:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"bundled weights.*?MNIST test accuracy \*\*(\d+\.\d+)%\*\*", text, re.S | re.I)
    assert m, "README must state the bundled weights' test accuracy as **NN.NN%**"
    return float(m.group(1))


def test_bundled_weights_match_readme(predictor, mnist_dir):
    path = bundled_checkpoint()
    assert path.stat().st_size < 2_000_000  # three small networks, no optimizer state
    r = evaluate(path, data_dir=mnist_dir, device="cpu", plots=False)
    assert round(100 * r.accuracy, 2) == readme_bundled_accuracy()
    assert predictor.info["test_accuracy"] == pytest.approx(r.accuracy)
    assert r.accuracy >= 0.994  # the real-handwriting issue's target for clean MNIST


def test_bundled_weights_record_what_they_score_outside_mnist(predictor):
    """The recorded accuracy on synthetic photos and on the real dev sets meets the targets;
    the photos one is re-measured here (the dev sets by lenet eval in test_eval_images)."""
    from lenet.checkpoint import read_checkpoint

    m = read_checkpoint(bundled_checkpoint())["metrics"]
    assert m["pen_digits_accuracy"] >= 0.992 and m["optdigits_accuracy"] >= 0.970
    assert m["photos_accuracy"] >= m["photos_clean_accuracy"] - 0.01  # within 1 point of clean


@pytest.mark.slow
def test_bundled_photo_accuracy_is_what_the_file_records(predictor, mnist_test):
    from lenet.checkpoint import read_checkpoint

    m = read_checkpoint(bundled_checkpoint())["metrics"]
    images, labels = mnist_test[0][3000:5000], mnist_test[1][3000:5000]
    got = np.array(
        [-1 if r.digit is None else r.digit for r in predictor.predict(make_photos(images, seed=7))]
    )
    assert (got == labels).mean() == pytest.approx(m["photos_accuracy"], abs=0.001)
    clean = (predictor.probabilities(images).argmax(1) == labels).mean()
    assert clean == pytest.approx(m["photos_clean_accuracy"], abs=0.001)


def test_predictor_info(predictor):
    info = predictor.info
    assert info["model"] == predictor.name == "lenet5-ensemble"
    assert info["parameters"] == 185_118 and len(info["checkpoint_sha256"]) == 64
    assert info["bundled"] and Path(info["path"]).name == "lenet5-ensemble.pt"


# ----------------------------------------------------------------------------- the API


def test_predict_many_kinds_of_input_and_errors_per_input(predictor, mnist_test, tmp_path):
    digit = 255 - mnist_test[0][0]  # a "7", dark on white
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    f = tmp_path / "seven.png"
    f.write_bytes(buf.getvalue())
    blank = np.full((200, 200), 240, np.uint8)
    inputs = [f, str(f), buf.getvalue(), Image.fromarray(digit), digit, b"nope", blank]
    res = predictor.predict(inputs, top_k=2)
    assert [r.digit for r in res[:5]] == [7] * 5
    assert res[0].source == str(f) and res[2].source.endswith("bytes>")
    assert res[5].error and "not an image" in res[5].error and res[5].digit is None
    assert res[6].digit is None and res[6].reason == "no digit found" and res[6].error is None
    d = res[0].to_dict()
    assert set(d) == {"path", "digit", "confidence", "probabilities", "top_k"}
    assert len(d["probabilities"]) == 10 and abs(sum(d["probabilities"]) - 1) < 1e-4
    assert d["top_k"][0] == [7, d["confidence"]] and len(d["top_k"]) == 2
    json.dumps(d)
    assert res[5].to_dict() == {"path": "<4 bytes>", "error": res[5].error}
    assert res[6].to_dict()["reason"] == "no digit found"
    img = res[0].to_dict(include_image=True)["preprocessed_png_base64"]
    assert isinstance(img, str) and len(img) > 50
    assert res[0].preprocessed.shape == (28, 28) and res[0].preprocessed.dtype == np.uint8


def test_worker_processes_keep_order_and_errors_per_input(mnist_test, tmp_path):
    """Inputs preprocessed by 2 worker processes, a few per task: the same answers, in the same
    order, as in one process; bad files still get their own error; a stream reads ahead only
    its window."""
    from lenet.parallel import PreprocessPool

    images, labels = mnist_test[0][:40], mnist_test[1][:40]
    files = []
    for i, a in enumerate(images):
        f = tmp_path / f"{i:02d}.png"
        Image.fromarray(255 - a).save(f)  # dark on white, as a scan
        files.append(f)
    files[5].write_bytes(b"nope")
    Image.fromarray(np.full((60, 60), 240, np.uint8)).save(files[17])
    inputs = [*files[:30], images[30], *files[31:]]  # an array among the files: done here
    serial = Predictor(batch_size=3).predict(inputs)
    pooled = Predictor(workers=2, batch_size=3)
    parallel = pooled.predict(inputs)
    pooled.close()
    assert [r.to_dict() for r in parallel] == [r.to_dict() for r in serial]
    assert parallel[5].error and parallel[17].reason == "no digit found"
    ok = [i for i in range(40) if i not in (5, 17)]
    assert np.mean([parallel[i].digit == labels[i] for i in ok]) > 0.9
    pulled = []

    def lazy():
        for i, f in enumerate(files):
            pulled.append(i)
            yield f

    with PreprocessPool(2) as pool:
        stream = pool.imap(lazy(), chunk=4, window=2)
        first_source, (image, reason, error) = next(stream)
        assert first_source == files[0] and image.shape == (28, 28) and error is None
        assert len(pulled) <= 3 * 4  # the window (2 chunks), and the chunk being refilled
        stream.cancel()


def test_min_confidence_says_unsure(predictor, mnist_test):
    one = predictor.predict_one(mnist_test[0][0])
    assert isinstance(one, Prediction) and one.digit == 7
    unsure = predictor.predict_one(mnist_test[0][0], min_confidence=1.0)  # above any answer
    assert unsure.digit is None and unsure.reason == "unsure"
    assert unsure.confidence == one.confidence and unsure.top_k[0][0] == 7


def test_predict_checkpoint_of_the_note_format(tmp_path, mnist_test):
    import torch

    from lenet.models import create_model

    torch.manual_seed(0)
    sd = create_model("lenet5").state_dict()
    torch.save(sd, tmp_path / "best_model2.0.pth")
    p = Predictor(tmp_path / "best_model2.0.pth")
    assert p.name == "lenet5" and p.info["test_accuracy"] is None
    assert p.predict_one(mnist_test[0][0]).confidence is not None


# ----------------------------------------------------------------------------- rejection


def test_rejection_curve_by_hand():
    conf = np.array([0.9, 0.6, 0.8, 0.7])
    correct = np.array([True, True, True, False])
    r = rejection_curve(conf, correct)
    # Most confident first: 0.9 ok, 0.8 ok, 0.7 wrong, 0.6 ok.
    assert r["error_at"]["0.0"] == 0.25  # answer all: 1 wrong of 4
    assert r["curve"]["rejected"] == [0.75, 0.5, 0.25, 0.0]  # answering the 1, 2, 3, 4 best
    assert r["curve"]["error"] == pytest.approx([0, 0, 1 / 3, 1 / 4])
    assert r["rejection_for"]["0.005"] == {"rejected": 0.5, "threshold": 0.8}


def test_eval_reports_rejection(mnist_dir, tmp_path):
    where = ["--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    p = run_cli("eval", str(bundled_checkpoint()), "--json", *where, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    rej = json.loads(p.stdout)["rejection"]
    assert set(rej["error_at"]) == {"0.0", "0.01", "0.05", "0.1"}
    errs = list(rej["error_at"].values())
    assert errs == sorted(errs, reverse=True) and errs[0] > errs[-1]
    assert rej["rejection_for"]["0.001"]["rejected"] >= rej["rejection_for"]["0.005"]["rejected"]
    assert (tmp_path / "rejection.png").is_file()


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def photo_folder(tmp_path, mnist_test) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    images, labels = mnist_test[0][:6], mnist_test[1][:6]
    for i, data in enumerate(make_photos(images, seed=5)):
        ext = "jpg" if data[:2] == b"\xff\xd8" else "png"
        (d / ("sub" if i % 2 else ".") / f"img{i}_{labels[i]}.{ext}").write_bytes(data)
    (d / "notes.txt").write_text("not an image, and not picked from a folder")
    return d


def test_cli_predict_folder_json_and_preprocessed(photo_folder, tmp_path):
    out = tmp_path / "seen"
    p = run_cli("predict", str(photo_folder), "--format", "json", "--save-preprocessed", str(out))
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert r["digit"] == int(Path(r["path"]).stem.split("_")[1]), r
        assert set(r) == {"path", "digit", "confidence", "probabilities", "top_k"}
    saved = sorted(out.glob("*.png"))
    assert len(saved) == 6 and Image.open(saved[0]).size == (28, 28)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_predict_bad_inputs_each_get_a_line(photo_folder, tmp_path, workers):
    (photo_folder / "zero.png").write_bytes(b"")
    (photo_folder / "text.png").write_text("hello")
    good = next(photo_folder.glob("*.png"))
    (photo_folder / "cut.png").write_bytes(good.read_bytes()[:200])
    Image.new("RGB", (300, 200), (235, 235, 230)).save(photo_folder / "blank.png")
    missing = str(tmp_path / "missing.jpg")
    p = run_cli("predict", str(photo_folder), missing, "--format", "json", "--workers", workers)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, p.stdout.splitlines())}
    assert len(rows) == 11
    assert rows["zero.png"]["error"] == "empty file (0 bytes)"
    assert "not an image" in rows["text.png"]["error"]
    assert "truncated" in rows["cut.png"]["error"]
    assert rows["missing.jpg"]["error"] == "no such file"
    assert rows["blank.png"]["digit"] is None and rows["blank.png"]["reason"] == "no digit found"
    assert "4 of 11 inputs could not be used" in p.stderr


def test_cli_predict_glob_stdin_table_csv(photo_folder):
    p = run_cli("predict", str(photo_folder / "**" / "*.jpg"), "--format", "csv", "--top-k", "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("path,digit,confidence,top_k,reason,error,p0")
    assert len(lines) == 1 + len(list(photo_folder.rglob("*.jpg")))

    import subprocess
    import sys

    png = next(photo_folder.glob("*.png"))
    p = subprocess.run(
        [sys.executable, "-m", "lenet", "predict", "-", "--min-confidence", "0.5"],
        input=png.read_bytes(),
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr
    row = p.stdout.decode().splitlines()[1]
    assert row.startswith("-") and f" {png.stem.split('_')[1]} " in row and "%" in row


def test_cli_predict_flag_errors(tmp_path):
    assert_one_line_error(run_cli("predict", "x.png", "--top-k", "0"), "--top-k")
    assert_one_line_error(run_cli("predict", "x.png", "--min-confidence", "2"), "--min-confidence")
    assert_one_line_error(run_cli("predict", str(tmp_path)), "no image files found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert_one_line_error(run_cli("predict", "x.png", "--model", str(bad)), "not a loadable")


def test_one_file_like_is_one_input(predictor, mnist_test):
    images, labels = mnist_test
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    buf.seek(0)
    res = predictor.predict(buf)  # iterating a file-like would give its lines: must not
    assert len(res) == 1 and res[0].digit == labels[0]


def test_onnx_backend_agrees_with_torch(predictor, mnist_test):
    images, _ = mnist_test
    onnx = Predictor(backend="onnx")
    assert onnx.info["backend"] == "onnx"
    p_torch = predictor.probabilities(images[:500])
    p_onnx = onnx.probabilities(images[:500])
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    assert (p_torch.argmax(1) == p_onnx.argmax(1)).all()
