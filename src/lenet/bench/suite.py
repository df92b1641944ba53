"""``lenet bench``: the six performance benchmarks, measured side by side in one run.

1. ``train-throughput``  training images/s of ``lenet train``'s own loop, per model (fast recipe)
   and for the note recipe, next to the study note's DataLoader path (ratio printed);
2. ``time-to-accuracy``  a fresh ``lenet train`` process: wall from start to its saved checkpoint,
   and that checkpoint's test accuracy;
3. ``inference-throughput``  batched prediction (batch 1024) on the test set: eager PyTorch and
   ONNX Runtime;
4. ``predict-latency``  one preprocessed image in-process (p50/p99), and one photo end to end;
5. ``data-load``  seconds to read MNIST from disk into (normalized, on-device) tensors;
6. ``image-path``  outside images: preprocessing, ``lenet predict`` on a folder, ``lenet serve``
   under load (:mod:`lenet.bench.image_path`).

Figures, not assertions. Every timing on CUDA synchronizes before the clock is read.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lenet import kernels
from lenet._version import __version__
from lenet.bench.image_path import bench_image_path, synthetic_photo
from lenet.bench.records import row
from lenet.checkpoint import load_model, make_payload, save_checkpoint
from lenet.config import TrainConfig, make_config
from lenet.data import load_split
from lenet.errors import LenetError
from lenet.models import list_models, model_config
from lenet.normalization import TOTENSOR, normalize
from lenet.ops import prepare_for_device
from lenet.runtime import resolve_device

log = logging.getLogger(__name__)

BENCHMARKS = (
    "train-throughput",
    "time-to-accuracy",
    "inference-throughput",
    "predict-latency",
    "data-load",
    "image-path",
)
# The targets for the 2-core CPU box (the GPU target is time-to-99% < 1 s of training).
TARGETS = {
    "train_images_per_s": 60_000,
    "seed_speedup_vs_note": 2.0,
    "time_to_accuracy_s": 5.0,
    "test_accuracy": 0.990,
    "inference_images_per_s": 150_000,
    "latency_p50_ms": 1.0,
}
INFER_BATCH = 1024


# ---------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a clock read measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: CPU, cores, load, library versions, threads, GPU."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "lenet": __version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    return float(np.percentile(np.asarray(values), q))


def time_calls(fn: Callable[[], object], n: int, device: torch.device, warmup: int = 10) -> list:
    """Seconds per call of ``fn`` over ``n`` calls (after ``warmup``), synchronized per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


# ---------------------------------------------------------------------------- 1. training


