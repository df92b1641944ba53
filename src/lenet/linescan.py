"""The reader's second opinion: the SDNN (:mod:`lenet.models.sdnn`) swept along the whole line.

:func:`line_image` redraws a line's characters (:class:`lenet.reader.Line`) as one strip, its
digit height scaled to MNIST's 20 px; :class:`LineNet` gives every frame of it (2 columns) the
log probability of "no digit centred here" and of each digit; :func:`span_scores` turns them
into a score for each piece of the segmentation graph: the log probability, under the CTC
model the network was trained with, that the frames of the piece's span hold exactly one
digit ``d`` (and only blanks around it). Summed along a path through the graph, these are the
log probability of the whole string with its digits placed in those spans, so a cut that
halves a digit or a piece holding two digits scores low whatever its picture looks like, and a
straight cut through two overlapping digits is fine as long as it falls between their centres.
Scored apart, two neighbouring pieces may both claim one run of frames that crosses the cut
between them; :func:`repeat_correction` gives the pair's exact probability when both read the
same digit (under CTC a run cut in two is still one digit).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from lenet.errors import CheckpointError
from lenet.models.sdnn import BLANK, LINE_HEIGHT, ROWS, SDNN, STRIDE, SDNNConfig
from lenet.normalization import MNIST_STATS, Normalization
from lenet.preprocess import stroke_width

LINE_NET_NAME = "lenet-sdnn.pt"  # the bundled network, in lenet/weights/
MODEL_NAME = "sdnn"
PAD = 8  # blank columns either side of the line image
MIN_STROKE = 1.5  # thinner strokes (a 1-px pen at this scale) are thickened, in pixels


def line_image(groups, height: float) -> tuple[np.ndarray, float, float]:
    """The characters of a line (:class:`lenet.reader.Group` with ``box`` and ``ink``) as one
    float32 (32, W) image in [0, 1], W a multiple of :data:`STRIDE`, and the map from working
    pixels to its columns: ``column = (x - x0) * f + PAD``; returns ``(image, x0, f)``. A
    dash is drawn too (it may be the detached bar of a 5) but does not place the line."""
    digits = [g for g in groups if not g.dash]
    if not digits or height <= 0:
        return np.zeros((ROWS, 2 * PAD), np.float32), 0.0, 1.0
    x0, y0 = min(g.box[0] for g in groups), min(g.box[1] for g in groups)
    x1, y1 = max(g.box[2] for g in groups), max(g.box[3] for g in groups)
    canvas = np.zeros((y1 - y0, x1 - x0), np.float32)
    for g in groups:
        gx0, gy0, gx1, gy1 = g.box
        sub = canvas[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
        np.maximum(sub, g.ink, out=sub)
    f = LINE_HEIGHT / height
    nw, nh = max(1, round(canvas.shape[1] * f)), max(1, round(canvas.shape[0] * f))
    how = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = np.clip(cv2.resize(canvas, (nw, nh), interpolation=how), 0, 1)
    if small.max() > 0 and stroke_width(small) < MIN_STROKE:  # a hairline: MNIST's are 2-3 px
        small = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    # The line's middle (the median of its characters' tops and bottoms) on the middle row.
    mid = (np.median([g.box[1] for g in digits]) + np.median([g.box[3] for g in digits])) / 2
    top = round(ROWS / 2 - (mid - y0) * f)
    width = math.ceil((nw + 2 * PAD) / STRIDE) * STRIDE
    out = np.zeros((ROWS, width), np.float32)
    r0, r1 = max(0, top), min(ROWS, top + nh)
    if r1 > r0:
        out[r0:r1, PAD : PAD + nw] = small[r0 - top : r1 - top]
    return out, float(x0), f


def span_scores(logp: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """(E, 11) for frame log probabilities ``logp`` (T, 11) and ``spans`` (E, 2) of frame
    indices [t0, t1): column 0 the log probability that the span is all blank, column d + 1
    that it holds exactly digit d (CTC: blanks, a run of d, blanks)."""
    return span_scores_and_ends(logp, spans, ends=False)[0]


def span_scores_and_ends(
    logp: np.ndarray, spans: np.ndarray, ends: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`span_scores` and, with ``ends``, (E, 2, 10): the log probability that the span
    holds exactly digit d and its last frame is blank (the run ends inside the span), and that
    it holds exactly d and its first frame is blank. Two neighbouring spans that both hold d
    are two digits under CTC only if the run does not cross the cut between them (a run of
    d cut in two is one d): :func:`repeat_correction` uses these."""
    e = len(spans)
    out = np.full((e, 11), -np.inf)
    if e == 0:
        return out, (np.full((0, 2, 10), -np.inf) if ends else None)
    length = (spans[:, 1] - spans[:, 0]).astype(int)
    lmax = int(length.max())
    t = spans[:, :1] + np.arange(lmax)  # (E, L) frame indices
    valid = np.arange(lmax) < length[:, None]
    lp = logp[np.clip(t, 0, len(logp) - 1)]  # (E, L, 11)
    blank, digit = lp[..., BLANK], lp[..., BLANK + 1 :]  # (E, L), (E, L, 10)
    before, inside, after = _runs(blank, digit, valid, blank_start=False)
    out[:, 0] = before[:, 0]
    out[:, 1:] = np.logaddexp(inside, after)
    if not ends:
        return out, None
    _, inside_b, after_b = _runs(blank, digit, valid, blank_start=True)
    return out, np.stack([after, np.logaddexp(inside_b, after_b)], axis=1)


