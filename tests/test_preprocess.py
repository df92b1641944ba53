"""The MNIST-style preprocessing: each step against hand-computed answers, MNIST passes through,
and every kind of bad image gets one clear ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lenet.data import load_split
from lenet.errors import ImageError, NoDigitError
from lenet.preprocess import (
    MAX_PIXELS,
    box_blur,
    center_of_mass,
    find_digit,
    ink_is_dark,
    label_components,
    load_image,
    place_by_center_of_mass,
    preprocess,
    remove_background,
    scale_to_box,
    to_gray,
)


def png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG file that claims to be w x h (a decompression bomb's header)."""

    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def mnist_test(mnist_dir):
    s = load_split("test", mnist_dir)
    return s.images.numpy(), s.labels.numpy()


def paper_with_stroke(h: int = 120, w: int = 160) -> np.ndarray:
    """Light paper with a strong left-to-right lighting gradient and one dark vertical stroke."""
    g = np.tile(np.linspace(0.55, 0.95, w, dtype=np.float32), (h, 1))
    g[30:90, 70:76] = 0.1
    return g


# ----------------------------------------------------------------------------- steps


def test_ink_polarity_decision():
    assert ink_is_dark(paper_with_stroke())  # dark ink on (unevenly lit) paper: invert
    assert not ink_is_dark(1.0 - paper_with_stroke())  # chalk on a board: keep
    mnist_like = np.zeros((28, 28), np.float32)
    mnist_like[6:22, 12:15] = 1.0
    assert not ink_is_dark(mnist_like)
    # One bright speck on paper must not flip the decision (the blur averages it away).
    g = paper_with_stroke()
    g[5, 5] = 1.0
    assert ink_is_dark(g)


