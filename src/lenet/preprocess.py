"""The one definition of how an outside image (photo, scan, canvas) becomes an MNIST-style 28x28.

MNIST digits are light ink on a black background, size-normalized so the longest side of the
digit is 20 px (aspect ratio kept, anti-aliased) and placed in a 28x28 field so that the centre of
mass of the ink sits at the centre. A photo is dark ink on light, unevenly lit paper, off-centre,
large and noisy. :func:`preprocess` bridges the two, step by step:

1. :func:`load_image` -- read PNG, JPEG, GIF, BMP, TIFF, WebP or PNM with Pillow (safely: format
   allow-list, size caps from the header before decoding, first frame only, clear errors), EXIF
   orientation applied; large JPEGs decoded at reduced size.
2. :func:`to_gray` -- shrunk to :data:`WORK_SIDE` in the image's own mode, then alpha composited
   on white, grayscale in [0, 1].
3. :func:`ink_is_dark` -- decide the ink polarity; invert so the ink is light on dark.
4. :func:`remove_background` -- subtract a smooth background surface (uneven lighting is not ink).
5. :func:`find_digit` -- threshold, connected components; specks and border clutter ignored.
6. :func:`normalize_stroke` -- a hairline (a mouse or 1-px pen line) thickened to MNIST's width.
7. crop, :func:`scale_to_box` (longest side 20 px, aspect kept, anti-aliased) and
   :func:`place_by_center_of_mass` in 28x28.

The pixel work is OpenCV (``cv2``); Pillow identifies, checks and decodes. The model's own input
scaling (:func:`lenet.normalization.normalize`) is applied afterwards by the caller; it is not part
of this module. An MNIST test image goes through unchanged in effect.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lenet.errors import ImageError, NoDigitError

# `lenet predict` runs preprocess in one worker process per core and the service in one worker
# per core: OpenCV's own worker threads would only oversubscribe the cores (and the images here
# are small, so they never paid off: scripts/bench_preprocess.py, a 2-thread pool with 1 or 2
# OpenCV threads). The one place this is decided.
cv2.setNumThreads(1)

# Our own pixel cap, below Pillow's decompression-bomb limits (a warning at ~89.5 MP, an error at
# twice that), which stay in force: an 8000x8000 photo is the largest we accept. The service
# passes its own, lower cap (``max_pixels``).
MAX_PIXELS = 8000 * 8000
MIN_SIDE = 8  # anything smaller cannot hold a recognisable digit
WORK_SIDE = 256  # images are reduced (area-averaged) to at most this longest side before the work
SMALL_IMAGE = 4_000_000  # pixels: up to this, 8-bit images without alpha shrink in OpenCV
READ_WHOLE = 64 << 20  # files up to this size are read into memory in one call
DETAIL_SIDE = 1024  # ... but a small digit in a large image is cut out again at up to this side
CANVAS = 28  # MNIST field
BOX = 20  # MNIST size-normalization box for the digit's longest side
LABEL_SIDE = 160  # connected components are labelled on a grid of at most this many cells a side
BG_BLOCKS = 8  # background surface: a grid of this many blocks a side
MIN_CONTRAST = 0.15  # peak ink contrast (on a 0..1 scale) below which the page is blank
SPECK_MASS = 0.05  # components with less ink than this fraction of the largest are specks
MIN_DIGIT_FRACTION = 0.02  # a digit spans at least this fraction of the image's longest side
HAIRLINE = 0.04  # stroke width / digit side below which strokes are thickened...
STROKE_TARGET = 0.12  # ...to this (see normalize_stroke)
STROKE_WORK_SIDE = 64  # patches are enlarged to this side before their strokes are redrawn
HIST_BINS = 4096  # quantiles of [0, 1] images come from a histogram this fine (0.00024 a bin)

# Only these Pillow plugins ever parse client bytes (Pillow's format names; PPM covers PBM, PGM,
# PPM and PNM; the JPEG plugin also opens MPO, a JPEG with extra pictures).
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
SEND = "send PNG, JPEG, GIF, BMP, TIFF, WebP or PNM"

# What a refused file most likely is, from its first bytes only (for the message; nothing parses
# the body). Offsets are into the file.
_MAGIC = (
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"icns", "ICNS"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"SIMPLE  =", "FITS"),
    (0, b"\x01\xda", "SGI"),
    (0, b"BLP", "BLP"),
    (0, b"gimp xcf", "XCF"),
    (0, b"\x76\x2f\x31\x01", "OpenEXR"),
    (0, b"#define", "XBM"),
    (0, b"/* XPM */", "XPM"),
    (0, b"\x59\xa6\x6a\x95", "Sun raster"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftyphei", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
)

SUPPORTED_MODES = frozenset(
    "1 L P PA LA La RGB RGBA RGBa RGBX CMYK YCbCr LAB HSV I I;16 I;16L I;16B I;16N F".split()
)


# ----------------------------------------------------------------------------- 1. reading


def load_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image from a path, bytes, a file-like, a PIL image or a numpy array.

    Returns a decoded PIL image with its EXIF orientation applied (a JPEG over twice
    :data:`DETAIL_SIDE` is decoded at 1/2, 1/4 or 1/8 scale). Raises :class:`ImageError` with a
    one-line reason for anything that cannot be used (not an image, a format outside
    :data:`ALLOWED_FORMATS`, 0 bytes, truncated, more than ``max_pixels`` pixels by its header or
    over Pillow's bomb limit, smaller than 8x8, unsupported mode).
    """
    return _load(source, max_pixels, gray=False)