def _runs(
    blank: np.ndarray, digit: np.ndarray, valid: np.ndarray, blank_start: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three-state recursion over frames (blanks, a run of d, blanks) of E spans at once:
    log probabilities (E, 1), (E, 10), (E, 10) of ending in each state. ``blank_start``: the
    run may not begin on the first frame."""
    e, lmax = valid.shape
    before = np.zeros((e, 1))  # only blanks so far
    inside = np.full((e, 10), -np.inf)  # in the digit's run
    after = np.full((e, 10), -np.inf)  # blanks after it
    for k in range(lmax):
        v = valid[:, k : k + 1]
        b = blank[:, k : k + 1]
        new_inside = np.logaddexp(before, inside) + digit[:, k]
        if k == 0 and blank_start:
            new_inside = np.full_like(new_inside, -np.inf)
        new_after = np.logaddexp(inside, after) + b
        inside = np.where(v, new_inside, inside)
        after = np.where(v, new_after, after)
        before = np.where(v, before + b, before)
    return before, inside, after


def repeat_correction(
    left: float, left_ends: np.ndarray, right: float, right_ends: np.ndarray
) -> float:
    """log P(spans A and B, side by side, hold two digits d, one each) minus the sum of their
    two scores for d (<= 0; -inf when no labelling keeps the runs apart, as in two 1-frame spans).

    ``left``/``right``: the spans' :func:`span_scores` for d; ``*_ends``: their rows of
    :func:`span_scores_and_ends` for d ([last frame blank, first frame blank]). Scored apart,
    each span may claim the same run of d frames across the cut; as one string, the two runs
    must be apart: P = P(A's run ends inside A) P(B) + P(A's run reaches the cut) P(B's run
    starts after it)."""
    if not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    ends_blank, starts_blank = float(left_ends[0]), float(right_ends[1])
    # log(P(A) - P(A, last frame blank)): A's run touching the cut
    reach = left + math.log1p(-min(math.exp(ends_blank - left), 1.0 - 1e-12))
    both = np.logaddexp(ends_blank + right, reach + starts_blank)
    return float(min(both - left - right, 0.0))


@dataclass
class Scan:
    """The line network's answer for one line: frame log probabilities and the map from
    working pixels to line-image columns (``column = (x - x0) * f + PAD``)."""

    logp: np.ndarray  # (T, 11)
    x0: float
    f: float
    stride: int = STRIDE  # line-image columns per frame


def sweep_cuts(scan: Scan) -> list[float]:
    """Cut positions (working x) halfway between the centres of neighbouring digits the line
    network sees (runs of frames whose best class is a digit): overlapping digits have no
    valley between them, but their centres still stand apart."""
    best = scan.logp.argmax(axis=1)
    centres = []  # frame index of each run's middle
    t = 0
    while t < len(best):
        if best[t] == BLANK:
            t += 1
            continue
        u = t
        while u + 1 < len(best) and best[u + 1] == best[t]:
            u += 1
        centres.append((t + u) / 2)
        t = u + 1
    mids = [(a + b) / 2 for a, b in zip(centres[:-1], centres[1:], strict=True)]
    cols = [scan.stride * m + (scan.stride - 1) / 2 for m in mids]
    return [(c - PAD) / scan.f + scan.x0 for c in cols]


class LineNet:
    """A trained :class:`lenet.models.sdnn.SDNN` and its input scaling, loaded once."""

    def __init__(self, path: str | os.PathLike | None = None):
        from lenet.checkpoint import read_checkpoint

        path = Path(path) if path is not None else Path(__file__).parent / "weights" / LINE_NET_NAME
        ckpt = read_checkpoint(path)
        if ckpt["model"]["name"] != MODEL_NAME:
            raise CheckpointError(
                f"{path}: a line network is an {MODEL_NAME!r} checkpoint, "
                f"this one holds {ckpt['model']['name']!r}"
            )
        try:
            cfg = dict(ckpt["model"].get("config") or {})
            cfg.setdefault("stride", 4)  # files written before the stride was a setting
            self.model = SDNN(SDNNConfig(**cfg))
            self.model.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: weights do not fit the line network ({e})") from None
        self.model.eval()
        self.normalization = Normalization.from_dict(
            ckpt.get("normalization") or MNIST_STATS.to_dict()
        )
        self.path = path
        self.info = ckpt.get("metrics", {})

    def frame_logp(self, image: np.ndarray) -> np.ndarray:
        """(T, 11) log probabilities of the frames of one line image (float32 (32, W))."""
        n = self.normalization
        x = (torch.from_numpy(np.ascontiguousarray(image)) - n.mean) / n.std
        with torch.no_grad():
            logits = self.model(x[None, None])[0]  # (11, T)
        return torch.log_softmax(logits.T.double(), dim=1).numpy()

    def scan(self, line) -> Scan:
        """Sweep the network along a :class:`lenet.reader.Line`."""
        image, x0, f = line_image(line.groups, line.height)
        return Scan(self.frame_logp(image), x0, f, self.model.cfg.stride)


@functools.cache
def bundled_line_net() -> LineNet:
    """The bundled line network, loaded once per process."""
    return LineNet()


def frames_of(xs: np.ndarray, x0: float, f: float, stride: int = STRIDE) -> np.ndarray:
    """Working-pixel x positions -> frame boundaries: the first frame whose centre is at or
    right of each position (frame t covers columns stride * t .. stride * (t + 1) - 1)."""
    col = (np.asarray(xs, np.float64) - x0) * f + PAD
    return np.ceil((col - (stride - 1) / 2) / stride)
