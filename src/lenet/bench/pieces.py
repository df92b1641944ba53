"""The reader's piece network: "which digit, or not one whole digit" for a piece of a line.

``lenet read`` cuts a line of digits at many candidate places (:func:`lenet.reader.segment_graph`)
and must tell a whole digit from half a 0, a 1 and the stroke of its neighbour, or two digits
in one piece. The 1998 paper trained its recognizer on the pieces of its own segmentation
graph for this (section VII); so does this module, on strings of MNIST TRAINING digits (the
benchmark's strings use test digits only): every piece of the graph is labelled by how well
its horizontal extent matches one digit's ink box (intersection over union >= ``WHOLE_IOU``:
that digit; < ``JUNK_IOU``: class 10, not one digit; in between: left out as ambiguous), and a
``lenet5-relu`` with 11 outputs learns them, on one of two views of each piece (the piece scaled
up on its own, or within its character's full height). ``scripts/train_piece_net.py`` writes
the bundled ``weights/lenet5-pieces.pt`` and ``weights/lenet5-pieces-context.pt`` with this
module.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from lenet.bench.strings import CATEGORIES, make_strings
from lenet.reader import NOT_A_DIGIT, Edge, Line, find_line, segment_graph

log = logging.getLogger(__name__)

WHOLE_IOU = 0.75  # a piece this close to one digit's extent is that digit
JUNK_IOU = 0.55  # a piece this far from every digit's extent is not one digit
MODEL = "lenet5-relu"
CLASSES = NOT_A_DIGIT + 1


def label_pieces(
    edges: list[Edge],
    line: Line,
    boxes: list[tuple[int, int, int, int]],
    text: str,
    view: str = "image",
) -> list[tuple[np.ndarray, int]]:
    """(28x28 image, class) for every digit piece of a graph that is clearly one digit (its
    label) or clearly not (:data:`NOT_A_DIGIT`); ``boxes`` are the digits' ink boxes in image
    pixels, ``text`` their labels, ``view`` which picture of the piece (``image`` or
    ``context``)."""
    sx = line.scale[0]
    spans = np.array([(b[0] / sx, b[2] / sx) for b in boxes])  # (D, 2), working pixels
    out = []
    for e in edges:
        if e.image is None:
            continue
        a0, a1 = e.box[0], e.box[2]
        inter = np.clip(np.minimum(a1, spans[:, 1]) - np.maximum(a0, spans[:, 0]), 0, None)
        union = np.maximum(a1, spans[:, 1]) - np.minimum(a0, spans[:, 0])
        iou = inter / np.maximum(union, 1e-9)
        k = int(np.argmax(iou))
        if iou[k] >= WHOLE_IOU:
            out.append((getattr(e, view), int(text[k])))
        elif iou[k] < JUNK_IOU:
            out.append((getattr(e, view), NOT_A_DIGIT))
    return out


def piece_set(
    images: np.ndarray, labels: np.ndarray, per_category: int, seed: int, view: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of ``per_category`` strings of every category drawn from ``images`` (uint8 (N,
    28, 28)) and ``labels``: uint8 (M, 28, 28) images (``view``: the ``image`` of each piece or
    its ``context``, :func:`lenet.reader.context_image`) and int64 (M,) classes."""
    xs, ys = [], []
    for cat in CATEGORIES:
        for s in make_strings(images, labels, per_category, cat, seed):
            line = find_line(s.data)
            edges, _ = segment_graph(line)
            for img, y in label_pieces(edges, line, s.boxes, s.text, view):
                xs.append(img)
                ys.append(y)
    return np.stack(xs), np.asarray(ys, np.int64)


def train_piece_net(
    x: np.ndarray, y: np.ndarray, epochs: int = 8, seed: int = 0, batch_size: int = 128
) -> torch.nn.Module:
    """A fresh 11-class :data:`MODEL` trained on pieces (AdamW, one-cycle, small affine
    distortions), every random choice seeded."""
    from lenet.augment import make_augmenter
    from lenet.models import create_model
    from lenet.normalization import MNIST_STATS, normalize

    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = len(x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    xs = normalize(torch.from_numpy(x), MNIST_STATS)
    ys = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(len(xs), generator=gen)
        augment = make_augmenter("affine", seed, epoch)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(augment(xs[idx])), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.info("epoch %d: loss %.4f, %.0f s", epoch + 1, total / steps, time.perf_counter() - t0)
    return model.eval()


def piece_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy on pieces, and how often "not one digit" is recognised and wrongly given."""
    from lenet.normalization import MNIST_STATS, normalize

    with torch.no_grad():
        pred = torch.cat(
            [
                model(normalize(torch.from_numpy(x[i : i + 1024]), MNIST_STATS)).argmax(1)
                for i in range(0, len(x), 1024)
            ]
        ).numpy()
    junk = y == NOT_A_DIGIT
    return {
        "pieces": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "not_a_digit_recall": float((pred[junk] == NOT_A_DIGIT).mean()),
        "digits_called_not_a_digit": float((pred[~junk] == NOT_A_DIGIT).mean()),
    }
