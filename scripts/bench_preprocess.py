"""Time lenet.preprocess step by step and end to end, next to the time just to decode the image.

python scripts/bench_preprocess.py [--data-dir data] [--repeat 300] [--json PATH]

Two inputs, as the issue measures them: a 280x280 canvas PNG (dark ink on white, as the drawing
page sends it; ``lenet.bench.serve_load.canvas_png``) and a 640x480 JPEG photo
(``lenet.bench.image_path.synthetic_photo``), both of MNIST test digit 0. Prints a markdown table of
median milliseconds. Works against an older tree too (``PYTHONPATH=/old/src``): steps that do not
exist there are left out. Also times a 2-thread pool over both inputs with OpenCV's own threads
at 1 and 2 (``cv2.setNumThreads``), to back the module's choice.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from statistics import median

import numpy as np
import torch
from PIL import Image

import lenet.preprocess as P
from lenet.bench.image_path import synthetic_photo
from lenet.bench.serve_load import canvas_png
from lenet.data import load_split


def timed(fn, repeat: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * median(times)


def decode_only(data: bytes) -> dict:
    """Callables that only decode ``data``: Pillow (as stored, and to luma) and OpenCV."""
    import cv2

    buf = np.frombuffer(data, np.uint8)

    def pillow(mode=None):
        im = Image.open(io.BytesIO(data))
        if mode and im.format == "JPEG":
            im.draft(mode, im.size)
        im.load()
        return im

    return {
        "decode: Pillow, as stored": pillow,
        "decode: Pillow, luma (JPEG draft L)": lambda: pillow("L"),
        "decode: OpenCV imdecode, gray": lambda: cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE),
        "decode: OpenCV imdecode, colour": lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR),
    }


def steps(data: bytes) -> dict:
    """Callables for each step of the pipeline on ``data`` (inputs precomputed)."""
    if hasattr(P, "_load"):  # the OpenCV tree: luma straight from the JPEG decoder
        load = lambda: P._load(data, P.MAX_PIXELS, gray=True)  # noqa: E731
    else:
        load = lambda: P.load_image(data)  # noqa: E731
    im = load()
    gray = P.to_gray(im)
    dark = P.ink_is_dark(gray)
    x = 1.0 - gray if dark else gray
    r = P.remove_background(x)
    d = P.find_digit(r)
    y0, x0, y1, x1 = d.box
    patch = P.scale_to_box(d.ink[y0:y1, x0:x1])
    return {
        "load_image (decode, checks, EXIF)": load,
        "to_gray": lambda: P.to_gray(im),
        "ink_is_dark": lambda: P.ink_is_dark(gray),
        "remove_background": lambda: P.remove_background(x),
        "find_digit": lambda: P.find_digit(r),
        "scale_to_box": lambda: P.scale_to_box(d.ink[y0:y1, x0:x1]),
        "place_by_center_of_mass": lambda: P.place_by_center_of_mass(patch),
        "preprocess(bytes), end to end": lambda: P.preprocess(data),
    }


def pool_rate(inputs: list[bytes], threads: int, n: int = 400) -> float:
    """Images/s through ``preprocess`` in a ``threads``-thread pool."""
    work = [inputs[i % len(inputs)] for i in range(n)]
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(P.preprocess, work[:20]))
        t0 = time.perf_counter()
        list(ex.map(P.preprocess, work))
        return n / (time.perf_counter() - t0)


def main() -> int:
    """Measure, print the markdown table, optionally save JSON."""
    import cv2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    torch.set_num_threads(1)
    digit = load_split("test", args.data_dir).images[0].numpy()
    inputs = {"canvas 280x280 PNG": canvas_png(digit), "photo 640x480 JPEG": synthetic_photo(digit)}
    rows: dict[str, dict[str, float]] = {}
    for name, data in inputs.items():
        for label, fn in {**decode_only(data), **steps(data)}.items():
            rows.setdefault(label, {})[name] = timed(fn, args.repeat)
    opencv_threads = cv2.getNumThreads()
    for n in (1, 2):
        cv2.setNumThreads(n)
        label = f"2-thread pool, cv2.setNumThreads({n}), images/s (canvas and photo alternating)"
        rows[label] = {"canvas 280x280 PNG": pool_rate(list(inputs.values()), 2)}
    cv2.setNumThreads(opencv_threads)
    names = list(inputs)
    print(f"lenet.preprocess from {P.__file__}; median ms over {args.repeat} calls")
    print("| step | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for label, vals in rows.items():
        print(
            f"| {label} | "
            + " | ".join(f"{vals[n]:.3f}" if n in vals else "" for n in names)
            + " |"
        )
    if args.json:
        from lenet.fileio import atomic_write_text

        out = {"module": P.__file__, "repeat": args.repeat, "median_ms": rows}
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
