"""The MNIST-style preprocessing: each step against hand-computed answers, MNIST passes through,
and every kind of bad image gets one clear ImageError."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from lenet.data import load_split
from lenet.errors import ImageError, NoDigitError
from lenet.preprocess import (
    MAX_PIXELS,
    background_surface,
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


def test_background_surface_reaches_the_edges():
    """A steep gradient with a vignette, no ink: the surface keeps following it to the edges
    (linear extrapolation past the outer blocks' centres). Clamped there, as it was, the edge
    rows were left 0.09 above it, and near a digit that band became ink (test_read)."""
    yy, xx = np.mgrid[0:225, 0:337].astype(np.float32)
    x = 0.3 * (1 - yy / 225) + 0.1 * (xx / 337 - 0.5) ** 2 * 4
    err = np.abs(background_surface(x) - x)
    assert err.max() < 0.035 and err[:20].mean() < 0.015, (err.max(), err[:20].mean())


@pytest.mark.parametrize("kind", ["spread", "mostly 0", "mostly 1", "masked"])
def test_histogram_quantiles_match_numpy(kind):
    """The histogram quantiles (with their shortcuts for one dominant bin) against np.quantile,
    on 8-bit levels, where they are exact."""
    from lenet.preprocess import _quantiles

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (90, 70)).astype(np.float32) / 255
    mask = None
    if kind == "mostly 0":
        a[rng.random(a.shape) < 0.8] = 0.0
    elif kind == "mostly 1":
        a[rng.random(a.shape) < 0.8] = 1.0
    elif kind == "masked":
        mask = (rng.random(a.shape) < 0.3).astype(np.uint8) * 255
    qs = (0.01, 0.25, 0.5, 0.9, 0.999)
    inside = a if mask is None else a[mask > 0]
    got = _quantiles(a, qs, mask=mask)
    assert np.allclose(got, np.quantile(inside, qs), atol=0.5 / 255), (got, kind)


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


# ----------------------------------------------------------------------------- hostile inputs


def gif_bomb(w: int = 4000, h: int = 4000) -> bytes:
    """A valid 35-byte GIF: a w x h canvas (2-colour table) holding one 1x1 frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\xff\xff\xff\x00\x00\x00"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    lzw = b"\x02\x02\x44\x01\x00"  # min code size 2; one 2-byte block: CLEAR, 0, END
    return screen + frame + lzw + b";"


def png16(w: int, h: int) -> bytes:
    """A 16-bit grayscale PNG of w x h mid-gray, compressed row by row (a few KB per 1000 rows)."""

    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))

    z = zlib.compressobj(9)
    row = b"\0" + b"\x80\x00" * w
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def many_page_tiff(first: np.ndarray, pages: int) -> bytes:
    """A TIFF whose first page is ``first`` (uint8 HxW) followed by ``pages - 1`` IFDs pointing at
    the same pixels: ~120 bytes a page."""
    h, w = first.shape
    data = first.tobytes()
    head = 8
    ifd_size = 2 + 9 * 12 + 4
    out = [b"II*\x00", struct.pack("<I", head + len(data)), data]
    for i in range(pages):
        nxt = head + len(data) + (i + 1) * ifd_size if i + 1 < pages else 0
        entries = [
            (256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, head), (277, 3, 1, 1), (278, 3, 1, h), (279, 4, 1, len(data)),
        ]  # fmt: skip
        ifd = struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            ifd += struct.pack("<HHI", tag, typ, count) + struct.pack("<I", value)
        out.append(ifd + struct.pack("<I", nxt))
    return b"".join(out)