class NoteMNIST(torch.utils.data.Dataset):
    """The study note's data path without torchvision: ``datasets.MNIST`` makes a PIL image per
    sample and ``transforms.ToTensor()`` turns it into a float tensor in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i].numpy())  # what torchvision's MNIST returns ("L")
        return self.to_tensor(img), int(self.labels[i])

    @staticmethod
    def to_tensor(pic) -> torch.Tensor:
        """``ToTensor()`` for a mode-L PIL image: uint8 HxW -> float (1, H, W) / 255."""
        a = np.array(pic, np.uint8, copy=True)
        t = torch.from_numpy(a).view(pic.size[1], pic.size[0], 1).permute(2, 0, 1).contiguous()
        return t.to(dtype=torch.float32).div(255)


def note_train_throughput(
    data_dir: str, device: torch.device, n_images: int, warmup_batches: int = 20
) -> float:
    """Images/s of the note's own training loop (its DataLoader, its step, its ``.item()`` calls)
    over the first ``n_images`` training images, batch 16, shuffled, on PyTorch's own operators
    (:func:`lenet.kernels.turned_off`), as the note runs it."""
    with kernels.turned_off():
        return _note_train_throughput(data_dir, device, n_images, warmup_batches)


def _note_train_throughput(
    data_dir: str, device: torch.device, n_images: int, warmup_batches: int
) -> float:
    from lenet.models import create_model

    split = load_split("train", data_dir)
    ds = NoteMNIST(
        split.images[: n_images + 16 * warmup_batches],
        split.labels[: n_images + 16 * warmup_batches],
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    torch.manual_seed(0)
    model = create_model("lenet5").to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    loss, current, n = 0.0, 0.0, 0
    t0 = seen = None
    for batch, (X, y) in enumerate(loader):
        if batch == warmup_batches:
            sync(device)
            t0, seen = time.perf_counter(), 0
        X, y = X.to(device), y.to(device)
        output = model(X)
        cur_loss = loss_fn(output, y)
        _, pred = torch.max(output, axis=1)
        cur_acc = torch.sum(y == pred) / output.shape[0]
        optimizer.zero_grad()
        cur_loss.backward()
        optimizer.step()
        loss += cur_loss.item()
        current += cur_acc.item()
        n += 1
        if seen is not None:
            seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - t0)


def engine_train_throughput(
    recipe: str,
    model: str | None,
    data_dir: str,
    device: torch.device,
    n_images: int,
    workdir: Path,
    threads: int,
) -> dict:
    """Images/s of ``lenet train``'s own epoch loop: two epochs over ``n_images`` images, the
    second one timed (the engine times the loop alone, not evaluation or checkpoint writes)."""
    from lenet.engine import train

    overrides = dict(
        epochs=2,
        limit=n_images,
        select_on="last",
        val_size=0,
        data_dir=data_dir,
        device=device.type,
        threads=threads,
        out=str(workdir),
        name=f"train-{recipe}-{model or 'default'}",
    )
    if model:
        overrides["model"] = model
    cfg = make_config(recipe, **overrides)
    res = train(cfg, overwrite=True, progress=False)
    return {"images_per_s": res.history[-1].images_per_s, "batch_size": cfg.batch_size}


def bench_train_throughput(ctx: dict) -> dict:
    """Benchmark 1: ours per model (fast recipe), note recipe, the note's path, and the ratio."""
    quick, device = ctx["quick"], ctx["device"]
    n_fast = 1024 if quick else 30_000
    n_seed = 256 if quick else 8_000
    rows = []
    models = ctx.get("models") or list_models()
    fast_model = TrainConfig().model
    for name in models:
        r = engine_train_throughput(
            "fast", name, ctx["data_dir"], device, n_fast, ctx["workdir"], ctx["threads"]
        )
        is_default = name == fast_model
        rows.append(
            row(
                f"{name} (fast recipe, batch {r['batch_size']})",
                round(r["images_per_s"]),
                "img/s",
                f">= {TARGETS['train_images_per_s']:,}" if is_default else "",
                r["images_per_s"] >= TARGETS["train_images_per_s"] if is_default else None,
                epoch_s=60_000 / r["images_per_s"],
            )
        )
    seed = engine_train_throughput(
        "note", None, ctx["data_dir"], device, n_seed, ctx["workdir"], ctx["threads"]
    )
    note = note_train_throughput(ctx["data_dir"], device, n_seed, warmup_batches=5 if quick else 20)
    ratio = seed["images_per_s"] / note
    rows.append(
        row(
            "note recipe (lenet5, batch 16), ours",
            round(seed["images_per_s"]),
            "img/s",
            epoch_s=60_000 / seed["images_per_s"],
        )
    )
    rows.append(
        row("note recipe, the note's DataLoader path", round(note), "img/s", epoch_s=60_000 / note)
    )
    rows.append(
        row(
            "note recipe speed-up, ours / note's",
            round(ratio, 2),
            "x",
            f">= {TARGETS['seed_speedup_vs_note']}x",
            ratio >= TARGETS["seed_speedup_vs_note"],
        )
    )
    return {"rows": rows, "images_fast": n_fast, "images_seed": n_seed}


# ---------------------------------------------------------------------------- 2. time to accuracy