def _load(source, max_pixels: int, gray: bool) -> Image.Image:
    """:func:`load_image`; ``gray`` lets a colour JPEG decode straight to luma (for preprocess)."""
    if isinstance(source, Image.Image):  # already decoded by the caller: trusted, size-checked
        im = source
        _check_size(im.size, max_pixels)
        try:
            im.load()
        except Exception as e:
            raise ImageError(f"truncated or corrupt image data ({_first_line(e)})") from None
    elif isinstance(source, np.ndarray):
        im = _from_array(source, max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        im = _open_bytes(bytes(source), max_pixels, gray)
    elif isinstance(source, (str, os.PathLike)):
        im = _open_path(Path(source), max_pixels, gray)
    elif hasattr(source, "read"):
        im = _open_bytes(source.read(), max_pixels, gray)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if im.mode not in SUPPORTED_MODES:
        raise ImageError(f"unsupported image mode {im.mode!r}")
    if im.format == "TIFF" or "exif" in im.info:  # else there is no orientation to apply
        try:
            # Pillow decoded without looking at the orientation: applied here, exactly once.
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not cost the picture; keep it as stored
            pass
    return im


def _open_path(path: Path, max_pixels: int, gray: bool) -> Image.Image:
    """An image file: read whole into memory (one read call; Pillow then decodes from memory,
    ~0.1 ms faster per small file than its own chunked reads), or opened in place when large."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as e:
        raise ImageError(f"cannot read the file ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a folder, not an image file")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    if st.st_size > READ_WHOLE:
        return _open(path, max_pixels, gray)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read the file ({e.strerror or type(e).__name__})") from None
    return _open_bytes(data, max_pixels, gray)


def quiet_bomb_warning() -> None:
    """Silence Pillow's decompression-bomb *warning* in this process (an entry point's choice:
    the images it warns about are over our pixel cap and refused in one line anyway)."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _check_size(size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(f"image too large: {w}x{h} pixels (limit {max_pixels:,} pixels)")
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"image too small: {w}x{h} pixels (a digit needs at least {MIN_SIDE}x{MIN_SIDE})"
        )


def _open_bytes(data: bytes, max_pixels: int, gray: bool) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _open(io.BytesIO(data), max_pixels, gray)


