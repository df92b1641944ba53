"""Writers MNIST never saw: the distortions that train for them (stroke width, aspect, low
resolution), the committee of lenet5-relu networks, and hairline strokes in the preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from lenet.augment import DEFAULT_PARAMS, distort, low_resolution, stroke_width
from lenet.checkpoint import load_model, make_payload, save_checkpoint
from lenet.config import AUGMENT_PARTS, augment_parts, make_config
from lenet.errors import LenetError
from lenet.models import count_parameters, create_model
from lenet.models.ensemble import LeNet5Ensemble, stack
from lenet.normalization import MNIST_STATS, normalize
from photos import hairline_png, thin


@pytest.fixture(scope="module")
def mnist_test_digits(mnist_dir):
    from lenet.data import load_split

    s = load_split("test", mnist_dir)
    return s.images.numpy(), s.labels.numpy()


# ---------------------------------------------------------------- --augment parts


def test_augment_parts_parse_and_refuse_in_one_line():
    assert augment_parts("none") == frozenset()
    assert augment_parts("both") == {"affine", "elastic"}
    assert augment_parts("affine+stroke+lowres") == {"affine", "stroke", "lowres"}
    for bad in ("wobble", "affine+affine", "affine+", "Affine", ""):
        with pytest.raises(LenetError, match="--augment must be"):
            make_config(augment=bad)
    assert make_config(augment="aspect+lowres").augment == "aspect+lowres"


def _digits(n: int = 16) -> torch.Tensor:
    """(n, 1, 28, 28) MNIST-normalized bars 3 px wide: ink is the high value."""
    imgs = torch.zeros(n, 28, 28, dtype=torch.uint8)
    imgs[:, 6:22, 12:15] = 255
    return normalize(imgs, MNIST_STATS)


@pytest.mark.parametrize("part", AUGMENT_PARTS)
def test_each_part_is_deterministic_keeps_range_and_background(part):
    x, ones = _digits(), torch.ones(16, dtype=torch.long)
    a = distort(x, part, torch.Generator().manual_seed(1), labels=ones)
    b = distort(x, part, torch.Generator().manual_seed(1), labels=ones)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
    assert a.min() >= x.min() - 1e-5 and a.max() <= x.max() + 1e-5
    assert (a[:, :, 0, :] - x.min()).abs().max() < 1e-4  # the top row stays background


def test_stroke_width_thickens_and_thins_within_its_range():
    x = _digits(400)
    y = stroke_width(x, torch.Generator().manual_seed(0), DEFAULT_PARAMS)
    ink = lambda t: (t - x.min()).sum((1, 2, 3))  # noqa: E731
    ratio = ink(y) / ink(x)
    # thinner (at most 0.6 of an erosion) and thicker (up to 1.5 dilations of a 3 px bar)
    assert ratio.min() < 0.8 and ratio.max() > 1.7 and ratio.min() > 0.3 and ratio.max() < 2.5


def test_low_resolution_blurs_about_half_and_keeps_the_rest_exactly():
    x = _digits(200)
    y = low_resolution(x, torch.Generator().manual_seed(0), DEFAULT_PARAMS)
    same = (y == x).flatten(1).all(1)
    assert 0.35 < same.float().mean() < 0.65
    # the blurred ones keep their ink roughly (area down, bilinear up)
    ink = lambda t: (t - x.min()).sum((1, 2, 3))  # noqa: E731
    r = ink(y[~same]) / ink(x[~same])
    assert ((r > 0.6) & (r < 1.4)).all(), r


def test_aspect_changes_width_not_height():
    x = _digits(64)
    y = distort(x, "aspect", torch.Generator().manual_seed(0))
    inked = lambda t, dim: ((t[:, 0] - x.min()) > 0.5).any(dim).sum(1).float()  # noqa: E731
    widths, heights = inked(y, 1), inked(y, 2)
    assert widths.std() > 0.5 and widths.max() > 3.5 and widths.min() < 2.5
    assert (heights - 16).abs().max() <= 1


def test_continental_flags_ones_and_crosses_sevens_only():
    x = _digits(60)
    labels = torch.tensor([1, 7, 3] * 20)
    y = distort(x, "continental", torch.Generator().manual_seed(0), labels=labels)
    changed = (y != x).flatten(1).any(1)
    assert not changed[labels == 3].any()  # other digits untouched
    for d in (1, 7):
        assert 0.25 < changed[labels == d].float().mean() < 0.75  # about half of them
    ink = lambda t: (t[:, 0] - x.min() > 0.5).sum((1, 2))  # noqa: E731
    assert (ink(y)[changed] > ink(x)[changed] + 3).all()  # a stroke was added, not removed
    # a 1's flag hangs to the left of the stem's top; a 7's bar crosses the stem
    one = changed & (labels == 1)
    assert ((y - x)[one][:, 0, :, :12].sum((1, 2)) > 0).all()
    with pytest.raises(ValueError, match="labels"):
        distort(x, "continental", torch.Generator())
    with pytest.raises(LenetError, match="MNIST only"):
        make_config(augment="affine+continental", dataset="fashion-mnist")


def test_train_with_new_parts_reaches_the_run_and_bad_value_is_one_line(mnist_dir, tmp_path):
    assert_one_line_error(run_cli("train", "--augment", "affine+wobble"), "--augment must be")
    flags = (
        "--augment affine+stroke+aspect+lowres+continental --limit 256 --epochs 1 --val-size 100"
    )
    p = run_cli(
        "train", *flags.split(), "--threads", "1", "--data-dir", str(mnist_dir),
        "--out", str(tmp_path), "--name", "a",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert load_model(tmp_path / "a" / "best.pt").checkpoint["train_config"]["augment"] == (
        "affine+stroke+aspect+lowres+continental"
    )


# ---------------------------------------------------------------- the committee


def test_ensemble_is_the_mean_of_its_members_log_probabilities():
    torch.manual_seed(0)
    members = [create_model("lenet5-relu").eval() for _ in range(3)]
    ens = stack(members)
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        ref = torch.stack([torch.log_softmax(m(x), 1) for m in members]).mean(0)
        torch.testing.assert_close(ens(x), ref)
    assert count_parameters(ens) == 3 * count_parameters(members[0])
    assert count_parameters(create_model("lenet5-ensemble")) == 185_118  # 3 x 61,706
    with pytest.raises(ValueError):
        stack([create_model("lenet5")])
    from lenet.summary import summarize

    one, three = summarize(create_model("lenet5-relu")), summarize(create_model("lenet5-ensemble"))
    assert [r.name for r in three.layers] == [f"members.{i}" for i in range(3)]
    assert three.total_connections == 3 * one.total_connections


def test_ensemble_checkpoint_round_trip_and_predict(tmp_path):
    from lenet.predictor import Predictor

    torch.manual_seed(1)
    ens = stack([create_model("lenet5-relu").eval() for _ in range(2)])
    cfg = {"num_classes": 10, "members": 2}
    path = save_checkpoint(
        tmp_path / "ens.pt", make_payload(ens, "lenet5-ensemble", cfg, MNIST_STATS)
    )
    lm = load_model(path)
    assert isinstance(lm.model, LeNet5Ensemble) and len(lm.model.members) == 2
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), ens(x))
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 13:15] = 255
    p = Predictor(path).probabilities(img[None])
    assert p.shape == (1, 10) and abs(p.sum() - 1) < 1e-5


# ---------------------------------------------------------------- hairlines


def test_thin_gives_a_one_pixel_skeleton():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 15:22] = 1  # a 7 px bar
    sk = thin(mask)
    assert 20 <= sk.sum() <= 32 and sk[:, :15].sum() == 0 and sk[20].sum() == 1


def test_hairline_digits_are_thickened_to_mnist_width(mnist_test_digits):
    """A 1-px line drawing (a mouse, a fine pen) reads like MNIST once its strokes are
    redrawn: what the network sees has MNIST's ink, not a faint hairline."""
    from lenet import preprocess as pp
    from lenet.predictor import Predictor

    images, labels = mnist_test_digits
    images, labels = images[:150], labels[:150]
    pngs = [hairline_png(d, size=200) for d in images]
    seen = np.stack([pp.preprocess(b) for b in pngs])
    # ink per image close to MNIST's own (a hairline alone has a fraction of it)
    ratio = seen.astype(float).sum((1, 2)) / images.astype(float).sum((1, 2))
    assert 0.6 < np.median(ratio) < 1.6, np.median(ratio)
    pred = Predictor().probabilities(seen).argmax(1)
    assert (pred == labels).mean() >= 0.95


def test_normalize_stroke_leaves_mnist_like_strokes_alone(mnist_test_digits):
    import cv2

    from lenet.preprocess import normalize_stroke

    unchanged = 0
    for d in mnist_test_digits[0][:200]:
        big = cv2.resize(d, (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
        x, y, w, h = cv2.boundingRect(cv2.compare(big, 0, cv2.CMP_GT))
        patch = big[y : y + h, x : x + w]  # the digit's box, as preprocess() hands it over
        unchanged += normalize_stroke(patch) is patch
    assert unchanged >= 196, unchanged  # MNIST's thinnest 1-2% may be thickened a little


def test_stroke_measure_takes_slivers_opencv_would_call_a_scalar():
    """A piece of ink one pixel wide and up to 4 tall (a cut's sliver in ``lenet read``) once
    crashed cv2.compare, which reads such a column as a scalar; found by the piece generator."""
    from lenet.preprocess import normalize_stroke, stroke_width

    for shape in [(1, 1), (2, 1), (4, 1), (1, 4), (5, 1)]:
        patch = np.ones(shape, np.float32)
        assert stroke_width(patch) > 0
        assert normalize_stroke(patch).shape == shape