def bench_time_to_accuracy(ctx: dict) -> dict:
    """Benchmark 2: ``python -m lenet train`` (default recipe) in a fresh process, timed from
    just before the process starts to the modification time of its final ``best.pt``."""
    from lenet.evaluation import evaluate

    out = ctx["workdir"] / "tta"
    cmd = [sys.executable, "-m", "lenet", "-q", "train", "--name", "run", "--overwrite", "--json"]
    cmd += ["--data-dir", ctx["data_dir"], "--out", str(out), "--device", ctx["device"].type]
    if ctx["threads"]:
        cmd += ["--threads", str(ctx["threads"])]
    if ctx["quick"]:
        cmd += ["--epochs", "1", "--limit", "2048", "--val-size", "500"]  # >= 8 one-cycle steps
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    process_s = time.time() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LenetError(f"time-to-accuracy: lenet train failed ({tail})")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    best = Path(summary["best"])
    to_ckpt = best.stat().st_mtime - start
    report = evaluate(best, data_dir=ctx["data_dir"], device=ctx["device"].type, plots=False)
    ctx["trained_checkpoint"] = best
    with open(best.parent / "metrics.csv") as f:  # the engine's own per-epoch loop times
        epochs = list(csv.DictReader(f))[: int(summary["best_epoch"])]
    train_s = sum(float(e["seconds"]) for e in epochs)
    rows = [
        row(
            "wall, process start -> saved best.pt",
            round(to_ckpt, 2),
            "s",
            f"<= {TARGETS['time_to_accuracy_s']} s",
            to_ckpt <= TARGETS["time_to_accuracy_s"]
            and report.accuracy >= TARGETS["test_accuracy"],
        ),
        row(
            "test accuracy of that best.pt",
            round(report.accuracy, 4),
            "",
            f">= {TARGETS['test_accuracy']}",
            report.accuracy >= TARGETS["test_accuracy"],
        ),
        row(f"training loops alone ({len(epochs)} epochs)", round(train_s, 2), "s"),
        row("wall, whole process (curves.png, exit)", round(process_s, 2), "s"),
    ]
    return {"rows": rows, "command": " ".join(cmd[1:]), "best_epoch": summary["best_epoch"]}


# ---------------------------------------------------------------------------- 3./4. inference


def _checkpoint_for_inference(ctx: dict) -> Path:
    """The checkpoint benchmark 2 trained, or a freshly initialised default model (inference
    speed does not depend on the weights' values)."""
    if ctx.get("trained_checkpoint"):
        return ctx["trained_checkpoint"]
    from lenet.models import create_model, get_spec

    name = TrainConfig().model
    torch.manual_seed(0)
    model = create_model(name)
    path = ctx["workdir"] / "init.pt"
    save_checkpoint(
        path, make_payload(model, name, model_config(name), get_spec(name).normalization)
    )
    return path


def _onnx_runner(ctx: dict, ckpt: Path):
    """An :class:`~lenet.export.OnnxRunner` on ``ckpt`` exported once per run (None if
    onnxruntime is missing, with the reason in ``ctx``)."""
    if "onnx_runner" not in ctx:
        try:
            from lenet.export import OnnxRunner, export_onnx

            path = export_onnx(ckpt, ctx["workdir"] / "model.onnx")
            ctx["onnx_runner"] = OnnxRunner(path, threads=ctx["threads"])
        except LenetError as e:
            ctx["onnx_runner"], ctx["onnx_skip"] = None, str(e)
    return ctx["onnx_runner"]