def encoded(a: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def test_size_is_checked_from_the_header_with_the_callers_cap():
    header = png_header_only(8000, 8000)  # no pixel data at all: decoding would fail differently
    with pytest.raises(ImageError, match=r"image too large: 8000x8000 pixels \(limit 1,000,000"):
        preprocess(header, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="image too large: 4000x4000"):
        load_image(gif_bomb(), max_pixels=2_000_000)
    assert load_image(png(Image.new("L", (100, 100))), max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP", "PPM", "GIF", "JPEG"])
def test_allowed_formats_give_the_same_answer(fmt, mnist_test):
    digit = 255 - mnist_test[0][0]
    ref = preprocess(png(Image.fromarray(digit)))
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    out = preprocess(encoded(digit, fmt, **kw))
    # JPEG rings around a 28x28 digit's strokes (18 gray levels on average here, 22 before OpenCV)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < (25 if fmt == "JPEG" else 1)


def test_other_formats_are_refused_without_being_parsed(monkeypatch):
    from PIL import EpsImagePlugin, IcoImagePlugin

    def parsed(self):
        raise AssertionError("a refused format's plugin parsed the bytes")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", parsed)
    monkeypatch.setattr(IcoImagePlugin.IcoImageFile, "_open", parsed)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n%%EOF\n"
    buf = io.BytesIO()
    Image.new("L", (32, 32), 255).save(buf, "ICO")
    pdf_with_a_jpeg = b"%PDF-1.4\n" + encoded(np.full((32, 32), 200, np.uint8), "JPEG")
    cases = [
        (eps, "unsupported image format (EPS)"),
        (buf.getvalue(), "unsupported image format (ICO)"),
        (pdf_with_a_jpeg, "unsupported image format (PDF)"),
        (encoded(np.full((32, 32), 200, np.uint8), "TGA"), "unsupported image format"),
    ]
    for data, needle in cases:
        with pytest.raises(ImageError) as e:
            preprocess(data)
        msg = str(e.value)
        assert needle in msg and "send PNG, JPEG, GIF, BMP, TIFF, WebP or PNM" in msg, msg
        assert "\n" not in msg


def test_polyglots_are_read_as_their_first_format_only(mnist_test):
    digit = 255 - mnist_test[0][0]
    clean = png(Image.fromarray(digit))
    # A PNG with an archive / a script glued to its end is the PNG; the tail is never parsed.
    tail = b"PK\x03\x04" + b"\0" * 26 + b"<script>alert(1)</script>"
    assert np.array_equal(preprocess(clean + tail), preprocess(clean))
    # A "GIF" that is really a script: a one-line error.
    with pytest.raises(ImageError) as e:
        preprocess(b"GIF89a/*\x00\x00*/=1;alert(1)//" + b"\0" * 40)
    assert "\n" not in str(e.value)


def test_many_page_tiff_reads_the_first_page_only(monkeypatch, mnist_test):
    from PIL import GifImagePlugin, TiffImagePlugin

    def walked(self):
        raise AssertionError("n_frames walks every page")

    for cls in (TiffImagePlugin.TiffImageFile, GifImagePlugin.GifImageFile):
        monkeypatch.setattr(cls, "n_frames", property(walked))
    digit = 255 - mnist_test[0][0]
    data = many_page_tiff(digit, pages=3000)
    assert len(data) < 400_000
    assert np.array_equal(preprocess(data), preprocess(digit))
    frames = [Image.fromarray(digit)] + [Image.new("L", (28, 28), 255)] * 3
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.abs(preprocess(buf.getvalue()).astype(int) - preprocess(digit)).mean() < 1


@pytest.mark.parametrize(
    "make",
    [
        lambda d: encoded(d, "JPEG")[:400],
        lambda d: encoded(d, "GIF")[:60],
        lambda d: encoded(d, "TIFF")[:300],
        lambda d: encoded(d, "WEBP")[:40],
        lambda d: encoded(d, "BMP")[:100],
        lambda d: b"\x89PNG\r\n\x1a\n",
        lambda d: b"\xff\xd8\xff",
        lambda d: b"GIF89a",
        lambda d: gif_bomb()[:20],
    ],
)
def test_truncated_files_are_one_clear_error(make, mnist_test):
    with pytest.raises(ImageError) as e:
        preprocess(make(255 - mnist_test[0][0]))
    assert "\n" not in str(e.value)


PEAK_RSS = """
import resource, sys
from lenet.errors import LenetError
from lenet.preprocess import preprocess
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    preprocess(data)
except LenetError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("bomb, limit_mb", [("gif_4000", 60), ("png16_4000", 120)])
def test_bombs_cost_little_memory(bomb, limit_mb, tmp_path):
    """A 35-byte GIF and a 16-bit PNG, both 4000x4000: shrunk before any conversion, so the peak is
    the decoder's own buffer (16 / 32 MB) plus a copy, not hundreds of MB (measured in a fresh
    process: ru_maxrss is a high-water mark). Measured: 38 and 63 MB; before, 82 and 246 MB."""
    f = tmp_path / "bomb"
    f.write_bytes(gif_bomb() if bomb == "gif_4000" else png16(4000, 4000))
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(f)], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) < limit_mb, out.stdout  # MB over the imported baseline
