"""Make the bundled checkpoint src/lenet/weights/lenet5-relu.pt from a `lenet train` best.pt.

The recorded recipe (README, "Bundled weights"):

    lenet train --threads 1 --name bundled          # the default fast recipe, seed 0
    python scripts/bundle_weights.py runs/bundled/best.pt

This keeps only what prediction needs (model name/config, weights, normalization), measures the
MNIST test accuracy of exactly these weights, and records it in the file's metrics together with
the training recipe (machine-specific paths dropped), so `lenet predict` can say what it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lenet.checkpoint import load_model, make_payload, save_checkpoint
from lenet.data import DEFAULT_DATA_DIR, load_split
from lenet.normalization import normalize
from lenet.predictor import BUNDLED_NAME
from lenet.runtime import loss_and_accuracy, predict_logits

OUT = Path(__file__).resolve().parents[1] / "src" / "lenet" / "weights" / BUNDLED_NAME
COMMAND = "lenet train --threads 1 --name bundled"


def main(argv: list[str] | None = None) -> int:
    """Strip, measure and write the bundled checkpoint; print its test accuracy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("best", help="best.pt written by `lenet train`")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    lm = load_model(args.best)
    test = load_split("test", args.data_dir)
    logits = predict_logits(lm.model, normalize(test.images, lm.normalization)).float()
    loss, acc = loss_and_accuracy(logits, test.labels)
    src = lm.checkpoint
    train_cfg = {
        k: v for k, v in (src.get("train_config") or {}).items() if k not in ("data_dir", "out")
    }
    metrics = {
        "test_accuracy": acc,
        "test_loss": loss,
        "test_errors": int((logits.argmax(1) != test.labels).sum()),
        "val_accuracy": (src.get("metrics") or {}).get("val_acc"),
        "epoch": src.get("epoch"),
    }
    payload = make_payload(
        lm.model,
        lm.name,
        lm.config,
        lm.normalization,
        epoch=src.get("epoch"),
        metrics=metrics,
        train_config=train_cfg,
        provenance={"command": COMMAND, "trained_with_torch": src.get("versions", {}).get("torch")},
    )
    out = save_checkpoint(args.out, payload)
    print(f"{out}: {lm.name}, test accuracy {100 * acc:.2f}% ({metrics['test_errors']} errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