def bench_inference_throughput(ctx: dict) -> dict:
    """Benchmark 3: images/s over the test set in batches of 1024 (best of several passes)."""
    device, quick = ctx["device"], ctx["quick"]
    ckpt = _checkpoint_for_inference(ctx)
    lm = load_model(ckpt, device)
    test = load_split("test", ctx["data_dir"])
    n = 2048 if quick else len(test)
    x = normalize(test.images[:n], lm.normalization).to(device)
    passes = 1 if quick else 5

    def throughput(fn, xin) -> float:
        fn(xin[:INFER_BATCH])  # warm-up (oneDNN primitive creation, cuDNN autotune)
        best = float("inf")
        for _ in range(passes):
            sync(device)
            t = time.perf_counter()
            for i in range(0, n, INFER_BATCH):
                fn(xin[i : i + INFER_BATCH])
            sync(device)
            best = min(best, time.perf_counter() - t)
        return n / best

    def eager(model):
        def f(xb):
            with torch.inference_mode():
                return model(xb)

        return f

    target = f">= {TARGETS['inference_images_per_s']:,}"
    with kernels.turned_off():  # PyTorch's own operators, NCHW
        plain = throughput(eager(lm.model), x)
    fast_model = prepare_for_device(load_model(ckpt, device).model, device)
    x_fast = x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x
    fast = throughput(eager(fast_model), x_fast)
    best_torch = max(plain, fast)
    rows = [
        row(
            f"eager PyTorch, its own operators ({device.type}), batch {INFER_BATCH}",
            round(plain),
            "img/s",
        ),
        row(
            f"eager PyTorch, channels-last + fused kernels, lenet.ops ({device.type})",
            round(fast),
            "img/s",
            target,
            best_torch >= TARGETS["inference_images_per_s"],
        ),
    ]
    runner = _onnx_runner(ctx, ckpt)
    if runner is not None:
        x_np = x.cpu().numpy()
        ort = throughput(runner, x_np)
        rows.append(
            row(
                f"ONNX Runtime (CPU), batch {INFER_BATCH}",
                round(ort),
                "img/s",
                target,
                ort >= TARGETS["inference_images_per_s"],
            )
        )
    else:
        rows.append(row("ONNX Runtime", None, "img/s", note=f"skipped: {ctx['onnx_skip']}"))
    return {"rows": rows, "images": n, "checkpoint": str(ckpt)}


def bench_predict_latency(ctx: dict) -> dict:
    """Benchmark 4: p50/p99 of one preprocessed image through the model (eager, optimized eager,
    ONNX Runtime), and one photo through the full preprocessing (``lenet.predictor``)."""
    device, quick = ctx["device"], ctx["quick"]
    calls = 50 if quick else 1000
    ckpt = _checkpoint_for_inference(ctx)
    lm = load_model(ckpt, device)
    test = load_split("test", ctx["data_dir"])
    x1 = normalize(test.images[:1], lm.normalization).to(device)
    target = f"p50 <= {TARGETS['latency_p50_ms']} ms"
    rows = []

    def add(label: str, times: list, with_target: bool = True) -> None:
        p50, p99 = 1e3 * percentile(times, 50), 1e3 * percentile(times, 99)
        meets = p50 <= TARGETS["latency_p50_ms"] if with_target else None
        rows.append(
            row(
                label,
                round(p50, 3),
                "ms p50",
                target if with_target else "",
                meets,
                p99_ms=round(p99, 3),
                calls=len(times),
            )
        )

    def eager(model, xin):
        def f():
            with torch.inference_mode():
                return model(xin).argmax(1).cpu()  # the answer reaches the host

        return f

    with kernels.turned_off():  # PyTorch's own operators, NCHW
        plain_times = time_calls(eager(lm.model, x1), calls, device)
    add(f"1 preprocessed image, eager PyTorch ({device.type})", plain_times)
    fast_model = prepare_for_device(load_model(ckpt, device).model, device)
    add(
        f"1 preprocessed image, optimized eager ({device.type})",
        time_calls(eager(fast_model, x1), calls, device),
    )
    runner = _onnx_runner(ctx, ckpt)
    if runner is not None:
        x_np = x1.cpu().numpy()
        add(
            "1 preprocessed image, ONNX Runtime (CPU)",
            time_calls(lambda: runner(x_np).argmax(1), calls, device),
        )
    from lenet.predictor import Predictor

    photo = synthetic_photo(test.images[0].numpy())
    pred = Predictor(ckpt, device=device.type)
    n_photo = 5 if quick else 50
    add(
        "1 photo (640x480 JPEG) through Predictor",
        time_calls(lambda: pred.predict_one(photo), n_photo, device, warmup=2),
        with_target=False,
    )
    return {"rows": rows}