def test_to_gray_alpha_on_white_and_luma():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black ...
    rgba[2:8, 4:6] = (0, 0, 0, 255)  # ... with an opaque black stroke
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black: half-way to white
    g = to_gray(Image.fromarray(rgba, "RGBA"))
    assert g[5, 5] == pytest.approx(0.0) and g[9, 9] == pytest.approx(1.0)
    assert g[0, 0] == pytest.approx(1 - 128 / 255, abs=1e-3)
    red = to_gray(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert red[0, 0] == pytest.approx(0.299, abs=1e-3)  # ITU-R 601 luma


def test_light_strokes_on_transparent_canvas_survive():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[5:35, 18:22] = (255, 255, 255, 255)  # white stroke, invisible on white
    g = to_gray(Image.fromarray(rgba, "RGBA"))
    assert g[20, 20] == pytest.approx(1.0) and g[0, 0] == pytest.approx(0.0)


def test_large_image_reduced_by_area_average():
    g = to_gray(Image.new("L", (4000, 1000), 200), max_side=1000)
    assert g.shape == (250, 1000) and np.allclose(g, 200 / 255)


def test_background_gradient_is_not_ink():
    x = 1.0 - paper_with_stroke()  # light on dark, background 0.05 .. 0.45
    r = remove_background(x)
    assert r[60, 73] > 0.4  # the stroke stays
    stroke = np.zeros_like(r, bool)
    stroke[30:90, 70:76] = True
    # The background's 0.4 swing shrinks below 0.1 (a block's worth of slope at the edges).
    assert r[~stroke].max() < 0.1 and np.median(r[~stroke]) < 0.03


def test_box_blur_mean():
    a = np.zeros((5, 5), np.float32)
    a[2, 2] = 9.0
    assert box_blur(a, 3)[2, 2] == pytest.approx(1.0) and box_blur(a, 3)[0, 0] == 0


def test_label_components_8_connected():
    m = np.array(
        [[1, 0, 0, 1],
         [0, 1, 0, 1],
         [0, 0, 0, 0],
         [1, 1, 0, 1]], bool
    )  # fmt: skip
    lab = label_components(m)
    assert lab[0, 0] == lab[1, 1] != 0  # diagonal neighbours join
    assert lab[0, 3] == lab[1, 3] != lab[0, 0]
    assert lab[3, 0] == lab[3, 1] and len(set(lab[m].tolist())) == 4
    assert (lab[~m] == 0).all()


def test_find_digit_ignores_specks_and_border_lines():
    r = np.zeros((200, 200), np.float32)
    r[60:140, 90:100] = 1.0  # the digit: a "1"
    r[10, 10] = r[180, 30] = 1.0  # specks
    r[0:4, :] = 0.9  # a shadow along the top edge
    r[:, 196:] = 0.9  # and along the right edge
    d = find_digit(r)
    assert d.box == (60, 90, 140, 100)


def test_find_digit_keeps_a_detached_stroke():
    r = np.zeros((100, 100), np.float32)
    r[30:70, 40:44] = 1.0
    r[22:26, 40:60] = 1.0  # the detached bar of a "5"/"7", 4 px away
    assert find_digit(r).box == (22, 40, 70, 60)


def test_blank_pages_have_no_digit():
    rng = np.random.default_rng(0)
    noisy = np.clip(0.85 + rng.normal(0, 0.03, (300, 400)), 0, 1)
    gradient = np.tile(np.linspace(0.5, 0.95, 400), (300, 1))
    for page in (np.full((300, 400), 0.9), noisy, gradient):
        with pytest.raises(NoDigitError, match="no digit found"):
            preprocess((page * 255).astype(np.uint8))
    specks = np.full((300, 400), 230, np.uint8)
    specks[100, 100] = specks[200:202, 300:302] = 20
    with pytest.raises(NoDigitError):
        preprocess(specks)


def test_scale_to_box_keeps_aspect_ratio():
    assert scale_to_box(np.ones((40, 20))).shape == (20, 10)  # shrink
    assert scale_to_box(np.ones((10, 5))).shape == (20, 10)  # grow
    assert scale_to_box(np.ones((7, 30))).shape == (5, 20)  # 7 * 20/30 = 4.67 -> 5
    # Area averaging: a 2x2 checkerboard of 0/1 at 40x40 -> uniform 0.5 at 20x20 (anti-aliased).
    checker = np.indices((40, 40)).sum(0) % 2
    assert np.allclose(scale_to_box(checker.astype(np.float32)), 0.5)


def test_place_by_center_of_mass():
    assert center_of_mass(np.array([[1.0, 0, 0, 3.0]])) == (0.0, 2.25)
    out = place_by_center_of_mass(np.array([[1.0, 0, 0, 3.0]]))
    # column offset round(14 - 2.25) = 12: pixels at columns 12 and 15, row 14.
    assert out[14, 12] == 1.0 and out[14, 15] == 3.0 and out.sum() == 4.0
    assert center_of_mass(out) == (14.0, 14.25)
    # A 20x20 patch whose mass sits in a corner is clamped inside the 28x28 field.
    corner = np.zeros((20, 20), np.float32)
    corner[0, 0] = 1.0
    out = place_by_center_of_mass(corner)
    assert out.sum() == 1.0 and out[8, 8] == 1.0


def test_digit_scaled_into_20px_box_and_centred():
    page = np.full((300, 300), 240, np.uint8)
    page[40:200, 50:130] = 20  # a dark 160 x 80 block, off-centre
    out = preprocess(page)
    ys, xs = np.nonzero(out > 127)
    assert ys.max() - ys.min() + 1 == 20 and xs.max() - xs.min() + 1 == 10
    assert center_of_mass(out.astype(float)) == pytest.approx((14.0, 14.0), abs=0.5)


# ----------------------------------------------------------------------------- MNIST in, MNIST out


def test_mnist_passes_through_unchanged_in_effect(mnist_test):
    images, _ = mnist_test
    outs = np.stack([preprocess(im) for im in images[:300]])
    diff = np.abs(outs.astype(int) - images[:300].astype(int))
    assert diff.mean() < 1.0  # under one gray level on average
    # What moves is at most a 1 px re-centring or a slight contrast stretch, never the digit.
    assert (np.abs(outs.astype(float).mean((1, 2)) - images[:300].mean((1, 2))) < 8).all()


# ----------------------------------------------------------------------------- inputs


def test_sources_path_bytes_filelike_pil_array(tmp_path, mnist_test):
    digit = mnist_test[0][0]
    data = png(Image.fromarray(255 - digit))
    f = tmp_path / "d.png"
    f.write_bytes(data)
    ref = preprocess(f)
    for src in (str(f), data, io.BytesIO(data), Image.open(io.BytesIO(data)), 255 - digit):
        assert np.array_equal(preprocess(src), ref)
    # Arrays: float in [0, 1], bool, uint16, HxWx1 all work.
    assert np.array_equal(preprocess((255 - digit) / 255.0), ref)
    assert preprocess(digit > 127).shape == (28, 28)
    assert np.array_equal(preprocess((255 - digit).astype(np.uint16) * 257), ref)
    assert np.array_equal(preprocess((255 - digit)[:, :, None]), ref)


def test_exif_orientation_applied():
    im = Image.new("L", (60, 40), 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (40, 60)


@pytest.mark.parametrize(
    "mode", ["L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "1", "PA"]
)
def test_modes_give_the_same_answer(mode, mnist_test):
    digit = 255 - mnist_test[0][0]  # dark ink on white
    ref = preprocess(digit)
    if mode == "I;16":
        im = Image.fromarray(digit.astype(np.uint16) * 257)
    elif mode == "F":
        im = Image.fromarray(digit.astype(np.float32) / 255.0, mode="F")
    elif mode == "1":
        im = Image.fromarray(digit).point(lambda v: 255 if v > 127 else 0).convert("1")
    elif mode == "PA":
        im = Image.fromarray(digit).convert("RGBA").convert("PA")
    else:
        im = Image.fromarray(digit).convert(mode)
    out = preprocess(png(im) if mode in ("L", "P", "I;16", "RGBA", "LA", "1") else im)
    tol = 40 if mode in ("1", "CMYK") else 3  # binarized / colour-managed inputs differ a bit
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < tol


def test_cmyk_jpeg_and_palette_with_transparency(mnist_test):
    digit = 255 - mnist_test[0][0]
    buf = io.BytesIO()
    Image.fromarray(digit).convert("CMYK").save(buf, "JPEG")
    assert preprocess(buf.getvalue()).shape == (28, 28)
    p = Image.fromarray(digit).convert("P")
    p.info["transparency"] = int(p.getpixel((0, 0)))
    assert preprocess(png(p, transparency=p.info["transparency"])).shape == (28, 28)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda t: b"this is not an image at all", "not an image"),
        (lambda t: b"", "empty file (0 bytes)"),
        (lambda t: (t / "empty.png").write_bytes(b"") or t / "empty.png", "empty file (0 bytes)"),
        (lambda t: t / "missing.png", "no such file"),
        (lambda t: t, "is a folder"),
        (lambda t: png(Image.new("L", (200, 200), 128).rotate(45))[:300], "truncated or corrupt"),
        (lambda t: png_header_only(100_000, 100_000), "decompression bomb"),
        (lambda t: png_header_only(9000, 9000), "image too large: 9000x9000"),
        (lambda t: png(Image.new("L", (1, 1))), "image too small: 1x1"),
        (lambda t: np.zeros((28, 28, 2), np.uint8), "not an image"),
        (lambda t: np.full((28, 28), np.nan), "NaN"),
        (lambda t: 12345, "cannot read an image from a int"),
    ],
)
def test_bad_images_are_one_clear_error(tmp_path, make, needle):
    src = make(tmp_path)
    with pytest.raises(ImageError) as e:
        preprocess(src)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_pixel_cap_is_below_pillows_bomb_limit():
    assert MAX_PIXELS <= Image.MAX_IMAGE_PIXELS  # Pillow's limit stays in force as well


def test_huge_photo_is_handled(mnist_test):
    # 8000 x 8000 (the largest accepted): decoded at reduced scale and still read correctly.
    page = np.full((8000, 8000), 235, np.uint8)
    page[3000:3224, 2000:2224] = np.kron(255 - mnist_test[0][0], np.ones((8, 8), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, "JPEG", quality=85)
    out = preprocess(buf.getvalue())
    ref = preprocess(255 - mnist_test[0][0])
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 12
