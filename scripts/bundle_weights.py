"""Make the bundled checkpoint (src/lenet/weights/) from one or more `lenet train` best.pt files.

The recorded recipe (README, "Bundled weights"): three lenet5-relu runs with the distortions
that stand for writers MNIST never saw, seeds 0-2, stacked into one lenet5-ensemble:

    for s in 0 1 2; do
      lenet train --augment affine+stroke+continental --epochs 15 --seed $s --threads 1 --name bundled-$s
    done
    python scripts/bundle_weights.py runs/bundled-{0,1,2}/best.pt

One best.pt is bundled as it is; several (all lenet5-relu) become one ``lenet5-ensemble``.
Other bundled weights (the reader's second opinion, ``lenet5-plus.pt``) are made with ``--out``
and ``--command`` (how the run was trained, recorded as the file's provenance). Only
what prediction needs is kept (model name/config, weights, normalization). The script measures
exactly these weights, through the same preprocessing as ``lenet predict``, on: the MNIST test
set, 2,000 synthetic photos of MNIST test digits (tests/photos.py) and the same digits clean,
and the two real dev sets of ``lenet data --real``; it records them in the file's metrics with
the recipe (machine-specific paths dropped), so `lenet predict --info` can say what it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lenet.checkpoint import load_model, make_payload, save_checkpoint
from lenet.data import DEFAULT_DATA_DIR, load_split
from lenet.evaluation import load_labelled_folder
from lenet.models.ensemble import stack
from lenet.normalization import normalize
from lenet.predictor import BUNDLED_NAME, Predictor
from lenet.preprocess import preprocess
from lenet.realdata import REAL_SETS, real_dir
from lenet.runtime import loss_and_accuracy, predict_logits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from photos import make_photos  # noqa: E402

OUT = ROOT / "src" / "lenet" / "weights" / BUNDLED_NAME
COMMAND = (
    "for s in 0 1 2; do lenet train --augment affine+stroke+continental --epochs 15 --seed $s "
    "--threads 1 --name bundled-$s; done; "
    "python scripts/bundle_weights.py runs/bundled-{0,1,2}/best.pt"
)
PHOTOS = slice(3000, 5000)  # the MNIST test digits photographed (seed 7), as in tests/photos.py


def _accuracy(predictor: Predictor, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predictor.probabilities(images).argmax(1) == labels).mean())


def outside_metrics(checkpoint: Path, data_dir: str) -> dict:
    """Accuracy on synthetic photos (and the same digits clean) and on the real dev sets."""
    predictor = Predictor(checkpoint)
    test = load_split("test", data_dir)
    images, labels = test.images.numpy()[PHOTOS], test.labels.numpy()[PHOTOS]
    photos = np.stack([preprocess(p) for p in make_photos(images, seed=7)])
    out = {
        "photos_accuracy": _accuracy(predictor, photos, labels),
        "photos_clean_accuracy": _accuracy(predictor, images, labels),
    }
    for name in REAL_SETS:
        items = load_labelled_folder(real_dir(data_dir, name))
        seen = np.stack([preprocess(p) for p, _ in items])
        key = name.replace("-", "_") + "_accuracy"
        out[key] = _accuracy(predictor, seen, np.array([label for _, label in items]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Strip (or stack), measure and write the bundled checkpoint; print what it scores."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("best", nargs="+", help="best.pt file(s) written by `lenet train`")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default=str(OUT))
    p.add_argument(
        "--command", default=COMMAND, help="how the runs were trained (recorded as provenance)"
    )
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    members = [load_model(b) for b in args.best]
    src = members[0].checkpoint
    if len(members) == 1:
        lm = members[0]
        model, name, cfg = lm.model, lm.name, lm.config
    else:
        if any(m.name != "lenet5-relu" for m in members):
            p.error("an ensemble is stacked from lenet5-relu runs only")
        model = stack([m.model for m in members])
        name, cfg = "lenet5-ensemble", {"num_classes": 10, "members": len(members)}
    test = load_split("test", args.data_dir)
    logits = predict_logits(model, normalize(test.images, members[0].normalization)).float()
    loss, acc = loss_and_accuracy(logits, test.labels)
    train_cfg = {
        k: v
        for k, v in (src.get("train_config") or {}).items()
        if k not in ("data_dir", "out", "name", "seed")
    }
    train_cfg["seeds"] = [(m.checkpoint.get("train_config") or {}).get("seed") for m in members]
    metrics = {
        "test_accuracy": acc,
        "test_loss": loss,
        "test_errors": int((logits.argmax(1) != test.labels).sum()),
        "val_accuracy": [(m.checkpoint.get("metrics") or {}).get("val_acc") for m in members],
        "epoch": [m.checkpoint.get("epoch") for m in members],
    }
    provenance = {
        "command": args.command,
        "trained_with_torch": src.get("versions", {}).get("torch"),
    }
    payload = make_payload(
        model, name, cfg, members[0].normalization,
        epoch=src.get("epoch"), metrics=metrics, train_config=train_cfg, provenance=provenance,
    )  # fmt: skip
    out = save_checkpoint(args.out, payload)
    metrics.update(outside_metrics(out, args.data_dir))  # measured on the file just written
    out = save_checkpoint(args.out, {**payload, "metrics": metrics})
    print(f"{out}: {name}, MNIST test accuracy {100 * acc:.2f}% ({metrics['test_errors']} errors)")
    for k, v in metrics.items():
        if k.endswith("_accuracy") and isinstance(v, float) and k != "test_accuracy":
            print(f"  {k}: {100 * v:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
