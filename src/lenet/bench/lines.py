"""The reader's line network (:mod:`lenet.models.sdnn`): training data and training.

Lines are strings of MNIST TRAINING digits (the benchmark's strings use test digits only),
rendered as photos by :mod:`lenet.bench.strings` and found again by the reader's own
:func:`lenet.reader.find_line`, so the network learns on exactly the line images it will read
(:func:`lenet.linescan.line_image`). Labels are the strings' texts, for CTC (Graves et al. 2006),
and where each digit's ink lies: the frames at its centre are trained to name it, the rest to
say "no digit centred here", as the 1998 paper's SDNN was trained.
``scripts/train_line_net.py`` writes the bundled ``weights/lenet-sdnn.pt`` with this module.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lenet.bench.strings import CATEGORIES, make_strings
from lenet.linescan import PAD, line_image
from lenet.models.sdnn import BLANK, ROWS, SDNN, STRIDE, SDNNConfig
from lenet.normalization import MNIST_STATS
from lenet.reader import find_line

log = logging.getLogger(__name__)

CENTRE = 0.4  # the middle share of a digit's ink span whose frames are trained to name it


def line_set(
    images: np.ndarray, labels: np.ndarray, per_category: int, seed: int
) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    """Line images (float32 (32, W)), texts and each digit's ink span on the image (float32
    (D, 2): first and last column + 1) of ``per_category`` strings of every category drawn
    from ``images`` (uint8 (N, 28, 28)) and ``labels``."""
    xs, ys, spans = [], [], []
    for cat in CATEGORIES:
        for s in make_strings(images, labels, per_category, cat, seed):
            line = find_line(s.data)
            if not line.groups:
                continue
            img, x0, f = line_image(line.groups, line.height)
            sx = line.scale[0]
            spans.append(
                np.array(
                    [((b[0] / sx - x0) * f + PAD, (b[2] / sx - x0) * f + PAD) for b in s.boxes],
                    np.float32,
                )
            )
            xs.append(img)
            ys.append(s.text)
    return xs, ys, spans


def frame_targets(text: str, spans: np.ndarray, frames: int, stride: int = STRIDE) -> np.ndarray:
    """(frames,) class of every frame: digit d + 1 where the frame's centre is within the
    middle :data:`CENTRE` of that digit's ink span (at least the frame nearest its centre),
    :data:`BLANK` elsewhere. Training on these as well as CTC keeps each digit's answer at its
    centre, where the reader's cuts never are (CTC alone answered near a digit's left edge)."""
    out = np.full(frames, BLANK, np.int64)
    centres = stride * np.arange(frames) + (stride - 1) / 2
    for ch, (a, b) in zip(text, spans, strict=True):
        mid, half = (a + b) / 2, max(CENTRE * (b - a) / 2, 1.0)
        hit = np.abs(centres - mid) <= half
        if not hit.any():
            hit[int(np.clip(np.argmin(np.abs(centres - mid)), 0, frames - 1))] = True
        out[hit] = int(ch) + 1
    return out


def _augment(
    img: np.ndarray, spans: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A little horizontal stretch, vertical shift and stroke width change (what the renderer
    leaves out: other pens, other writers); the digits' spans follow the stretch."""
    w = img.shape[1]
    nw = max(STRIDE, round(w * rng.uniform(0.9, 1.1) / STRIDE) * STRIDE)
    out = cv2.resize(img, (nw, ROWS), interpolation=cv2.INTER_LINEAR)
    dy = int(rng.integers(-2, 3))
    if dy:
        out = np.roll(out, dy, axis=0)
    u = rng.random()
    if u < 0.25:  # a broader pen
        out = cv2.dilate(out, np.ones((2, 2), np.uint8))
    elif u < 0.4:  # a finer one
        out = cv2.erode(out, np.ones((2, 1), np.uint8))
    return out, spans * (nw / w)