# ---------------------------------------------------------------------------- 5. data load


def bench_data_load(ctx: dict) -> dict:
    """Benchmark 5: read + validate both splits from disk, normalize, move to the device."""
    from lenet import data as data_mod

    device = ctx["device"]
    reps = 2 if ctx["quick"] else 5
    times = []
    for _ in range(reps):
        data_mod._CACHE.clear()  # load_split caches per process; time the real read each time
        sync(device)
        t = time.perf_counter()
        tr, te = load_split("train", ctx["data_dir"]), load_split("test", ctx["data_dir"])
        xs = (normalize(tr.images, TOTENSOR).to(device), normalize(te.images, TOTENSOR).to(device))
        ys = (tr.labels.to(device), te.labels.to(device))
        sync(device)
        times.append(time.perf_counter() - t)
        del xs, ys
    rows = [
        row(
            f"MNIST files -> normalized tensors on {device.type} (70,000 images)",
            round(statistics.median(times), 3),
            "s",
            best_s=round(min(times), 3),
        )
    ]
    return {"rows": rows, "repeats": reps}


# ---------------------------------------------------------------------------- the suite

RUNNERS: dict[str, Callable[[dict], dict]] = {
    "train-throughput": bench_train_throughput,
    "time-to-accuracy": bench_time_to_accuracy,
    "inference-throughput": bench_inference_throughput,
    "predict-latency": bench_predict_latency,
    "data-load": bench_data_load,
    "image-path": bench_image_path,
}


def run_benchmarks(
    only: list[str] | None = None,
    *,
    data_dir: str = "data",
    device: str = "auto",
    threads: int = 0,
    quick: bool = False,
    models: list[str] | None = None,
    workdir: str | os.PathLike | None = None,
    on_result: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the chosen benchmarks (all by default) in the suite's order; returns the JSON record."""
    names = list(only) if only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise LenetError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    if threads < 0:
        raise LenetError("--threads must not be negative")
    for m in models or []:
        model_config(m)  # clear error for an unknown model name
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    load_split("train", data_dir)  # fetch/verify once, outside every timing
    record = {
        "machine": machine_info(dev),
        "settings": {"quick": quick, "threads": threads, "data_dir": str(data_dir)},
        "benchmarks": {},
    }
    with tempfile.TemporaryDirectory(prefix="lenet-bench-", dir=workdir) as tmp:
        ctx = dict(
            data_dir=str(data_dir),
            device=dev,
            threads=threads,
            quick=quick,
            models=models,
            workdir=Path(tmp),
        )
        for name in BENCHMARKS:
            if name not in names:
                continue
            log.info("benchmark %s ...", name)
            t = time.perf_counter()
            result = RUNNERS[name](ctx)
            result["seconds"] = round(time.perf_counter() - t, 2)
            record["benchmarks"][name] = result
            if on_result is not None:
                on_result(name, result)
    return record


def format_table(record: dict) -> str:
    """The results as an aligned text table, one row per figure."""
    lines = []
    m = record["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    lines.append(
        f"machine: {m['cpu']}, {m['usable_cores']} usable cores (load {m['load_average_1m']}), torch {m['torch']}, {m['torch_threads']} threads{gpu}"
    )
    header = ("benchmark", "figure", "value", "target", "")
    body = []
    for bench, res in record["benchmarks"].items():
        for r in res["rows"]:
            v = r["value"]
            if v is None:
                value = r.get("note", "-")
            elif isinstance(v, float):
                value = f"{v:,.3g} {r['unit']}" if abs(v) < 100 else f"{v:,.0f} {r['unit']}"
            else:
                value = f"{v:,} {r['unit']}"
            if "p99_ms" in r:
                value += f" (p99 {r['p99_ms']:.3g})"
            mark = {True: "met", False: "not met", None: ""}[r["meets"]]
            body.append((bench, r["name"], value.strip(), r["target"], mark))
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    for i, line in enumerate([header, *body]):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
