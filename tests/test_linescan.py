"""The reader's line network (the SDNN): its shapes, the line image, the span scores against
brute force, the bundled file, and how the reader and `lenet read` load it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from lenet.linescan import (
    PAD,
    frames_of,
    line_image,
    repeat_correction,
    span_scores,
    span_scores_and_ends,
)
from lenet.models.sdnn import BLANK, LINE_HEIGHT, ROWS, SDNN, STRIDE, SDNNConfig


def test_sdnn_shapes():
    """(N, 1, 32, W) -> (N, 11, W / STRIDE): one frame every STRIDE (2) columns."""
    model = SDNN().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, ROWS, 96))
    assert out.shape == (2, 11, 96 // STRIDE)


def test_sdnn_stride_four():
    """stride=4 (LeNet's 2x2 second pool) gives half the frames and maps positions to frames
    half as finely; other strides are refused."""
    model = SDNN(SDNNConfig(stride=4)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, ROWS, 96))
    assert out.shape == (2, 11, 24)
    cols = np.array([PAD + 0.5, PAD + 8.5])  # working x with x0 = 0, f = 1
    np.testing.assert_array_equal(frames_of(cols - PAD, 0.0, 1.0, stride=2), [4, 8])
    np.testing.assert_array_equal(frames_of(cols - PAD, 0.0, 1.0, stride=4), [2, 4])
    with pytest.raises(ValueError, match="stride"):
        SDNN(SDNNConfig(stride=3))


def _brute(logp: np.ndarray) -> np.ndarray:
    """Column 0: log P(all blank); d + 1: log P(the frames collapse to exactly d), by
    enumerating every labelling of the frames (CTC: merge runs, drop blanks)."""
    t = len(logp)
    total = np.full(11, -np.inf)
    for path in itertools.product(range(11), repeat=t):
        merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        labels = [c for c in merged if c != BLANK]
        lp = sum(logp[i, c] for i, c in enumerate(path))
        if not labels:
            total[0] = np.logaddexp(total[0], lp)
        elif len(labels) == 1:
            total[labels[0]] = np.logaddexp(total[labels[0]], lp)
    return total


def test_span_scores_match_brute_force():
    """The 3-state recursion against enumerating all 11^T frame labellings (T up to 4),
    for spans of different lengths scored together."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 11))
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    spans = np.array([[0, 1], [1, 4], [2, 6], [5, 6]])
    got = span_scores(logp, spans)
    for (a, b), row in zip(spans, got, strict=True):
        if b - a <= 4:
            np.testing.assert_allclose(row, _brute(logp[a:b]), rtol=1e-9)
    # Every labelling of the frames is all-blank, one digit, or more: the first two are a part.
    assert np.all(np.logaddexp.reduce(got, axis=1) <= 1e-9)


def _three_class_logp(rng, t: int, d: int, other: int) -> np.ndarray:
    """(t, 11) frame log probabilities with mass on blank, ``d`` and ``other`` only (the rest
    e^-60), so enumerating 3^t labellings is exact to ~1e-20."""
    logp = np.full((t, 11), -60.0)
    cls = [BLANK, d + 1, other + 1]
    logits = rng.normal(0, 1.5, (t, 3))
    logp[:, cls] = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return logp, cls


def test_span_ends_match_brute_force():
    """P(exactly d, last frame blank) and P(exactly d, first frame blank) against enumerating
    the labellings of the span."""
    rng = np.random.default_rng(1)
    d = 2
    logp, cls = _three_class_logp(rng, 5, d, other=7)
    spans = np.array([[0, 5], [1, 4], [2, 3]])
    full, ends = span_scores_and_ends(logp, spans)
    np.testing.assert_allclose(full, span_scores(logp, spans))
    for (a, b), row, end in zip(spans, full, ends, strict=True):
        want = np.full(3, -np.inf)  # any, last blank, first blank
        for path in itertools.product(cls, repeat=b - a):
            merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
            if [c for c in merged if c != BLANK] != [d + 1]:
                continue
            lp = sum(logp[a + i, c] for i, c in enumerate(path))
            want[0] = np.logaddexp(want[0], lp)
            if path[-1] == BLANK:
                want[1] = np.logaddexp(want[1], lp)
            if path[0] == BLANK:
                want[2] = np.logaddexp(want[2], lp)
        np.testing.assert_allclose([row[d + 1], *end[:, d]], want, rtol=1e-9)


def test_repeat_correction_is_the_two_runs_probability():
    """Two neighbouring spans both read as d: the spans' scores plus the correction are the
    log probability of the frames of both together collapsing to exactly "d d" with one run
    in each span (a run of d across the cut would collapse to one d)."""
    rng = np.random.default_rng(2)
    d = 5
    for _ in range(3):
        logp, cls = _three_class_logp(rng, 6, d, other=3)
        spans = np.array([[0, 3], [3, 6]])
        full, ends = span_scores_and_ends(logp, spans)
        want = -np.inf
        for path in itertools.product(cls, repeat=6):
            halves = path[:3], path[3:]
            ok = all(
                [c for c in [h[i] for i in range(3) if i == 0 or h[i] != h[i - 1]] if c != BLANK]
                == [d + 1]
                for h in halves
            )
            if ok and not (path[2] == d + 1 and path[3] == d + 1):
                want = np.logaddexp(want, sum(logp[i, c] for i, c in enumerate(path)))
        corr = repeat_correction(full[0, d + 1], ends[0, :, d], full[1, d + 1], ends[1, :, d])
        assert corr <= 0
        assert full[0, d + 1] + full[1, d + 1] + corr == pytest.approx(want, rel=1e-9)


def test_line_image_scales_the_line_to_mnist_height():
    """Two 60 px tall groups become a 32-row image whose ink is LINE_HEIGHT rows tall, its
    width a multiple of the frame stride; frames_of maps the groups' x to frames in order."""
    from lenet.reader import Group

    ink = np.ones((60, 20), np.float32)
    groups = [Group((10, 5, 30, 65), ink), Group((50, 5, 70, 65), ink)]
    img, x0, f = line_image(groups, 60.0)
    assert img.shape[0] == ROWS and img.shape[1] % STRIDE == 0
    rows = np.flatnonzero(img.max(axis=1) > 0.5)
    assert rows.max() - rows.min() + 1 == LINE_HEIGHT
    cols = np.flatnonzero(img.max(axis=0) > 0.5)
    assert cols.min() == PAD and x0 == 10 and f == pytest.approx(LINE_HEIGHT / 60)
    t = frames_of(np.array([10, 30, 50, 70]), x0, f)
    assert list(t) == sorted(t) and t[0] == PAD // STRIDE
    blank, _, _ = line_image([], 0.0)
    assert blank.shape[0] == ROWS and not blank.any()
    # A dash is drawn (it may be a 5's bar) but does not move the line's middle.
    dash = Group((32, 60, 48, 64), np.ones((4, 16), np.float32), dash=True)
    with_dash, _, _ = line_image([*groups, dash], 60.0)
    assert with_dash[:, : img.shape[1]].sum() > img.sum()
    assert np.flatnonzero(with_dash.max(axis=1) > 0.5).min() == rows.min()


def test_sweep_cuts_fall_between_digit_centres():
    """Runs of digit frames 2-3 and 6 (two digits, no blank between 6 and 7's run) -> cuts
    halfway between run centres, mapped back to working pixels."""
    from lenet.linescan import Scan, sweep_cuts

    best = [BLANK, BLANK, 4, 4, BLANK, BLANK, 8, 2, BLANK]  # frames' best class
    logp = np.full((len(best), 11), -5.0)
    logp[np.arange(len(best)), best] = -0.01
    x0, f = 100.0, 0.5
    cuts = sweep_cuts(Scan(logp, x0, f))
    centres = [2.5, 6.0, 7.0]  # frames
    want = [
        (STRIDE * (a + b) / 2 + (STRIDE - 1) / 2 - PAD) / f + x0
        for a, b in zip(centres[:-1], centres[1:], strict=True)
    ]
    assert cuts == pytest.approx(want)
    assert sweep_cuts(Scan(np.zeros((0, 11)), x0, f)) == []


def test_bundled_line_network_records_its_recipe():
    from lenet.checkpoint import read_checkpoint
    from lenet.linescan import bundled_line_net

    net = bundled_line_net()
    m = read_checkpoint(net.path)["metrics"]
    assert m["recipe"].startswith("python scripts/train_line_net.py")
    assert m["test_lines"]["lines"] == 900 and m["test_lines"]["string_accuracy"] >= 0.8


@pytest.mark.slow
def test_line_network_figures_are_what_it_scores(mnist_dir):
    """Re-measure the held-out line accuracy the bundled file records (deterministic)."""
    from lenet.bench.lines import line_accuracy, line_set
    from lenet.checkpoint import read_checkpoint
    from lenet.data import load_split
    from lenet.linescan import bundled_line_net

    torch.set_num_threads(1)
    net = bundled_line_net()
    test = load_split("test", mnist_dir)
    x, y, _ = line_set(test.images.numpy(), test.labels.numpy(), 300, 2)
    got = line_accuracy(net.model, x, y)
    want = read_checkpoint(net.path)["metrics"]["test_lines"]
    assert got["lines"] == want["lines"]
    assert got["string_accuracy"] == pytest.approx(want["string_accuracy"], abs=2e-3)


def test_reader_with_and_without_the_line_network(mnist_dir):
    """The line network changes scores, not the interface: both readers read a clean string,
    and the one without it has no sweep scores on its graph."""
    from lenet.bench.strings import compose_strip
    from lenet.data import load_split
    from lenet.reader import Reader

    torch.set_num_threads(1)
    test = load_split("test", mnist_dir)
    images, labels = test.images.numpy(), test.labels.numpy()
    idx = [3, 2, 1, 18, 4]
    strip, _ = compose_strip([images[i] for i in idx], [8] * 4, np.random.default_rng(0))
    img = (255 - np.clip(strip * 255, 0, 255)).astype(np.uint8)
    img = np.kron(img, np.ones((3, 3), np.uint8))
    text = "".join(str(int(labels[i])) for i in idx)
    assert Reader().read_one(img).text == text
    assert Reader(line_net=False).read_one(img).text == text


def test_cli_line_network_errors(tmp_path):
    """A missing file, a digit model given as the line network, and both flags: one line each."""
    from lenet.predictor import bundled_checkpoint

    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (64, 32), 255).save(png)
    r = run_cli("read", str(png), "--line-net", str(tmp_path / "none.pt"))
    assert_one_line_error(r)
    assert "none.pt" in r.stderr
    r = run_cli("read", str(png), "--line-net", str(bundled_checkpoint()))
    assert_one_line_error(r)
    assert "line network" in r.stderr
    r = run_cli("read", str(png), "--line-net", str(bundled_checkpoint()), "--no-line-net")
    assert_one_line_error(r)


def test_line_network_files_of_either_stride_load(tmp_path):
    """A stride-4 file written before the stride was a setting (no "stride" in its config)
    loads as stride 4 and scans 4 columns per frame; the bundled file is stride 2."""
    from lenet.checkpoint import make_payload, save_checkpoint
    from lenet.linescan import MODEL_NAME, LineNet, bundled_line_net
    from lenet.normalization import MNIST_STATS

    cfg = SDNNConfig(stride=4).to_dict()
    del cfg["stride"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, make_payload(SDNN(SDNNConfig(stride=4)), MODEL_NAME, cfg, MNIST_STATS))
    old = LineNet(path)
    assert old.model.cfg.stride == 4
    assert old.frame_logp(np.zeros((ROWS, 96), np.float32)).shape == (24, 11)
    assert bundled_line_net().model.cfg.stride == STRIDE == 2
