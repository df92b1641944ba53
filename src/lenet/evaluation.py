"""Evaluate a checkpoint on its dataset (``lenet eval``); draw test images with predictions (``lenet show``)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lenet.checkpoint import LoadedModel, load_model, output_dir_for
from lenet.data import DEFAULT_DATA_DIR, get_dataset, load_split
from lenet.errors import LenetError
from lenet.normalization import normalize
from lenet.runtime import loss_and_accuracy, predict_logits, resolve_device

log = logging.getLogger(__name__)


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, k: int = 10) -> np.ndarray:
    """k x k counts, rows = actual class, columns = predicted class."""
    return np.bincount(actual * k + predicted, minlength=k * k).reshape(k, k)


def checkpoint_dataset(lm: LoadedModel) -> str:
    """The dataset a checkpoint was trained on (its ``train_config``); MNIST for older ones."""
    return (lm.checkpoint.get("train_config") or {}).get("dataset") or "mnist"


def per_class(cm: np.ndarray, classes: tuple[str, ...] | None = None) -> list[dict]:
    """Precision, recall and support (and the class's name when given) from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    pred_tot, act_tot = cm.sum(0), cm.sum(1)
    out = []
    for c in range(cm.shape[0]):
        out.append(
            {
                "class": c,
                **({"name": classes[c]} if classes else {}),
                "precision": float(tp[c] / pred_tot[c]) if pred_tot[c] else 0.0,
                "recall": float(tp[c] / act_tot[c]) if act_tot[c] else 0.0,
                "support": int(act_tot[c]),
            }
        )
    return out


REJECT_AT = (0.0, 0.01, 0.05, 0.10)  # fractions of inputs refused, least confident first
ERROR_TARGETS = (0.005, 0.001)  # error rates on the answered inputs


def rejection_curve(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Error-vs-rejection: refuse the least confident inputs, measure error on the rest.

    Returns ``error_at`` (rejected fraction -> error rate on the answered ones), ``rejection_for``
    (target error -> the smallest rejected fraction reaching it, and the confidence threshold
    that does it, for ``--min-confidence``) and ``curve`` (points for the picture).
    """
    n = len(confidence)
    order = np.argsort(-confidence, kind="stable")  # most confident first
    wrong_cum = np.cumsum(~correct[order])  # errors among the k+1 most confident
    kept = np.arange(1, n + 1)
    err = wrong_cum / kept  # error rate when answering the k+1 most confident
    conf_sorted = confidence[order]

    def at(rejected: float) -> float:
        k = max(1, n - int(round(rejected * n)))
        return float(err[k - 1])

    rejection_for = {}
    for target in ERROR_TARGETS:
        ok = np.flatnonzero(err <= target)
        if len(ok):
            k = int(ok.max()) + 1
            rejection_for[str(target)] = {
                "rejected": 1.0 - k / n,
                "threshold": float(conf_sorted[k - 1]),
            }
        else:
            rejection_for[str(target)] = {"rejected": 1.0, "threshold": None}
    steps = np.unique(np.linspace(1, n, min(n, 400)).round().astype(int))
    return {
        "error_at": {str(r): at(r) for r in REJECT_AT},
        "rejection_for": rejection_for,
        "curve": {
            "rejected": [float(1 - k / n) for k in steps],
            "error": [float(err[k - 1]) for k in steps],
        },
    }


@dataclass
class EvalReport:
    """Result of :func:`evaluate`: metrics plus where its pictures were written."""

    checkpoint: str
    model: str
    dataset: str
    split: str
    n: int
    loss: float
    accuracy: float
    errors: int
    per_class: list[dict]
    confusion: list[list[int]]
    classes: list[str] = field(default_factory=list)  # label -> class name
    rejection: dict = field(default_factory=dict)  # see rejection_curve
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return dict(self.__dict__)


def evaluate(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    dataset: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 1000,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
    max_errors_shown: int = 100,
) -> EvalReport:
    """Loss, accuracy, per-class precision/recall and confusion matrix of a checkpoint on a split.

    ``dataset`` defaults to the one the checkpoint was trained on. Writes ``confusion.png`` and
    ``errors.png`` (the misclassified images) into ``out_dir`` (default: the checkpoint's folder)
    unless ``plots=False``.
    """
    dev = resolve_device(device)
    lm = load_model(checkpoint, dev)
    ds = get_dataset(dataset or checkpoint_dataset(lm))
    data = load_split(split, data_dir, dataset=ds.name)
    x = normalize(data.images, lm.normalization).to(dev)
    logits = predict_logits(lm.model, x, batch_size).float().cpu()
    loss, acc = loss_and_accuracy(logits, data.labels)
    pred = logits.argmax(1).numpy()
    actual = data.labels.numpy()
    cm = confusion_matrix(actual, pred, k=logits.shape[1])
    confidence = torch.softmax(logits, 1).max(1).values.double().numpy()
    report = EvalReport(
        str(checkpoint),
        lm.name,
        ds.name,
        split,
        len(actual),
        loss,
        acc,
        int((pred != actual).sum()),
        per_class(cm, ds.classes),
        cm.tolist(),
        list(ds.classes),
        rejection_curve(confidence, pred == actual),
    )
    if plots:
        from lenet.plots import plot_confusion, plot_digit_grid, plot_rejection

        out = Path(out_dir) if out_dir else output_dir_for(checkpoint)
        report.files["confusion"] = str(
            plot_confusion(
                cm,
                out / "confusion.png",
                f"{lm.name} on {ds.title} {split}: {100 * acc:.2f}%",
                classes=ds.classes,
            )
        )
        report.files["rejection"] = str(
            plot_rejection(
                report.rejection,
                out / "rejection.png",
                f"{lm.name} on {ds.title} {split}: error vs rejection",
            )
        )
        wrong = np.flatnonzero(pred != actual)[:max_errors_shown]
        if len(wrong):
            report.files["errors"] = str(
                plot_digit_grid(
                    data.images[wrong].numpy(),
                    pred[wrong].tolist(),
                    actual[wrong].tolist(),
                    out / "errors.png",
                    title=f"{len(wrong)} of {report.errors} misclassified {split} {ds.item}s",
                    classes=ds.classes,
                )
            )
    return report


@dataclass
class PredictionGrid:
    """Result of :func:`prediction_grid`: per-image (index, predicted, actual) and the picture.

    ``predicted``/``actual`` are labels; ``classes`` maps them to names ("0".."9" for MNIST).
    """

    rows: list[dict]
    grid: Path | None
    dataset: str = "mnist"
    classes: list[str] = field(default_factory=list)


def prediction_grid(
    checkpoint: str | os.PathLike,
    *,
    n: int = 20,
    start: int = 0,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    dataset: str | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
) -> PredictionGrid:
    """The note's test.py done right: predict ``n`` test images and draw them as ONE grid picture.

    ``dataset`` defaults to the one the checkpoint was trained on.
    """
    dev = resolve_device(device)
    lm = load_model(checkpoint, dev)
    ds = get_dataset(dataset or checkpoint_dataset(lm))
    data = load_split("test", data_dir, dataset=ds.name)
    if not 0 <= start < len(data):
        raise LenetError(f"--start must be between 0 and {len(data) - 1} (the test set's size)")
    sel = slice(start, min(start + n, len(data)))
    imgs = data.images[sel]
    with torch.no_grad():
        pred = lm.model(normalize(imgs, lm.normalization).to(dev)).argmax(1).cpu().tolist()
    actual = data.labels[sel].tolist()
    rows = [
        {"index": start + i, "predicted": p, "actual": a}
        for i, (p, a) in enumerate(zip(pred, actual, strict=True))
    ]
    grid = None
    if rows:
        from lenet.plots import plot_digit_grid

        wrong = sum(p != a for p, a in zip(pred, actual, strict=True))
        path = Path(out) if out else output_dir_for(checkpoint) / "show.png"
        grid = plot_digit_grid(
            imgs.numpy(),
            pred,
            actual,
            path,
            title=f"{lm.name}: {ds.title} test {ds.item}s {sel.start}-{sel.stop - 1}, {wrong} wrong",
            classes=ds.classes,
        )
    return PredictionGrid(rows, grid, ds.name, list(ds.classes))


def show(checkpoint: str | os.PathLike, **kwargs) -> PredictionGrid:
    """Deprecated name of :func:`prediction_grid` (kept for a while so old scripts still run)."""
    warnings.warn("lenet.show is now lenet.prediction_grid", DeprecationWarning, stacklevel=2)
    return prediction_grid(checkpoint, **kwargs)


# ----------------------------------------------------------------------------- labelled folders

LABELS_CSV = "labels.csv"


def load_labelled_folder(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """``DIR/labels.csv`` (``name,label``) or ``DIR/<digit>/*`` image files -> [(path, label)]."""
    root = Path(folder)
    if not root.is_dir():
        raise LenetError(f"{root}: no such folder")
    if (root / LABELS_CSV).is_file():
        return _read_labels_csv(root, root / LABELS_CSV)
    from lenet.config import IMAGE_SUFFIXES

    digit_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name in _DIGITS)
    if not digit_dirs:
        raise LenetError(
            f"{root}: no labels.csv and no digit folders 0-9 (want DIR/<digit>/*.png "
            "or DIR/labels.csv with a name,label header)"
        )
    items = [
        (f, int(d.name))
        for d in digit_dirs
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise LenetError(f"{root}: the digit folders hold no image files")
    return items


_DIGITS = frozenset("0123456789")


def _read_labels_csv(root: Path, path: Path) -> list[tuple[Path, int]]:
    """Rows of a ``name,label`` CSV, names relative to ``root``; any bad row is a LenetError."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LenetError(f"{path}: cannot read: {e}") from None
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header[:2] != ["name", "label"]:
        raise LenetError(f"{path}: the first line must be the header name,label")
    items = []
    for line, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue  # a blank line
        if len(row) < 2:
            raise LenetError(f"{path} line {line}: want name,label")
        name, label = row[0].strip(), row[1].strip()
        if label not in _DIGITS:
            raise LenetError(f"{path} line {line}: label {label!r} is not a digit 0-9")
        if not (root / name).is_file():
            raise LenetError(f"{path} line {line}: {name}: no such file in {root}")
        items.append((root / name, int(label)))
    if not items:
        raise LenetError(f"{path}: no rows after the header")
    return items


@dataclass
class ImageEvalReport:
    """Result of :func:`evaluate_images`: accuracy on labelled image files, with its mistakes."""

    checkpoint: str
    model: str
    folder: str
    n: int
    accuracy: float  # correct / n: unusable and no-digit inputs count as wrong
    errors: int
    unusable: int  # inputs that could not be read as images
    no_digit: int  # images in which no digit was found
    per_class: list[dict]  # class, count, correct, recall (= accuracy on that digit), precision
    confusion: list[list[int]]  # 10x10 over the answered inputs, rows actual
    mistakes: list[dict] = field(default_factory=list)  # path, label, predicted, confidence, ...
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return dict(self.__dict__)


def evaluate_images(
    model=None,
    folder: str | os.PathLike = ".",
    *,
    device: str = "cpu",
    workers: int | None = None,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
    max_errors_shown: int = 50,
) -> ImageEvalReport:
    """Accuracy, per-class table and confusion of ``model`` (a Predictor, a checkpoint, or None:
    the bundled weights) on a labelled folder, through ``lenet predict``'s preprocessing.

    ``workers`` > 1 preprocesses in that many processes (default: one per core from
    ``lenet.parallel.PARALLEL_MIN`` files on; a script needs the ``__main__`` guard). Writes
    ``confusion.png`` and ``errors.png`` (originals beside what the network saw) into
    ``out_dir`` (default: the checkpoint's folder) unless ``plots=False``.
    """
    from lenet.predictor import Predictor

    items = load_labelled_folder(folder)
    paths = [p for p, _ in items]
    if isinstance(model, Predictor):
        predictor, preds = model, model.predict(paths, top_k=1)
    else:
        predictor, preds = _predict_files(model, paths, device, workers)
    labels = np.array([label for _, label in items])
    got = np.array([-1 if p.digit is None else p.digit for p in preds])
    correct = got == labels
    answered = got >= 0
    cm = confusion_matrix(labels[answered], got[answered])
    table = per_class(cm)
    for c, row in enumerate(table):
        count = int((labels == c).sum())
        row.update(
            support=count,
            count=count,
            correct=int(correct[labels == c].sum()),
            recall=float(correct[labels == c].mean()) if count else 0.0,
        )
    mistakes = [
        {
            "path": str(p.source),
            "label": int(label),
            "predicted": p.digit,
            "confidence": p.confidence,
            **({"reason": p.reason} if p.reason else {}),
            **({"error": p.error} if p.error else {}),
        }
        for p, label, ok in zip(preds, labels, correct, strict=True)
        if not ok
    ]
    report = ImageEvalReport(
        str(predictor.path),
        predictor.name,
        str(folder),
        len(items),
        float(correct.mean()),
        int((~correct).sum()),
        sum(p.error is not None for p in preds),
        sum(p.error is None and p.preprocessed is None for p in preds),
        table,
        cm.tolist(),
        mistakes,
    )
    if plots:
        out = Path(out_dir) if out_dir else output_dir_for(predictor.path)
        report.files = _image_eval_plots(report, cm, preds, labels, out, max_errors_shown)
    return report


def _predict_files(checkpoint, paths: list[Path], device: str, workers: int | None):
    """A Predictor for ``checkpoint`` and its answers for ``paths`` (workers as lenet predict)."""
    from lenet.parallel import start_pool
    from lenet.predictor import Predictor

    pool = start_pool(workers, len(paths))
    with pool if pool is not None else contextlib.nullcontext():
        # The workers start on the files while the model loads, as in lenet predict.
        work = pool.imap(paths) if pool is not None else paths
        predictor = Predictor(checkpoint, device=device, pool=pool)
        preds = list(predictor.predict_iter(work, top_k=1))
    return predictor, preds


def _thumbnail(path: Path, side: int = 96) -> np.ndarray | None:
    """The original image as RGB uint8 (h, w, 3), at most ``side`` px; None if unreadable."""
    from lenet.preprocess import load_image

    try:
        im = load_image(path).convert("RGB")
    except LenetError:
        return None
    im.thumbnail((side, side))
    return np.asarray(im)


def _image_eval_plots(report, cm, preds, labels, out: Path, max_shown: int) -> dict:
    """confusion.png and (when anything is wrong) errors.png; returns {name: path}."""
    from lenet.plots import plot_confusion, plot_error_pairs

    name = Path(report.folder).name or report.folder
    files = {
        "confusion": str(
            plot_confusion(
                cm, out / "confusion.png", f"{report.model} on {name}: {100 * report.accuracy:.2f}%"
            )
        )
    }
    wrong = [i for i, p in enumerate(preds) if p.digit != labels[i]][:max_shown]
    if wrong:
        pairs = []
        for i in wrong:
            p = preds[i]
            if p.error is not None:
                said = "unusable"
            elif p.digit is None:
                said = p.reason  # "no digit found"
            else:
                said = f"pred {p.digit} ({100 * p.confidence:.0f}%)"
            pairs.append((_thumbnail(Path(p.source)), p.preprocessed, f"true {labels[i]}", said))
        title = f"{len(wrong)} of {report.errors} mistakes: each original, then the 28x28 seen"
        files["errors"] = str(plot_error_pairs(pairs, out / "errors.png", title))
    return files