def _batch(
    imgs: list[np.ndarray],
    texts: list[str],
    spans: list[np.ndarray] | None = None,
    stride: int = STRIDE,
):
    """Pad to one width: (B, 1, 32, W) normalized input, targets, frame and target lengths,
    and (with ``spans``) the frame targets (B, W / stride), padding frames -100 (ignored)."""
    width = max(i.shape[1] for i in imgs)
    x = np.zeros((len(imgs), 1, ROWS, width), np.float32)
    for k, i in enumerate(imgs):
        x[k, 0, :, : i.shape[1]] = i
    x = (torch.from_numpy(x) - MNIST_STATS.mean) / MNIST_STATS.std
    targets = torch.tensor([int(c) + 1 for t in texts for c in t], dtype=torch.long)
    frames = torch.tensor([i.shape[1] // stride for i in imgs], dtype=torch.long)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    if spans is None:
        return x, targets, frames, lengths
    per_frame = np.full((len(imgs), width // stride), -100, np.int64)
    for k, (i, t, sp) in enumerate(zip(imgs, texts, spans, strict=True)):
        n = i.shape[1] // stride
        per_frame[k, :n] = frame_targets(t, sp, n, stride)
    return x, targets, frames, lengths, torch.from_numpy(per_frame)


def train_line_net(
    xs: list[np.ndarray],
    ys: list[str],
    spans: list[np.ndarray],
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    cfg: SDNNConfig | None = None,
) -> SDNN:
    """A fresh :class:`SDNN` trained on lines with CTC plus each frame's target
    (:func:`frame_targets`) (AdamW, one-cycle; batches of lines of similar width, so little of
    each batch is padding), every random choice seeded."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SDNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = len(xs) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    ctc = torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)
    model.train()
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = rng.permutation(len(xs))
        # Sort each run of 64 batches by width, then shuffle the batches.
        chunk = 64 * batch_size
        batches = []
        for c in range(0, steps * batch_size, chunk):
            part = sorted(
                order[c : min(c + chunk, steps * batch_size)], key=lambda i: xs[i].shape[1]
            )
            batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        for idx in batches:
            pairs = [_augment(xs[i], spans[i], rng) for i in idx]
            x, targets, frames, lengths, per_frame = _batch(
                [p[0] for p in pairs], [ys[i] for i in idx], [p[1] for p in pairs], model.cfg.stride
            )
            logits = model(x)  # (B, 11, T)
            logp = F.log_softmax(logits, dim=1).permute(2, 0, 1)  # (T, B, 11)
            loss = ctc(logp, targets, frames, lengths) + F.cross_entropy(logits, per_frame)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.info(
            "epoch %d: loss (CTC + frames) %.4f, %.0f s",
            epoch + 1,
            total / len(batches),
            time.perf_counter() - t0,
        )
    return model.eval()


def greedy(logp: np.ndarray) -> str:
    """Best-path CTC decoding of (T, 11) frame scores: best class per frame, runs merged,
    blanks dropped."""
    best = logp.argmax(axis=1)
    keep = best[np.r_[True, best[1:] != best[:-1]]]
    return "".join(str(int(c) - 1) for c in keep if c != BLANK)


def line_accuracy(model: SDNN, xs: list[np.ndarray], ys: list[str]) -> dict:
    """String and character accuracy of best-path decoding (characters: the share of digits
    of strings read with the right length that are right, and the share read with it)."""
    right = same_len = chars = chars_right = 0
    with torch.no_grad():
        for i in range(0, len(xs), 64):
            x, *_ = _batch(xs[i : i + 64], ys[i : i + 64], stride=model.cfg.stride)
            logp = F.log_softmax(model(x), dim=1).permute(0, 2, 1).numpy()
            for k, t in enumerate(ys[i : i + 64]):
                got = greedy(logp[k, : xs[i + k].shape[1] // model.cfg.stride])
                right += got == t
                if len(got) == len(t):
                    same_len += 1
                    chars += len(t)
                    chars_right += sum(a == b for a, b in zip(got, t, strict=True))
    return {
        "lines": len(ys),
        "string_accuracy": right / max(1, len(ys)),
        "right_length": same_len / max(1, len(ys)),
        "char_accuracy_right_length": chars_right / max(1, chars),
    }