def _sniff(fp) -> str | None:
    """The likely format of a refused file from its first 16 bytes (None when unknown)."""
    try:
        if isinstance(fp, Path):
            with open(fp, "rb") as f:
                head = f.read(16)
        else:
            fp.seek(0)
            head = fp.read(16)
    except OSError:
        return None
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def _open(fp, max_pixels: int, gray: bool) -> Image.Image:
    """Image.open (allow-listed formats) + our caps + a first-frame decode, one ImageError line."""
    # Pillow raises over twice its bomb limit (~179 MP) and only warns between the two; our own
    # cap (64 MP, 16 in the service) refuses those images from the header just below, so no
    # process-wide warning filter is changed here (that is not thread-safe): the entry points
    # silence the warning itself (lenet.preprocess.quiet_bomb_warning).
    try:
        im = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large (decompression bomb): {_first_line(e)}") from None
    except UnidentifiedImageError:
        kind = _sniff(fp)
        if kind:
            raise ImageError(f"unsupported image format ({kind}): {SEND}") from None
        raise ImageError(f"not an image, or an unsupported image format: {SEND}") from None
    except Exception as e:
        raise ImageError(f"unreadable image ({_first_line(e)})") from None
    # The header's size, before a single pixel is decoded. Never ask for n_frames (it walks
    # every page of a TIFF or GIF): Pillow opens at the first frame, and that one is used.
    _check_size(im.size, max_pixels)
    if im.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 scale, no smaller than DETAIL_SIDE (many times
        # faster, a fraction of the memory); luma straight from the decoder for preprocess.
        f = _reduce_factor(im.size, DETAIL_SIDE)
        if f > 1 or gray:
            w, h = im.size
            im.draft("L" if gray else im.mode, (max(1, w // f), max(1, h // f)))
    try:
        im.load()
    except Exception as e:
        raise ImageError(f"truncated or corrupt image data ({_first_line(e)})") from None
    return im


def _from_array(a: np.ndarray, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array (uint8, other ints, bool or float in [0,1]) -> image."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(
            f"array of shape {tuple(a.shape)} is not an image (expected HxW, HxWx3 or HxWx4)"
        )
    _check_size((a.shape[1], a.shape[0]), max_pixels)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array holds NaN or infinite values")
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        if a.dtype != np.uint8:
            top = 65535 if a.max(initial=0) > 255 else 255
            a = np.clip(np.rint(a.astype(np.float64) * (255 / top)), 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"array of dtype {a.dtype} is not an image")
    return Image.fromarray(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------- 2. grayscale


def _reduce_factor(size: tuple[int, int], max_side: int = WORK_SIDE) -> int:
    return max(1, math.ceil(max(size) / max_side))


def _native(im: Image.Image) -> Image.Image:
    """Modes Pillow cannot shrink (palette, bilevel, odd alpha) -> L, LA, RGB or RGBA, 1 B/px/band."""
    m = im.mode
    if m == "P":  # palette -> luma (Pillow uses the same ITU-R 601 weights), alpha if it has one
        return im.convert("LA" if "transparency" in im.info else "L")
    if m in ("PA", "La"):
        return im.convert("LA")
    if m == "1":
        return im.convert("L")
    if m == "RGBa":
        return im.convert("RGBA")
    return im


def _to_arrays(im: Image.Image, f: int) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (value, alpha): value uint8 (H, W) or (H, W, 3), or float32 (H, W) in [0, 1] for 16-bit,
    32-bit and float images; alpha uint8 (H, W) or None. Shrunk (area average) BEFORE any mode
    conversion, so a 4000x4000 16-bit PNG or GIF never exists as a float or RGB copy. ``f``:
    the integer shrink factor."""
    im = _native(im)
    if im.mode.startswith("I;16"):  # no Image.reduce for these: a BOX resize, in 16 bits
        if f > 1:
            size = (math.ceil(im.width / f), math.ceil(im.height / f))
            im = im.resize(size, Image.Resampling.BOX)
        return np.asarray(im).astype(np.float32) * np.float32(1 / 65535), None
    exact = im.width % f == 0 and im.height % f == 0
    if f > 1 and exact and im.mode in ("L", "RGB") and im.width * im.height <= SMALL_IMAGE:
        # The same block average by OpenCV on the pixels: 6 us for a 280x280 canvas, Pillow's
        # reduce 33 us (no alpha here, so nothing to premultiply). Only for whole blocks:
        # OpenCV's area resize by a fractional ratio measured slower than Pillow.
        a = np.asarray(im)
        size = (math.ceil(im.width / f), math.ceil(im.height / f))
        return cv2.resize(a, size, interpolation=cv2.INTER_AREA), None
    if f > 1:
        im = im.reduce(f)  # area average in the image's own mode (LA/RGBA premultiplied)
    if im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float32)
        top = a.max(initial=0)
        if im.mode == "I":
            a = a * np.float32(1 / (65535 if top > 255 else 255))
        elif top > 1.0:
            a = a * np.float32(1 / 255)
        return np.clip(a, 0, 1), None
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX: after the shrink
    a = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        alpha = a[:, :, -1]
        value = a[:, :, 0] if im.mode == "LA" else a[:, :, :3]
        return value, (alpha if cv2.minMaxLoc(alpha)[0] < 255 else None)
    return a, None


def to_gray(im: Image.Image, max_side: int = WORK_SIDE) -> np.ndarray:
    """float32 (H, W) in [0, 1]: alpha composited on white, luma, reduced to ``max_side``.

    A transparent canvas whose strokes are light (they vanish on white) is composited on black
    instead, so the strokes survive either way.
    """
    return _gray(im, _reduce_factor(im.size, max_side))


def _gray(im: Image.Image, f: int) -> np.ndarray:
    """:func:`to_gray` with the shrink factor given."""
    value, alpha = _to_arrays(im, f)
    if value.ndim == 3:
        value = cv2.cvtColor(value, cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma
    g = value.astype(np.float32) * np.float32(1 / 255) if value.dtype == np.uint8 else value
    if alpha is None:
        return g
    a = alpha.astype(np.float32) * np.float32(1 / 255)
    on_white = g * a + (1.0 - a)
    if _spread(on_white) < 0.1 and _spread(a) > 0.3:
        return g * a  # light strokes on a transparent canvas
    return on_white


def _spread(a: np.ndarray) -> float:
    lo, hi = _quantiles(a, (0.01, 0.999))
    return hi - lo


def _quantiles(
    a: np.ndarray, qs, mask: np.ndarray | None = None, scale: float = 255.0
) -> list[float]:
    """Quantiles (0..1, numpy's linear definition) of a float image ``a >= 0`` (within ``mask``).

    From a 256-bin histogram of ``a * scale`` rounded to uint8 (OpenCV, one pass; values above
    255 / scale land in the top bin), values spread evenly inside their bin: exact to
    0.5 / scale, and exact for images that came from 8-bit data at scale 255.
    """
    q8 = cv2.convertScaleAbs(a, alpha=scale)  # rounded, saturated
    if mask is not None:
        q8 = q8[mask > 0]  # (n,): the pixels inside, so that no bin is swamped by the outside
    n = q8.size
    if n == 0:  # nothing inside the mask: the lowest level
        return [0.0] * len(qs)
    # Rank q*(n-1) sits in the middle of its share of the piecewise-linear CDF: +0.5.
    ranks = np.asarray(qs, dtype=np.float64) * (n - 1) + 0.5
    edges = _edges(scale)
    # A histogram whose pixels mostly share one bin (a clean canvas: all 0 or all 255) is slow
    # to count (every increment waits for the last: 41 us on 140x140, 10 us for spread values);
    # when the ranks asked for all fall inside bin 0 or bin 255, the answer needs only its size.
    zeros = n - cv2.countNonZero(q8)
    if (ranks < zeros).all():
        return (edges[0] + ranks / zeros / scale).tolist()
    tops = cv2.countNonZero(cv2.compare(q8, 255, cv2.CMP_EQ))
    if (ranks > n - tops).all():
        return (edges[255] + (ranks - (n - tops)) / tops / scale).tolist()
    cum = np.zeros(257)
    np.cumsum(cv2.calcHist([q8.reshape(-1, 1)], [0], None, [256], [0, 256]), out=cum[1:, None])
    return np.interp(ranks, cum, edges).tolist()


@functools.cache
def _edges(scale: float) -> np.ndarray:
    """Bin edges (257,) of the 256-bin histograms above, in the image's units."""
    return (np.arange(257) - 0.5) / scale


def _median_and_sigma(r: np.ndarray) -> tuple[float, float]:
    """Median and robust noise level (1.4826 x the median absolute deviation) of ``r >= 0``.

    Both depend only on the lower part of the distribution (the background), so a histogram of
    ``r`` at 1/2040 resolution, saturating at 0.125, is enough; a clean image (mostly exact
    zeros, like an MNIST digit) gets exactly 0 and 0.
    """
    scale = 2040.0
    q8 = cv2.convertScaleAbs(r, alpha=scale)
    n = r.size
    if 2 * (n - cv2.countNonZero(q8)) > n:  # counted before the (then slow) histogram
        return 0.0, 0.0
    hist = cv2.calcHist([q8], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    cum = np.concatenate(([0.0], np.cumsum(hist)))
    edges = np.maximum((np.arange(257) - 0.5) / scale, 0.0)
    med = float(np.interp(n / 2, cum, edges))
    # Median |r - med|: the smallest t with at least n/2 values in [med - t, med + t].
    t = np.arange(257) / scale
    inside = np.interp(med + t, edges, cum) - np.interp(med - t, edges, cum, left=0.0)
    if inside[-2] < n / 2:  # noise beyond the histogram's range: count exactly
        med = float(np.median(r))
        return med, 1.4826 * float(np.median(np.abs(r - med)))
    return med, 1.4826 * float(np.interp(n / 2, inside, t))


# ----------------------------------------------------------------------------- 3. polarity


def box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (k odd), edges replicated (float32)."""
    if k <= 1:
        return a
    return cv2.blur(np.asarray(a, dtype=np.float32), (k, k), borderType=cv2.BORDER_REPLICATE)


def _blur_size(shape: tuple[int, ...]) -> int:
    return 2 * max(1, max(shape) // 200) + 1  # 3 px up to 400 px, wider for larger images


def ink_is_dark(gray: np.ndarray) -> bool:
    """True when the ink is darker than the background (a photo of paper), False for MNIST.

    The background is the median level; the ink is the side that reaches furthest from it after
    a small blur (so single-pixel specks and sensor noise cannot decide). Uneven lighting moves
    both sides a little; ink moves one side a lot.
    """
    b = box_blur(gray, _blur_size(gray.shape))
    lo, hi = cv2.minMaxLoc(b)[:2]
    (m,) = _quantiles(b, (0.5,))  # to 1/510: ties aside, the decision cannot move
    return (m - lo) > (hi - m)


# ----------------------------------------------------------------------------- 4. background


def background_surface(x: np.ndarray, blocks: int = BG_BLOCKS) -> np.ndarray:
    """Smooth estimate of the background level of a light-on-dark image (same shape as ``x``).

    Per block, the 25th percentile (ink covers well under 75% of any block); then a 3x3
    morphological opening of the block grid removes blocks that are mostly ink; then bilinear
    interpolation back to full size, carried on to the edges by a ring of blocks extrapolated
    linearly from the grid (a gradient keeps rising to the edge rather than stopping flat).
    """
    h, w = x.shape
    b = max(1, math.ceil(max(h, w) / blocks))
    gh, gw = math.ceil(h / b), math.ceil(w / b)
    # 8-bit levels (exact for 8-bit sources): numpy sorts uint8 with a radix sort, in linear time.
    q8 = cv2.convertScaleAbs(x, alpha=255.0)
    p = cv2.copyMakeBorder(q8, 0, gh * b - h, 0, gw * b - w, cv2.BORDER_REPLICATE)
    v = p.reshape(gh, b, gw, b).transpose(0, 2, 1, 3).reshape(gh * gw, b * b)  # (blocks, b*b)
    v = np.sort(v, axis=1, kind="stable")
    i, f = divmod(0.25 * (b * b - 1), 1.0)  # numpy's linear 25th percentile
    i = int(i)
    lo, hi = v[:, i].astype(np.float32), v[:, min(i + 1, b * b - 1)].astype(np.float32)
    grid = ((lo + np.float32(f) * (hi - lo)) * np.float32(1 / 255)).reshape(gh, gw)
    # The grid gets one more ring of blocks, extrapolated linearly, before the opening and
    # before the interpolation. Without it the opening drags an edge block to its inner
    # neighbour's level, and the surface stays flat from the outer block centres to the edge:
    # under a lighting gradient or vignette the paper along that edge stayed behind as "ink",
    # one blob with the digits near it, dropped as border clutter (docs/read.md, "Measured").
    grid = cv2.morphologyEx(_extend(grid), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    grid = np.clip(_extend(grid), 0.0, 1.0)  # levels, as x's
    # INTER_LINEAR maps output pixel i to grid coordinate (i + 0.5) / b - 0.5: block centres
    # sit at (k + 0.5) * b, the interpolation runs between them, and the extra ring (cropped
    # off) carries it on to the edges.
    surface = cv2.resize(grid, ((gw + 2) * b, (gh + 2) * b), interpolation=cv2.INTER_LINEAR)
    return surface[b : b + h, b : b + w]


def _extend(grid: np.ndarray) -> np.ndarray:
    """(gh, gw) -> (gh + 2, gw + 2): one more ring of blocks, each 2 x edge - next, the rows
    first, then the columns (a grid one block across repeats its edge). OpenCV's borders, not
    np.pad: this runs twice per image on a grid of ~50 cells, where np.pad's Python overhead
    (tens of microseconds) was a quarter of the background step."""
    rows = 2 * cv2.copyMakeBorder(grid, 1, 1, 0, 0, cv2.BORDER_REPLICATE) - cv2.copyMakeBorder(
        grid, 1, 1, 0, 0, cv2.BORDER_REFLECT_101
    )
    return 2 * cv2.copyMakeBorder(rows, 0, 0, 1, 1, cv2.BORDER_REPLICATE) - cv2.copyMakeBorder(
        rows, 0, 0, 1, 1, cv2.BORDER_REFLECT_101
    )


def remove_background(x: np.ndarray) -> np.ndarray:
    """Light-on-dark ``x`` minus its background surface, clipped at 0: only ink stays positive."""
    x = np.asarray(x, dtype=np.float32)
    return np.maximum(cv2.subtract(x, background_surface(x)), 0.0)


# ----------------------------------------------------------------------------- 5. the digit


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background, 1..n), int32."""
    return cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)[1]


@dataclass
class Component:
    """One connected blob of ink on the labelling grid."""

    label: int
    area: int
    mass: float
    y0: int
    x0: int
    y1: int  # exclusive
    x1: int  # exclusive
    touches: tuple[bool, bool, bool, bool]  # top, bottom, left, right border
    edge_fraction: float  # share of its pixels in the outer 10% band of the image

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


# Up to this many components, per-component masks beat np.bincount over the whole grid.
FEW_COMPONENTS = 6


def _per_label_sums(labels: np.ndarray, weight: np.ndarray, n: int, areas) -> np.ndarray:
    """Sum of ``weight`` over each label 0..n-1 (float64 (n,)); label 0's sum is not used."""
    if n - 1 > FEW_COMPONENTS:
        return np.bincount(labels.ravel(), weights=weight.ravel(), minlength=n)
    sums = np.zeros(n)
    for lab in range(1, n):
        inside = cv2.compare(labels, lab, cv2.CMP_EQ)  # uint8 0/255 (H, W)
        sums[lab] = cv2.mean(weight, mask=inside)[0] * float(areas[lab])
    return sums


def _components(grid: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """Label a uint8 grid (8-connected) and describe every component: -> (labels, components)."""
    h, w = grid.shape
    # Grana's block-based algorithm: the same labels, and its statistics pass measured 2.5x
    # faster than the default (Spaghetti) on a 140x140 canvas (33 vs 81 us).
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        grid, 8, cv2.CV_32S, cv2.CCL_GRANA
    )
    x0s, y0s = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1s, y1s = x0s + stats[:, cv2.CC_STAT_WIDTH], y0s + stats[:, cv2.CC_STAT_HEIGHT]
    areas = stats[:, cv2.CC_STAT_AREA]
    mass = _per_label_sums(labels, weight, n, areas)
    # The share of each component in the outer 10% band matters only for blobs that touch the
    # border (see is_border_clutter): counted only when one does.
    touching = (y0s == 0) | (y1s == h) | (x0s == 0) | (x1s == w)
    in_band = np.zeros(n)
    if touching[1:].any():
        band = np.ones((h, w), np.uint8)
        by, bx = max(1, math.ceil(0.1 * h)), max(1, math.ceil(0.1 * w))
        band[by : h - by, bx : w - bx] = 0
        in_band = _per_label_sums(labels, band, n, areas)
    out = []
    for lab in range(1, n):
        y0, x0, y1, x1, area = (
            int(y0s[lab]),
            int(x0s[lab]),
            int(y1s[lab]),
            int(x1s[lab]),
            int(areas[lab]),
        )
        touches = (y0 == 0, y1 == h, x0 == 0, x1 == w)
        edge = float(in_band[lab]) / area
        out.append(Component(lab, area, float(mass[lab]), y0, x0, y1, x1, touches, edge))
    return labels, out


def is_border_clutter(c: Component, h: int, w: int) -> bool:
    """A blob that is the edge of something else: a shadow or paper edge lying (almost) all in
    the outer band of the image, or a huge region (the table around the paper) at the border.
    A digit cropped tightly also touches the border, but most of it lies inside."""
    if not any(c.touches):
        return False
    return c.edge_fraction >= 0.8 or c.area > 0.35 * h * w


def _gap(a: tuple[int, int, int, int], c: Component) -> int:
    """Chebyshev gap between a box (y0, x0, y1, x1) and a component's box (0 when touching)."""
    dy = max(a[0] - c.y1, c.y0 - a[2], 0)
    dx = max(a[1] - c.x1, c.x0 - a[3], 0)
    return max(dy, dx)


def select_digit(comps: list[Component], h: int, w: int) -> list[Component]:
    """The components that make up the digit: the heaviest real blob, plus blobs close to it.

    Specks (< 5% of the heaviest blob's ink) and border clutter are ignored; a broken stroke
    (a "5" whose bar is detached, a faint joint) is kept when its gap is small next to the digit.
    """
    real = [c for c in comps if not is_border_clutter(c, h, w)]
    if not real:
        return []
    main = max(real, key=lambda c: c.mass)
    cands = [c for c in real if c is not main and c.mass >= SPECK_MASS * main.mass]
    chosen = [main]
    box = (main.y0, main.x0, main.y1, main.x1)
    grew = True
    while grew:
        grew = False
        reach = 0.25 * max(box[2] - box[0], box[3] - box[1]) + 1
        for c in list(cands):
            if _gap(box, c) <= reach:
                chosen.append(c)
                cands.remove(c)
                box = (min(box[0], c.y0), min(box[1], c.x0), max(box[2], c.y1), max(box[3], c.x1))
                grew = True
    return chosen


def _pool(a: np.ndarray, cell: int) -> np.ndarray:
    """Sum over cell x cell blocks (zero-padded at the bottom/right) of a float32 image."""
    if cell == 1:
        return a
    h, w = a.shape
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    p = cv2.copyMakeBorder(a, 0, gh * cell - h, 0, gw * cell - w, cv2.BORDER_CONSTANT, value=0)
    # An exact integer factor: INTER_AREA is the plain block mean.
    return cv2.resize(p, (gw, gh), interpolation=cv2.INTER_AREA) * np.float32(cell * cell)


def _keep(grid: np.ndarray, labels: np.ndarray, comps: list, chosen: list) -> np.ndarray:
    """uint8 0/1 mask of the chosen components' cells (shortcuts for all of them, or one)."""
    if len(chosen) == len(comps):
        return (grid > 0).view(np.uint8)
    if len(chosen) == 1:
        return cv2.compare(labels, chosen[0].label, cv2.CMP_EQ) // 255
    pick = np.zeros(len(comps) + 1, np.uint8)
    pick[[c.label for c in chosen]] = 1
    return pick[labels]


@dataclass
class Digit:
    """Where the digit is in the working image, and its contrast-normalized ink."""

    ink: np.ndarray  # float32 (H, W) in [0, 1], 0 outside the digit's region
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive) in working pixels


def find_digit(r: np.ndarray) -> Digit:
    """Locate the digit in a background-free light-on-dark image; :class:`NoDigitError` if none.

    Contrast: ink is stretched so its typical level (90th percentile) becomes 1 and the noise
    floor (3 sigma of the background) becomes 0, so a pale pencil and a black marker look alike.
    """
    r = np.asarray(r, dtype=np.float32)
    h, w = r.shape
    _, sigma = _median_and_sigma(r)  # robust noise level of the (mostly) background
    peak = cv2.minMaxLoc(box_blur(r, _blur_size(r.shape)))[1]
    if peak < MIN_CONTRAST or peak < 6 * sigma:
        raise NoDigitError("no digit found")
    mask = cv2.compare(r, max(0.3 * peak, 4 * sigma), cv2.CMP_GT)  # uint8 0/255 (H, W)

    # Components on a grid of at most LABEL_SIDE cells a side: a cell is ink if any pixel is.
    cell = max(1, math.ceil(max(h, w) / LABEL_SIDE))
    inked = cv2.bitwise_and(r, r, mask=mask)  # r where the mask holds, else 0
    mass = _pool(inked, cell)
    small = mask if cell == 1 else (_pool(mask.astype(np.float32), cell) > 0).astype(np.uint8)
    labels, comps = _components(small, mass)
    chosen = select_digit(comps, *small.shape)
    if not chosen:
        raise NoDigitError("no digit found")
    keep = _keep(small, labels, comps, chosen)  # uint8 0/1 (cells_y, cells_x)
    # Back to working pixels, with a margin so the faint anti-aliased rim of strokes is kept.
    if cell > 1:
        keep = np.repeat(np.repeat(keep, cell, axis=0), cell, axis=1)[:h, :w]
    region = keep
    k = 2 * max(2, cell) + 1
    region = cv2.dilate(region, np.ones((k, k), np.uint8))  # (H, W) 0/1

    floor = 3 * sigma
    (level,) = _quantiles(r, (0.9,), mask=cv2.bitwise_and(mask, mask, mask=region))
    ink = np.zeros((h, w), np.float32)
    x, y, bw, bh = cv2.boundingRect(region)
    roi = (slice(y, y + bh), slice(x, x + bw))
    scaled = (r[roi] - np.float32(floor)) * np.float32(1 / max(level - floor, 1e-6))
    ink[roi] = np.clip(scaled, 0.0, 1.0) * region[roi]
    x, y, bw, bh = cv2.boundingRect(cv2.compare(ink, 0, cv2.CMP_GT))
    if bw == 0:
        raise NoDigitError("no digit found")
    box = (y, x, y + bh, x + bw)
    if max(bh, bw) < max(3, MIN_DIGIT_FRACTION * max(h, w)):
        raise NoDigitError("no digit found (only specks)")
    return Digit(ink, box)


# ----------------------------------------------------------------------------- 6. stroke width


def stroke_width(patch: np.ndarray) -> float:
    """Typical stroke width of the ink in ``patch``, in pixels: twice the ink's area over its
    rim (the ink pixels a 3x3 erosion removes), which is the width of a long stroke. Cheap
    (two counts and one erosion) and coarse at 1-2 px, which is all the decision needs."""
    patch = np.asarray(patch, dtype=np.float32)
    level = 0.5 * float(patch.max())
    if patch.shape[1] == 1 and patch.shape[0] <= 4:
        # OpenCV takes a column of at most 4 values for a scalar, and compare() then fails.
        mask = np.where(patch >= level, 255, 0).astype(np.uint8)
    else:
        mask = cv2.compare(patch, level, cv2.CMP_GE)  # uint8 0/255
    area = cv2.countNonZero(mask)
    rim = area - cv2.countNonZero(cv2.erode(mask, np.ones((3, 3), np.uint8)))
    return 2.0 * area / max(rim, 1)


def normalize_stroke(patch: np.ndarray) -> np.ndarray:
    """Hairlines redrawn at about MNIST's stroke width; every other patch unchanged.

    A mouse or 1-px pencil line is a faint hairline once the digit is scaled to its 20 px box,
    where MNIST's strokes are ~2-3 px. Strokes thinner than ``HAIRLINE`` of the patch's longest
    side (MNIST's digits as photos through this pipeline: 1st percentile 0.05; a 1-px line on
    a 60 px digit: 0.03, as the measure never reads under 2 px) get a grey-level
    dilation by an elliptical brush up to ``STROKE_TARGET`` of the side (chosen on hairline
    copies of MNIST test digits: 0.12-0.17 read alike). Small patches are enlarged first so one
    pixel of brush is a small step. Thick strokes are left alone: thinning optdigits' blurred
    strokes by erosion cost accuracy (docs/predict.md, "Real handwriting").
    """
    patch = np.asarray(patch, dtype=np.float32)
    side = max(patch.shape)
    ratio = stroke_width(patch) / side
    if ratio >= HAIRLINE or side < 3:
        return patch
    if side < STROKE_WORK_SIDE:
        f = STROKE_WORK_SIDE / side
        size = (max(1, round(patch.shape[1] * f)), max(1, round(patch.shape[0] * f)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
        side = max(patch.shape)
    grow = round((STROKE_TARGET - ratio) * side)  # pixels of width to add
    if grow < 1:
        return patch
    brush = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow + 1, grow + 1))
    pad = grow // 2 + 1  # room all round first, so the widened strokes are not cut off
    grown = cv2.dilate(cv2.copyMakeBorder(patch, pad, pad, pad, pad, cv2.BORDER_CONSTANT), brush)
    x, y, w, h = cv2.boundingRect(cv2.compare(grown, 0, cv2.CMP_GT))
    return grown[y : y + h, x : x + w]


# ----------------------------------------------------------------------------- 7. MNIST box


def scale_to_box(patch: np.ndarray, box: int = BOX) -> np.ndarray:
    """Resize so the longest side is ``box`` px, aspect ratio kept (area-averaged when shrinking)."""
    patch = np.asarray(patch, dtype=np.float32)
    h, w = patch.shape
    s = box / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return patch
    # INTER_AREA = exact area averaging when shrinking (MNIST's anti-aliasing); bilinear growing.
    how = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return np.clip(cv2.resize(patch, size, interpolation=how), 0, 1)


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre, in pixel-index coordinates."""
    m = cv2.moments(np.asarray(a, dtype=np.float64))
    if m["m00"] <= 0:
        return (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    return m["m01"] / m["m00"], m["m10"] / m["m00"]


def place_by_center_of_mass(patch: np.ndarray, size: int = CANVAS) -> np.ndarray:
    """Paste ``patch`` into a size x size field so its centre of mass lands on the centre.

    MNIST's centre is pixel index 14 (measured on the test set: mean 13.99, 14.00); the shift is
    rounded to whole pixels (no resampling blur) and clamped so the digit stays inside.
    """
    cy, cx = center_of_mass(patch)
    h, w = patch.shape
    oy = min(max(round(size / 2 - cy), 0), size - h)
    ox = min(max(round(size / 2 - cx), 0), size - w)
    out = np.zeros((size, size), dtype=np.float32)
    out[oy : oy + h, ox : ox + w] = patch
    return out


# ----------------------------------------------------------------------------- all together


def _in_detail(im: Image.Image, f: int, digit: Digit, dark: bool, bg: np.ndarray) -> Digit:
    """A digit found small (under 2 x BOX px) in an image shrunk ``f`` times: cut it out again
    from the decoded image at up to :data:`DETAIL_SIDE` resolution, so it is not blown up from
    a handful of pixels. Same steps on the crop; the page's polarity and background are kept
    (the background surface is smooth: interpolated onto the crop). Otherwise ``digit``."""
    y0, x0, y1, x1 = digit.box
    side = max(y1 - y0, x1 - x0)
    f2 = _reduce_factor(im.size, DETAIL_SIDE)
    if side >= 2 * BOX or f2 >= f:
        return digit
    h, w = bg.shape
    cy0, cx0 = max(0, y0 - side), max(0, x0 - side)  # one digit-size of margin all round
    cy1, cx1 = min(h, y1 + side), min(w, x1 + side)
    crop = im.crop((cx0 * f, cy0 * f, min(im.width, cx1 * f), min(im.height, cy1 * f)))
    g = _gray(crop, f2)
    x = 1.0 - g if dark else g
    bg_crop = cv2.resize(
        bg[cy0:cy1, cx0:cx1], (g.shape[1], g.shape[0]), interpolation=cv2.INTER_LINEAR
    )
    try:
        return find_digit(np.maximum(cv2.subtract(x, bg_crop), 0.0))
    except NoDigitError:
        return digit


def preprocess(image, steps: dict | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image source -> uint8 (28, 28), light on dark, MNIST style (see the module doc).

    ``image`` is anything :func:`load_image` takes; files over ``max_pixels`` pixels (by their
    header) are refused before decoding. Raises :class:`ImageError` for unusable input and
    :class:`NoDigitError` when no digit is found. When ``steps`` is a dict, the intermediate
    images are stored in it (for pictures and debugging).
    """
    im = _load(image, max_pixels, gray=True)
    gray = to_gray(im)
    dark = ink_is_dark(gray)
    x = 1.0 - gray if dark else gray
    bg = background_surface(x)
    r = np.maximum(cv2.subtract(x, bg), 0.0)  # remove_background(x)
    digit = find_digit(r)
    digit = _in_detail(im, _reduce_factor(im.size), digit, dark, bg)
    y0, x0, y1, x1 = digit.box
    patch = scale_to_box(normalize_stroke(digit.ink[y0:y1, x0:x1]))
    out = place_by_center_of_mass(patch)
    result = cv2.convertScaleAbs(out, alpha=255.0)  # rounded, saturated uint8
    if steps is not None:
        steps.update(
            gray=gray,
            dark_ink=dark,
            light_on_dark=x,
            background_removed=r,
            ink=digit.ink,
            box=digit.box,
            scaled=patch,
            result=result,
        )
    return result
