"""Benchmark 6, ``image-path``: outside images end to end (preprocess, ``lenet predict``, ``serve``).

The rows are the image-path issue's table, measured in one run on this machine:

- one 280x280 canvas PNG (what the drawing page sends) through :func:`lenet.preprocess.preprocess`;
- one 640x480 JPEG photo through it, next to the time Pillow and OpenCV take just to decode it;
- ``lenet predict DIR`` (a fresh process, start-up included) on 5,600 small PNG scans;
- ``lenet serve`` under the load client of :mod:`lenet.bench.serve_load` at concurrency 1, 16, 64.

Figures, not assertions.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lenet.bench.records import row
from lenet.data import load_split

TARGETS = {
    "canvas_ms": 1.0,
    "photo_ms": 3.0,
    "photo_over_decode": 2.0,
    "predict_images_per_s": 2000,
    "serve_requests_per_s": 1000,
    "serve_p99_ms": 50.0,
    "serve_c1_p50_ms": 3.0,
}
SCANS = 5600
SCAN_SIDE = 100


def synthetic_photo(digit: np.ndarray, size: tuple[int, int] = (640, 480), seed: int = 0) -> bytes:
    """A phone-photo-like JPEG of one MNIST digit: dark ink on uneven, noisy light paper."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    ink = np.asarray(Image.fromarray(digit).resize((h // 2, h // 2), Image.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paper = 200 + 30 * (xx / w) - 20 * (yy / h) + rng.normal(0, 4, (h, w))
    top, left = h // 4, (w - h // 2) // 2
    paper[top : top + h // 2, left : left + h // 2] -= ink * 0.6
    rgb = np.repeat(np.clip(paper, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def scan_png(digit: np.ndarray, rng: np.random.Generator, side: int = SCAN_SIDE) -> bytes:
    """A small scan of one MNIST digit: dark ink on off-white, slightly noisy paper, PNG bytes."""
    from PIL import Image

    size = int(rng.integers(side * 5 // 10, side * 8 // 10))
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR), np.float32)
    paper = rng.normal(rng.uniform(215, 245), 3.0, (side, side)).astype(np.float32)
    y, x = (int(v) for v in rng.integers(0, side - size + 1, 2))
    paper[y : y + size, x : x + size] -= ink * rng.uniform(0.6, 0.85)
    buf = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_scans(folder: Path, n: int, data_dir: str) -> dict[str, int]:
    """``n`` scans of MNIST test digits as ``folder/NNNNN.png``; returns {file name: label}."""
    test = load_split("test", data_dir)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(n):
        j = i % len(test)
        name = f"{i:05d}.png"
        (folder / name).write_bytes(scan_png(test.images[j].numpy(), rng))
        labels[name] = int(test.labels[j])
    return labels


def _p50(fn, n: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of ``n`` calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def bench_image_path(ctx: dict) -> dict:
    """The image-path table: preprocess, predict on a folder, serve at three concurrencies."""
    from lenet.bench.serve_load import canvas_png
    from lenet.preprocess import preprocess

    quick = ctx["quick"]
    test = load_split("test", ctx["data_dir"])
    rows = []

    def ms_row(name, p, target_key=None, **extra):
        target = TARGETS.get(target_key)
        rows.append(
            row(
                name,
                round(p[0], 3),
                "ms p50",
                f"<= {target} ms" if target else "",
                None if target is None else p[0] <= target,
                p99_ms=round(p[1], 3),
                **extra,
            )
        )

    calls = 20 if quick else 300
    canvas = canvas_png(test.images[0].numpy())
    ms_row("preprocess: 280x280 canvas PNG", _p50(lambda: preprocess(canvas), calls), "canvas_ms")
    photo = synthetic_photo(test.images[0].numpy())
    t_photo = _p50(lambda: preprocess(photo), calls)
    ms_row("preprocess: 640x480 JPEG photo", t_photo, "photo_ms")
    decode = _decode_times(photo, calls)
    for name, p in decode.items():
        ms_row(f"decode only: 640x480 JPEG, {name}", p)
    for name, p in decode.items():
        ratio = t_photo[0] / p[0]
        rows.append(
            row(
                f"photo preprocess / decode only ({name})",
                round(ratio, 2),
                "x",
                f"<= {TARGETS['photo_over_decode']}x",
                ratio <= TARGETS["photo_over_decode"],
            )
        )
    rows += _predict_folder(ctx, 300 if quick else SCANS)
    rows += _serve(ctx, quick)
    return {"rows": rows}


def _decode_times(data: bytes, calls: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms to decode ``data`` to grayscale pixels with Pillow and with OpenCV."""
    from PIL import Image

    out = {}

    def pil():
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)  # its pixels as stored (RGB)

    out["Pillow, as stored"] = _p50(pil, calls)
    try:
        import cv2
    except ImportError:
        return out
    buf = np.frombuffer(data, np.uint8)
    out["OpenCV, straight to gray"] = _p50(lambda: cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), calls)
    return out


def _predict_folder(ctx: dict, n: int) -> list[dict]:
    """``lenet predict DIR --format csv`` in a fresh process on ``n`` scans: images/s, accuracy."""

    folder = Path(ctx["workdir"]) / "scans"
    labels = write_scans(folder, n, ctx["data_dir"])
    cmd = [sys.executable, "-m", "lenet", "predict", str(folder), "--format", "csv"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        note = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
        return [row(f"lenet predict DIR ({n} scans)", None, "img/s", note=note, meets=False)]
    steady = _steady_rate(sorted(folder.glob("*.png")))
    answers = list(csv.DictReader(io.StringIO(proc.stdout)))
    right = sum(a["digit"] == str(labels[Path(a["path"]).name]) for a in answers)
    rate = n / wall
    target = TARGETS["predict_images_per_s"]
    return [
        row(
            f"lenet predict DIR: {n} PNG scans {SCAN_SIDE}x{SCAN_SIDE}, start-up included",
            round(rate),
            "img/s",
            f">= {target:,}",
            rate >= target,
            wall_s=round(wall, 2),
            accuracy=round(right / n, 4),
        ),
        row(
            "  the same files, workers and model already started (in process)",
            round(steady),
            "img/s",
        ),
    ]


def _steady_rate(files: list[Path]) -> float:
    """Images/s of ``Predictor.predict`` on ``files`` with the worker processes already up (what
    ``lenet predict`` does once it has started)."""
    import os

    import torch

    from lenet.predictor import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as lenet predict does: the cores belong to the workers
    predictor = Predictor(workers=os.cpu_count() or 1)
    try:
        predictor.predict(files[:256])  # starts the workers and warms everything
        t = time.perf_counter()
        predictor.predict(files)
        return len(files) / (time.perf_counter() - t)
    finally:
        predictor.close()
        torch.set_num_threads(threads)


def _serve(ctx: dict, quick: bool) -> list[dict]:
    """``lenet serve`` (default flags) under load at concurrency 1, 16 and 64."""

    try:
        from lenet.bench.serve_load import ServerProcess, make_bodies, run_benchmark
    except ImportError as e:  # the serve extra is not installed
        return [row("lenet serve", None, "req/s", note=f"skipped: {e}")]
    bodies = make_bodies(20 if quick else 200, ctx["data_dir"])
    rows = []
    with ServerProcess() as server:
        for c in (1, 16, 64):
            n = 50 if quick else (1000 if c == 1 else 4000)
            r = run_benchmark(server.url, bodies, n, c)
            ok = r.errors == 0
            if c == 1:
                target = TARGETS["serve_c1_p50_ms"]
                value, unit, meets = r.p50_ms, "ms p50", ok and r.p50_ms <= target
                target_text = f"<= {target} ms, 0 errors"
            else:
                value, unit = r.requests_per_s, "req/s"
                meets = ok and r.requests_per_s >= TARGETS["serve_requests_per_s"]
                meets = meets and r.p99_ms <= TARGETS["serve_p99_ms"]
                target_text = (
                    f">= {TARGETS['serve_requests_per_s']:,} req/s, p99 <= "
                    f"{TARGETS['serve_p99_ms']:g} ms, 0 errors"
                )
            rows.append(
                row(
                    f"lenet serve: concurrency {c}, {n} POSTs of canvas PNGs",
                    value,
                    unit,
                    target_text if c != 64 else "",
                    meets if c != 64 else None,
                    requests_per_s=r.requests_per_s,
                    p50_ms=r.p50_ms,
                    p99_ms=r.p99_ms,
                    errors=r.errors,
                    accuracy=r.accuracy,
                )
            )
    return rows
