"""A hostile-input corpus for the image path, generated in code (no binary files in the repo).

Every generator is deterministic and cheap: bombs are written with zlib over one repeated row,
container formats by hand with ``struct``. What each should get from the service is in
``tests/test_hostile.py``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image, ImageDraw

# --- building blocks ----------------------------------------------------------------------------


def drawn_one(size: int = 120) -> Image.Image:
    """A "1" as a person draws it: one dark vertical stroke on white (mode L)."""
    img = Image.new("L", (size, size), 255)
    line = [(size // 2, size // 6), (size // 2, 5 * size // 6)]
    ImageDraw.Draw(img).line(line, fill=0, width=max(2, size // 12))
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved by Pillow in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_of_rows(width: int, height: int, depth: int, color: int, row: bytes) -> bytes:
    """A PNG whose ``height`` scanlines are all ``row`` (filter 0): megapixels in kilobytes.

    ``depth``/``color`` are the IHDR bit depth and colour type (0 grey, 2 RGB, 6 RGBA).
    """
    z = zlib.compressobj(9)
    line = b"\0" + row
    block = line * 64  # compress 64 rows per call: the same stream, far fewer Python calls
    parts = [z.compress(block) for _ in range(height // 64)]
    parts += [z.compress(line * (height % 64)), z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


# One GIF frame of 1x1 pixel at (0, 0), colour 0: image descriptor, then LZW with min code size
# 2 (3-bit codes, LSB first): clear (4), pixel 0, end (5) -> 0x44 0x01 in one 2-byte sub-block.
GIF_PIXEL = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"

# --- decompression bombs -------------------------------------------------------------------------


def gif_bomb(side: int = 4000) -> bytes:
    """A 35-byte GIF: a ``side`` x ``side`` canvas holding one 1x1 frame (the canvas is allocated)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\xff\xff\xff\0\0\0"
    return screen + GIF_PIXEL + b";"


def png16_bomb(side: int = 4000) -> bytes:
    """A ``side`` x ``side`` 16-bit RGBA PNG (opaque white): 128 MB of samples in ~125 KB."""
    return png_of_rows(side, side, 16, 6, b"\xff" * (8 * side))


@functools.lru_cache(maxsize=2)
def big_png(side: int = 8000) -> bytes:
    """A white ``side`` x ``side`` 8-bit grey PNG: 64 MP at 8000 (inside the CLI's pixel cap)."""
    return png_of_rows(side, side, 8, 0, b"\xff" * side)


# --- formats outside the allow-list ------------------------------------------------------------

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\n"
    b"0 setgray 3 setlinewidth 14 4 moveto 14 24 lineto stroke\nshowpage\n%%EOF\n"
)
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
    b'<line x1="14" y1="4" x2="14" y2="24" stroke="black" stroke-width="3"/></svg>'
)


def psd(side: int = 32) -> bytes:
    """A raw 8-bit greyscale Photoshop file (Pillow reads PSD; the service must not)."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, side, side, 8, 1)  # v1, 1 channel, grey
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers: empty
    return head + sections + struct.pack(">H", 0) + drawn_one(side).tobytes()


def pillow_only_formats() -> dict[str, bytes]:
    """Formats Pillow decodes that are not on the allow-list: ICO, PSD, PCX, TGA, XBM."""
    one = drawn_one(32)
    return {
        "ico": encode(one, "ICO"),
        "psd": psd(),
        "pcx": encode(one, "PCX"),
        "tga": encode(one, "TGA"),
        "xbm": encode(one.convert("1"), "XBM"),
    }


def allowed_formats() -> dict[str, bytes]:
    """The same drawn "1" in every allowed format: PNG, JPEG, GIF, BMP, TIFF, WebP, PNM."""
    one = drawn_one()
    return {
        "png": encode(one, "PNG"),
        "jpeg": encode(one, "JPEG", quality=90),
        "gif": encode(one, "GIF"),
        "bmp": encode(one, "BMP"),
        "tiff": encode(one, "TIFF"),
        "webp": encode(one, "WEBP", lossless=True),
        "pnm": encode(one, "PPM"),  # a PGM for mode L
    }


# --- polyglots ---------------------------------------------------------------------------------

SCRIPT = b"<html><script>alert(document.domain)</script></html>"
PHP = b"<?php system($_GET['c']); ?>"


def polyglots() -> dict[str, bytes]:
    """Files that are two things at once: an image with HTML/PHP after it, or HTML/JS in front."""
    one = drawn_one()
    return {
        "png+html": encode(one, "PNG") + SCRIPT,
        "jpeg+php": encode(one, "JPEG", quality=90) + PHP,
        "html+png": SCRIPT + encode(one, "PNG"),
        # GIF89a, then "/*" as the width (10799) and a JS comment: a file that is also JS.
        "gif/js": b"GIF89a/*\x0a\x00\x00\x00\x00*/=alert(document.domain);//" + b"\0" * 32 + b";",
    }


# --- many pages, truncated, empty ----------------------------------------------------------------


def many_page_tiff(pages: int, side: int = 28, next_after_last: int = 0) -> bytes:
    """A little-endian TIFF of ``pages`` 8-bit pages that all show the same drawn "1".

    Each page is one 102-byte IFD (8 tags) chained to the next and pointing at one shared strip:
    ~49,000 pages fit in 5 MB. ``next_after_last`` is the last IFD's next-IFD offset (0 = none;
    anything else is a broken chain that only a reader walking every page ever follows).
    """
    strip_at = 8
    ifd_at = strip_at + side * side
    tags = [  # (tag, type SHORT=3 / LONG=4, value), sorted by tag as TIFF requires
        (256, 3, side),  # ImageWidth
        (257, 3, side),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: black is zero
        (273, 4, strip_at),  # StripOffsets
        (278, 3, side),  # RowsPerStrip
        (279, 4, side * side),  # StripByteCounts
    ]
    entries = b"".join(
        struct.pack("<HHII" if kind == 4 else "<HHIH2x", tag, kind, 1, value)
        for tag, kind, value in tags
    )
    ifd_size = 2 + len(entries) + 4
    out = [b"II*\x00" + struct.pack("<I", ifd_at), drawn_one(side).tobytes()]
    for i in range(pages):
        nxt = ifd_at + (i + 1) * ifd_size if i + 1 < pages else next_after_last
        out.append(struct.pack("<H", len(tags)) + entries + struct.pack("<I", nxt))
    return b"".join(out)


def truncated() -> dict[str, bytes]:
    """A PNG and a JPEG cut in the middle of their pixel data."""
    png = encode(drawn_one(), "PNG")
    jpeg = encode(drawn_one(), "JPEG", quality=90)
    return {"png": png[: len(png) // 2], "jpeg": jpeg[: len(jpeg) // 2]}
