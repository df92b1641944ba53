"""The one definition of how an outside image (photo, scan, canvas) becomes an MNIST-style 28x28.

MNIST digits are light ink on a black background, size-normalized so the longest side of the
digit is 20 px (aspect ratio kept, anti-aliased) and placed in a 28x28 field so that the centre of
mass of the ink sits at the centre. A photo is dark ink on light, unevenly lit paper, off-centre,
large and noisy. :func:`preprocess` bridges the two, step by step:

1. :func:`load_image` -- read anything Pillow reads (safely: size caps, clear errors), EXIF
   orientation applied.
2. :func:`to_gray` -- alpha composited on white, grayscale in [0, 1], large images reduced.
3. :func:`ink_is_dark` -- decide the ink polarity; invert so the ink is light on dark.
4. :func:`remove_background` -- subtract a smooth background surface (uneven lighting is not ink).
5. :func:`find_digit` -- threshold, connected components; specks and border clutter ignored.
6. crop, :func:`scale_to_box` (longest side 20 px, aspect kept, anti-aliased) and
   :func:`place_by_center_of_mass` in 28x28.

The model's own input scaling (:func:`lenet.normalization.normalize`) is applied afterwards by the
caller; it is not part of this module. An MNIST test image goes through unchanged in effect.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lenet.errors import ImageError, NoDigitError

# Our own pixel cap, below Pillow's decompression-bomb limits (a warning at ~89.5 MP, an error at
# twice that), which stay in force: an 8000x8000 photo is the largest we accept.
MAX_PIXELS = 8000 * 8000
MIN_SIDE = 8  # anything smaller cannot hold a recognisable digit
WORK_SIDE = 1024  # images are reduced (area-averaged) to this longest side before float work
CANVAS = 28  # MNIST field
BOX = 20  # MNIST size-normalization box for the digit's longest side
LABEL_SIDE = 160  # connected components are labelled on a grid of at most this many cells a side
BG_BLOCKS = 8  # background surface: a grid of this many blocks a side
MIN_CONTRAST = 0.15  # peak ink contrast (on a 0..1 scale) below which the page is blank
SPECK_MASS = 0.05  # components with less ink than this fraction of the largest are specks
MIN_DIGIT_FRACTION = 0.02  # a digit spans at least this fraction of the image's longest side

SUPPORTED_MODES = frozenset(
    "1 L P PA LA La RGB RGBA RGBa RGBX CMYK YCbCr LAB HSV I I;16 I;16L I;16B I;16N F".split()
)


# ----------------------------------------------------------------------------- 1. reading


def load_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image from a path, bytes, a file-like, a PIL image or a numpy array.

    Returns a decoded PIL image with its EXIF orientation applied. Raises :class:`ImageError`
    with a one-line reason for anything that cannot be used (not an image, 0 bytes, truncated,
    larger than :data:`MAX_PIXELS` or Pillow's bomb limit, smaller than 8x8, unsupported mode).
    """
    if isinstance(source, Image.Image):
        im = source
        _check_size(im.size, max_pixels)
        try:
            im.load()
        except Exception as e:
            raise ImageError(f"truncated or corrupt image data ({_first_line(e)})") from None
    elif isinstance(source, np.ndarray):
        im = _from_array(source, max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        im = _open_bytes(bytes(source), max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError("no such file")
        if path.is_dir():
            raise ImageError("is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        im = _open(path, max_pixels)
    elif hasattr(source, "read"):
        im = _open_bytes(source.read(), max_pixels)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if im.mode not in SUPPORTED_MODES:
        raise ImageError(f"unsupported image mode {im.mode!r}")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not cost the picture; keep it as stored
        pass
    return im


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


def _open_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _open(io.BytesIO(data), max_pixels)


def _open(fp, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Image.open + our caps + a full decode, every failure as one ImageError line."""
    with warnings.catch_warnings():
        # Pillow warns (does not raise) between its two bomb limits: treat that as a bomb too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large (decompression bomb): {_first_line(e)}") from None
        except UnidentifiedImageError:
            raise ImageError("not an image (Pillow cannot identify the format)") from None
        except Exception as e:
            raise ImageError(f"unreadable image ({_first_line(e)})") from None
        _check_size(im.size, max_pixels)
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animations and multi-page TIFFs: the first frame
        if im.format == "JPEG" and max(im.size) > 2 * WORK_SIDE:
            # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling): many times faster, and
            # we reduce to WORK_SIDE anyway.
            im.draft(im.mode, (WORK_SIDE, WORK_SIDE))
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


def _standard_mode(im: Image.Image) -> Image.Image:
    """Any supported mode -> one of L, LA, RGB, RGBA, F (palette, CMYK, 16-bit, ... resolved)."""
    m = im.mode
    if m in ("L", "LA", "RGB", "RGBA", "F"):
        return im
    if m in ("P", "PA"):
        transparent = m == "PA" or "transparency" in im.info
        return im.convert("RGBA" if transparent else "RGB")
    if m in ("1",):
        return im.convert("L")
    if m == "La":
        return im.convert("LA")
    if m == "RGBa":
        return im.convert("RGBA")
    if m.startswith("I"):
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if (m.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        return Image.fromarray(np.clip(a / top, 0, 1).astype(np.float32), mode="F")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def to_gray(im: Image.Image, max_side: int = WORK_SIDE) -> np.ndarray:
    """float32 (H, W) in [0, 1]: alpha composited on white, luma, reduced to ``max_side``.

    A transparent canvas whose strokes are light (they vanish on white) is composited on black
    instead, so the strokes survive either way.
    """
    im = _standard_mode(im)
    factor = math.ceil(max(im.size) / max_side)
    if factor > 1:
        im = im.reduce(factor)  # area average: anti-aliased and fast
    a = np.asarray(im, dtype=np.float32)
    if im.mode != "F":
        a = a / 255.0
    else:
        a = np.clip(a / (255.0 if a.max(initial=0) > 1.0 else 1.0), 0, 1)
    alpha = None
    if a.ndim == 3:
        if a.shape[2] in (2, 4):
            alpha, a = a[:, :, -1], a[:, :, :-1]
        if a.shape[2] == 3:
            a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
        else:
            a = a[:, :, 0]
    if alpha is not None and alpha.min() < 1.0:
        on_white = a * alpha + (1.0 - alpha)
        if _spread(on_white) < 0.1 and _spread(alpha) > 0.3:
            return (a * alpha).astype(np.float32)  # light strokes on a transparent canvas
        return on_white.astype(np.float32)
    return a.astype(np.float32)


def _spread(a: np.ndarray) -> float:
    lo, hi = np.percentile(a, [1, 99.9])
    return float(hi - lo)


# ----------------------------------------------------------------------------- 3. polarity


def box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (k odd), edges replicated; integral-image implementation."""
    if k <= 1:
        return a
    r = k // 2
    p = np.pad(a.astype(np.float64), r + 1, mode="edge")
    s = p.cumsum(0).cumsum(1)
    h, w = a.shape
    out = (s[k : k + h, k : k + w] - s[0:h, k : k + w] - s[k : k + h, 0:w] + s[0:h, 0:w]) / (k * k)
    return out.astype(np.float32)


def _blur_size(shape: tuple[int, ...]) -> int:
    return 2 * max(1, max(shape) // 200) + 1  # 3 px up to 400 px, wider for larger images


def ink_is_dark(gray: np.ndarray) -> bool:
    """True when the ink is darker than the background (a photo of paper), False for MNIST.

    The background is the median level; the ink is the side that reaches furthest from it after
    a small blur (so single-pixel specks and sensor noise cannot decide). Uneven lighting moves
    both sides a little; ink moves one side a lot.
    """
    b = box_blur(gray, _blur_size(gray.shape))
    m = float(np.median(b))
    return (m - float(b.min())) > (float(b.max()) - m)


# ----------------------------------------------------------------------------- 4. background


def _block_view(a: np.ndarray, blocks: int) -> tuple[np.ndarray, int]:
    """Pad ``a`` (edge) to a multiple of the block size; -> (blocks_y, blocks_x, b*b) view."""
    h, w = a.shape
    b = max(1, math.ceil(max(h, w) / blocks))
    ph, pw = math.ceil(h / b) * b, math.ceil(w / b) * b
    p = np.pad(a, ((0, ph - h), (0, pw - w)), mode="edge")
    v = p.reshape(ph // b, b, pw // b, b).transpose(0, 2, 1, 3).reshape(ph // b, pw // b, b * b)
    return v, b


def _grey_morph(g: np.ndarray, op) -> np.ndarray:
    """3x3 grey erosion (op=np.minimum) or dilation (np.maximum) of a small grid."""
    p = np.pad(g, 1, mode="edge")
    out = g.copy()
    for dy in range(3):
        for dx in range(3):
            out = op(out, p[dy : dy + g.shape[0], dx : dx + g.shape[1]])
    return out


def background_surface(x: np.ndarray, blocks: int = BG_BLOCKS) -> np.ndarray:
    """Smooth estimate of the background level of a light-on-dark image (same shape as ``x``).

    Per block, the 25th percentile (ink covers well under 75% of any block); then a 3x3
    morphological opening of the block grid removes blocks that are mostly ink; then bilinear
    interpolation back to full size.
    """
    v, b = _block_view(x, blocks)
    grid = np.percentile(v, 25, axis=2).astype(np.float32)
    grid = _grey_morph(_grey_morph(grid, np.minimum), np.maximum)
    h, w = x.shape
    # Block centres sit at (i + 0.5) * b; interpolate between them, clamped at the edges.
    ys = np.clip((np.arange(h) + 0.5) / b - 0.5, 0, grid.shape[0] - 1)
    xs = np.clip((np.arange(w) + 0.5) / b - 0.5, 0, grid.shape[1] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, grid.shape[0] - 1), np.minimum(x0 + 1, grid.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bot = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def remove_background(x: np.ndarray) -> np.ndarray:
    """Light-on-dark ``x`` minus its background surface, clipped at 0: only ink stays positive."""
    return np.clip(x - background_surface(x), 0.0, None)


# ----------------------------------------------------------------------------- 5. the digit


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background, 1..n), pure numpy.

    Each pixel starts with its own index; repeated 3x3 minimum (within the mask) plus pointer
    jumping makes every pixel of a component carry the smallest index in it.
    """
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in range(3):
            for dx in range(3):
                new = np.minimum(new, p[dy : dy + h, dx : dx + w])
        new = np.where(mask, new, big)
        flat = np.append(new.ravel(), big)
        new = np.where(mask, flat[new], big)  # pointer jumping: label of my label's pixel
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.zeros((h, w), dtype=np.int64)
    if mask.any():
        _, inv = np.unique(lab[mask], return_inverse=True)
        out[mask] = inv.ravel() + 1
    return out


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


def _components(labels: np.ndarray, weight: np.ndarray) -> list[Component]:
    h, w = labels.shape
    band = np.zeros((h, w), bool)
    by, bx = max(1, math.ceil(0.1 * h)), max(1, math.ceil(0.1 * w))
    band[:by], band[-by:], band[:, :bx], band[:, -bx:] = True, True, True, True
    out = []
    for lab in range(1, int(labels.max()) + 1):
        ys, xs = np.nonzero(labels == lab)
        if not len(ys):
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        out.append(
            Component(
                lab,
                len(ys),
                float(weight[ys, xs].sum()),
                y0,
                x0,
                y1,
                x1,
                (y0 == 0, y1 == h, x0 == 0, x1 == w),
                float(band[ys, xs].mean()),
            )
        )
    return out


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


def _pool(a: np.ndarray, cell: int, how) -> np.ndarray:
    if cell == 1:
        return a
    h, w = a.shape
    ph, pw = math.ceil(h / cell) * cell, math.ceil(w / cell) * cell
    p = np.pad(a, ((0, ph - h), (0, pw - w)))
    return how(p.reshape(ph // cell, cell, pw // cell, cell), axis=(1, 3))


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
    h, w = r.shape
    dev = np.abs(r - np.median(r))
    sigma = 1.4826 * float(np.median(dev))  # robust noise level of the (mostly) background
    peak = float(box_blur(r, _blur_size(r.shape)).max())
    if peak < MIN_CONTRAST or peak < 6 * sigma:
        raise NoDigitError("no digit found")
    mask = r > max(0.3 * peak, 4 * sigma)

    cell = max(1, math.ceil(max(h, w) / LABEL_SIDE))
    small = _pool(mask, cell, np.any)
    labels = label_components(small)
    comps = _components(labels, _pool(np.where(mask, r, 0), cell, np.sum))
    chosen = select_digit(comps, *small.shape)
    if not chosen:
        raise NoDigitError("no digit found")
    keep = np.isin(labels, [c.label for c in chosen])
    # Back to working pixels, with a margin so the faint anti-aliased rim of strokes is kept.
    region = np.kron(keep, np.ones((cell, cell), dtype=bool))[:h, :w]
    region = box_blur(region.astype(np.float32), 2 * max(2, cell) + 1) > 0

    floor = 3 * sigma
    level = float(np.percentile(r[mask & region], 90))
    ink = np.clip((r - floor) / max(level - floor, 1e-6), 0.0, 1.0) * region
    ys, xs = np.nonzero(ink > 0)
    if not len(ys):
        raise NoDigitError("no digit found")
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    if max(box[2] - box[0], box[3] - box[1]) < max(3, MIN_DIGIT_FRACTION * max(h, w)):
        raise NoDigitError("no digit found (only specks)")
    return Digit(ink.astype(np.float32), box)


# ----------------------------------------------------------------------------- 6. MNIST box


def scale_to_box(patch: np.ndarray, box: int = BOX) -> np.ndarray:
    """Resize so the longest side is ``box`` px, aspect ratio kept (area-averaged when shrinking)."""
    h, w = patch.shape
    s = box / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return patch.astype(np.float32)
    im = Image.fromarray(patch.astype(np.float32), mode="F")
    # BOX = exact area averaging when shrinking (MNIST's anti-aliasing); bilinear when growing.
    filt = Image.Resampling.BOX if s < 1 else Image.Resampling.BILINEAR
    return np.clip(np.asarray(im.resize(size, filt), dtype=np.float32), 0, 1)


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre, in pixel-index coordinates."""
    m = float(a.sum())
    if m <= 0:
        return (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    ys, xs = np.arange(a.shape[0]), np.arange(a.shape[1])
    return float(a.sum(1) @ ys) / m, float(a.sum(0) @ xs) / m


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


def preprocess(image, steps: dict | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image source -> uint8 (28, 28), light on dark, MNIST style (see the module doc).

    ``image`` is anything :func:`load_image` takes. Raises :class:`ImageError` for unusable
    input and :class:`NoDigitError` when no digit is found. When ``steps`` is a dict, the
    intermediate images are stored in it (for pictures and debugging).
    """
    im = load_image(image, max_pixels)
    gray = to_gray(im)
    dark = ink_is_dark(gray)
    x = 1.0 - gray if dark else gray
    r = remove_background(x)
    digit = find_digit(r)
    y0, x0, y1, x1 = digit.box
    patch = scale_to_box(digit.ink[y0:y1, x0:x1])
    out = place_by_center_of_mass(patch)
    result = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
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
