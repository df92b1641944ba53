"""Read whole numbers: a line of handwritten digits in a photo or drawing -> the string.

The steps, after the same loading, grayscale, polarity and background removal as one digit
(:mod:`lenet.preprocess`):

1. :func:`find_line` -- threshold the ink, label connected components, drop specks and border
   clutter, and group components into characters: a small fragment (the detached bar of a 5,
   a broken stroke) or a long flat stroke (a bar written apart) joins the character it lies
   over or next to; a flat stroke at mid-height joins only one it touches, and apart from both
   neighbours is a dash. Groups are ordered left to right.
2. :func:`segment_graph` -- heuristic over-segmentation (LeCun et al. 1998, section V): a group
   wider than one line height gets candidate cuts at the valleys of its vertical ink
   projection and of its upper and lower outline, and runs of two or three close groups (a
   digit broken in pieces) get a piece of their own; every piece between two cuts of plausible
   width is one edge of the segmentation graph and
   becomes an MNIST-style 28x28 (:func:`lenet.preprocess.normalize_stroke` for hairlines,
   :func:`lenet.preprocess.scale_to_box`,
   :func:`lenet.preprocess.place_by_center_of_mass`).
3. :class:`Reader` -- two networks score every piece in one batch each: the digit model
   (the bundled committee, or ``--model``) and the piece network (:mod:`lenet.bench.pieces`, the
   paper's answer to segmentation: trained on pieces cut from MNIST-train strings to say "one
   whole digit" or "not one": a half, a pair, a digit with a neighbour's stroke). An edge's
   score is the two networks' log probabilities of its digit, the piece network's log
   probability that it is one whole digit, a width prior for the digit, and a bonus per piece;
   the best path through the graph is found by dynamic programming (Viterbi), under
   ``digits=N`` (exactly N digits) or a ``pattern`` (a regular expression the whole string
   must match; beam search over the top classes of every piece). A piece that is a whole
   character on its own gets a second opinion on its digit (a ``lenet5-plus`` network), and,
   with clear space on both sides, a floor on the line network's count of its digits.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lenet.errors import ImageError, LenetError
from lenet.linescan import (
    LineNet,
    Scan,
    bundled_line_net,
    frames_of,
    repeat_correction,
    span_scores_and_ends,
    sweep_cuts,
)
from lenet.preprocess import (
    BG_BLOCKS,
    CANVAS,
    MAX_PIXELS,
    MIN_CONTRAST,
    Component,
    background_surface,
    box_blur,
    ink_is_dark,
    is_border_clutter,
    load_image,
    normalize_stroke,
    place_by_center_of_mass,
    scale_to_box,
    to_gray,
)

# The bundled piece networks, in lenet/weights/: one sees each piece scaled up on its own (as the
# digit model does), the other sees it within its group's full height (context_image).
PIECES_NAME = "lenet5-pieces.pt"
CONTEXT_PIECES_NAME = "lenet5-pieces-context.pt"
VIEWS = {"image": PIECES_NAME, "context": CONTEXT_PIECES_NAME}
# The second opinion on a whole character's digit (lenet5-plus, trained with the committee's
# distortions).
SECOND_NAMES = ("lenet5-plus.pt",)
SECOND_WEIGHT = 0.5  # the second opinion's (mean) log probability's share against the digit model's
READ_SIDE = 512  # lines are read on an image reduced to at most this longest side
SPECK_MASS = 0.03  # components with less ink than this share of the heaviest are specks
FRAGMENT = 0.6  # a component smaller both ways than this share of the line height is a fragment
# Groups wider than this many line heights may hold several digits. A 1 touching its
# neighbour is narrower than one height; the piece network keeps wide single digits whole.
SPLIT_WIDTH = 0.6
MERGE_GAP = 0.15  # neighbours closer than this many line heights may be one broken digit
MERGE_RUN = 3  # at most this many neighbouring groups make one piece (a digit in three fragments)
MIN_PIECE, MAX_PIECE = 0.12, 1.45  # piece widths the graph allows, in line heights
FLAT = 0.4  # a stroke flatter than this many line heights is a fragment (a bar, a dash)
FRAGMENT_GAP = 0.15  # a fragment closer than this many line heights joins its neighbour
CUT_SPACING = 0.12  # candidate cuts at least this many line heights apart
FILL_GAP = 0.35  # two cuts further apart than this many line heights get the cheapest between
BEAM = 128  # hypotheses kept per graph node under a pattern
ALTERNATIVES = 3  # classes tried per piece under a pattern
NOT_A_DIGIT = 10  # the piece network's extra class
DASH = "-"
UNKNOWN = "?"
NO_DIGITS = "no digits found"
NO_MATCH = "no reading fits the constraint"

# Width of each digit's ink box over its height on MNIST's training set (60,000 digits, 3,000
# per class measured): means; one spread for all, widened for slant and size jitter.
ASPECT_MEAN = (0.92, 0.46, 0.96, 0.82, 0.81, 0.96, 0.75, 0.80, 0.78, 0.70)
ASPECT_SD = 0.25
# An edge's score (see _edge_scores), tuned on the benchmark's tuning seed 1 (never seed 0):
PRIOR_WEIGHT = 0.25  # weight of the width prior next to the networks' log probabilities
PIECE_VOTE = 0.25  # the piece networks' share of the digit's log probability (see docs/read.md)
WHOLE_WEIGHT = 0.5  # weight of log P(one whole digit)
PIECE_BONUS = 1.5  # added per piece: without it the path with fewest pieces wins ties
# The line network's span scores (lenet.linescan): log P(one digit in the span) and log P(the
# digit | one digit) weighted apart, as they are right apart: the network counts digits on the
# benchmark's MNIST strings better than it names real writers' digits.
SWEEP_SPLIT = 5.0
SWEEP_DIGIT = 0.5
SWEEP_CUT_NEAR = 0.06  # a line-network cut this close (line heights) to a valley cut is not added
# The line network now and then counts two digits in one wide digit standing on its own (an 8
# with a stray tail, a 3 with a speck), and its count (x SWEEP_SPLIT) outvoted every other
# network. For a whole character with clear space on both sides that the piece networks call
# one whole digit, its log P(one digit) is floored (tuned on seeds 1-4, see docs/read.md).
APART = 0.05  # clear space on both sides, in line heights (1 MNIST px; separated digits: 2 and up)
WHOLE_TRUST = 0.9  # the piece networks' P(one whole digit) above which the floor applies
COUNT_FLOOR = -0.3  # the floor on the line network's log P(one digit in the span)


@dataclass
class Group:
    """One character candidate on the working image: its components' ink, cut out."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in working pixels
    ink: np.ndarray  # float32 (y1 - y0, x1 - x0) in [0, 1]: this group's ink only
    dash: bool = False


@dataclass
class Line:
    """The groups of a line, left to right, and how working pixels map to the image's."""

    groups: list[Group]
    height: float  # typical digit height, working pixels
    scale: tuple[float, float]  # (x, y): image pixels per working pixel


@dataclass
class Edge:
    """One piece of the segmentation graph: nodes ``a`` -> ``b`` of a group."""

    a: int
    b: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in working pixels
    aspect: float  # width / line height
    image: np.ndarray | None  # uint8 (28, 28), None for a dash
    # uint8 (28, 28): the piece within its group's full height, for the context piece network
    context: np.ndarray | None = None
    probs: np.ndarray | None = None  # (10,) the digit model's softmax, filled by the reader
    piece: np.ndarray | None = None  # (11,) the piece networks' committee (10 = not one digit)
    span: tuple[float, float] = (-math.inf, math.inf)  # x of nodes a and b, working pixels
    sweep: np.ndarray | None = None  # (11,) the line network's span scores (lenet.linescan)
    # (2, 10): log P(one digit d in the span, its last / first frame blank) (lenet.linescan)
    ends: np.ndarray | None = None
    # The piece is a whole group, uncut: one digit standing on its own, or (in a group that
    # holds several run-together digits) the uncut group, which the networks score as too wide.
    alone: bool = False
    space: float = -math.inf  # for a whole character: clear space to its nearer neighbour, heights


def _original_size(source, im: Image.Image) -> tuple[int, int]:
    """The image's own size: a large JPEG is decoded reduced (lenet.preprocess), boxes are not."""
    if im.format not in ("JPEG", "MPO") or not isinstance(source, (str, os.PathLike, bytes)):
        return im.size
    import io

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as h:
            big = max(h.size)
    except Exception:
        return im.size
    f = big / max(im.size)
    return (round(im.width * f), round(im.height * f)) if f > 1 else im.size


def _noise(r: np.ndarray) -> float:
    """Robust noise level of a (mostly background) image: 1.4826 x median absolute deviation."""
    s = r[::2, ::2]
    med = float(np.median(s))
    return 1.4826 * float(np.median(np.abs(s - med)))


def find_line(source, max_pixels: int = MAX_PIXELS) -> Line:
    """Load an image and find its characters (:class:`Group`, left to right); see the module doc.

    Raises :class:`ImageError` for unusable input; a line without ink has no groups.
    """
    im = load_image(source, max_pixels)
    ow, oh = _original_size(source, im)
    gray = to_gray(im, READ_SIDE)
    h, w = gray.shape
    scale = (ow / w, oh / h)
    x = 1.0 - gray if ink_is_dark(gray) else gray
    # Ink is found on a lightly blurred copy: pixel noise (no shrinking averages it away at
    # this resolution) must not decide the mask or the noise level.
    # A wide line gets square background blocks a quarter of its short side (the single-digit
    # default, 8 along the long side, leaves a 100 px tall strip only two block rows, and the
    # lighting across them stays behind as "ink").
    blocks = max(BG_BLOCKS, math.ceil(4 * max(h, w) / min(h, w)))
    lifted = np.maximum(cv2.subtract(x, background_surface(x, blocks)), 0.0)
    r = box_blur(lifted, 3)
    sigma = _noise(r)
    peak = cv2.minMaxLoc(r)[1]
    if peak < MIN_CONTRAST or peak < 6 * sigma:
        return Line([], 0.0, scale)
    mask = (r > max(0.3 * peak, 4 * sigma)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return Line([], 0.0, scale)
    mass = np.bincount(labels.ravel(), weights=r.ravel(), minlength=n)
    # Contrast: the ink's typical level (90th percentile) -> 1, the noise floor -> 0. The ink
    # itself is the unblurred image, as predict's (preprocess.find_digit): the blurred copy
    # turned thin strokes grey and let faint ones (the tail of a 9, a 5's bar) fall under the
    # floor (docs/read.md, "Measured").
    level = float(np.percentile(lifted[mask > 0], 90))
    floor = 3 * sigma
    ink = np.clip((lifted - floor) / max(level - floor, 1e-6), 0, 1).astype(np.float32)

    comps = []
    for lab in range(1, n):
        x0, y0, cw, ch, area = (int(v) for v in stats[lab])
        c = Component(lab, area, float(mass[lab]), y0, x0, y0 + ch, x0 + cw, (False,) * 4, 0.0)
        c.touches = (y0 == 0, y0 + ch == h, x0 == 0, x0 + cw == w)
        if any(c.touches):
            by, bx = max(1, math.ceil(0.1 * h)), max(1, math.ceil(0.1 * w))
            inner = labels[by : h - by, bx : w - bx] == lab
            c.edge_fraction = 1.0 - int(inner.sum()) / area
        comps.append(c)
    kept = [c for c in comps if not is_border_clutter(c, h, w)]
    # A digit cropped tight (a 32x32 scan) is large and touches two borders: when nothing else
    # is left, blobs touching at most two borders are taken as ink after all.
    comps = kept or [c for c in comps if sum(c.touches) <= 2]
    if not comps:
        return Line([], 0.0, scale)
    top = max(c.mass for c in comps)
    comps = [c for c in comps if c.mass >= SPECK_MASS * top]
    big = [c for c in comps if c.mass >= 0.15 * top]
    height = _line_height(big)
    comps = [c for c in comps if max(c.height, c.width) >= 0.15 * height]  # dust

    # Group: every full-size component starts a group; fragments (small both ways: the bar of
    # a 5, a broken stroke) join the group they overlap or nearly touch. A flat digit (an MNIST
    # "2" can be twice as wide as tall) is full-size by its width; a long flat stroke (a 5's or
    # a 7's bar written apart, or a dash) is not, or a bar was read as a digit of its own.
    def sized(c: Component) -> bool:
        return max(c.height, c.width) >= FRAGMENT * height

    mid = float(np.median([(c.y0 + c.y1) / 2 for c in comps if sized(c)] or [h / 2]))

    def small(c: Component) -> bool:
        if not sized(c):
            return True
        return c.height < FLAT * height and c.width >= 2 * c.height

    full = sorted((c for c in comps if not small(c)), key=lambda c: c.x0)
    members: list[list[Component]] = [[c] for c in full]
    loose: list[list[Component]] = []
    for f in sorted((c for c in comps if small(c)), key=lambda c: c.x0):
        best, best_score = None, -1e9
        for i, g in enumerate(members):
            g0, g1 = min(c.x0 for c in g), max(c.x1 for c in g)
            overlap = min(f.x1, g1) - max(f.x0, g0)  # < 0: a gap
            score = overlap / max(1, f.width) if overlap > 0 else overlap / height
            if score > best_score:
                best, best_score = i, score
        # A dash keeps to itself unless it touches a character (then it is that one's bar).
        reach = 0.03 if _dashlike(f, mid, height) else FRAGMENT_GAP
        if best is not None and best_score > -reach:
            members[best].append(f)
        else:
            loose.append([f])
    groups = []
    lut = np.zeros(n, np.uint8)
    for g in sorted(members + loose, key=lambda g: min(c.x0 for c in g)):
        x0, y0 = min(c.x0 for c in g), min(c.y0 for c in g)
        x1, y1 = max(c.x1 for c in g), max(c.y1 for c in g)
        # The group's ink: its components' cells, grown by 2 px for the anti-aliased rim.
        py0, px0, py1, px1 = max(0, y0 - 2), max(0, x0 - 2), min(h, y1 + 2), min(w, x1 + 2)
        lut[:] = 0
        lut[[c.label for c in g]] = 1
        lab = labels[py0:py1, px0:px1]
        region = cv2.dilate(lut[lab], np.ones((5, 5), np.uint8))
        region[(lab > 0) & (lut[lab] == 0)] = 0  # a neighbour's own strokes stay its own
        gink = ink[py0:py1, px0:px1] * region
        bx, by, bw, bh = cv2.boundingRect((gink > 0).astype(np.uint8))
        if bw == 0:
            continue
        box = (px0 + bx, py0 + by, px0 + bx + bw, py0 + by + bh)
        gink = np.ascontiguousarray(gink[by : by + bh, bx : bx + bw])
        is_dash = len(g) == 1 and small(g[0]) and _dashlike(g[0], mid, height)
        if (
            len(g) == 1
            and small(g[0])
            and not is_dash
            and max(g[0].width, g[0].height) < 0.3 * height
        ):
            continue  # a stray fragment on its own, too small to be a digit
        groups.append(Group(box, gink, is_dash))
    return Line(groups, height, scale)


def _line_height(comps: list[Component]) -> float:
    """Typical digit height: the median height of the components stacked into columns.

    Components that share most of the narrower one's columns are one column of ink (digits on a
    line stand side by side, not on top of each other): a 5 whose bar stands apart, a digit
    broken across the middle. Their union's height counts once, so a line of one or two broken
    digits is not taken for a line half as tall.
    """
    stacks: list[list[int]] = []  # [x0, x1, y0, y1]
    for c in sorted(comps, key=lambda c: -c.height):
        for s in stacks:
            inside = min(c.x1, s[1]) - max(c.x0, s[0])
            if inside >= 0.5 * min(c.width, s[1] - s[0]):
                s[:] = [min(s[0], c.x0), max(s[1], c.x1), min(s[2], c.y0), max(s[3], c.y1)]
                break
        else:
            stacks.append([c.x0, c.x1, c.y0, c.y1])
    return float(np.median([s[3] - s[2] for s in stacks]))


def _dashlike(c: Component, mid: float, height: float) -> bool:
    """A short, flat stroke at mid-height: the shape of a dash (its place decides the rest)."""
    return (
        c.width >= 2 * c.height
        and c.width >= 0.25 * height
        and abs((c.y0 + c.y1) / 2 - mid) < 0.2 * height
    )


def piece_image(ink: np.ndarray) -> np.ndarray | None:
    """Ink (float32 (H, W) in [0, 1]) -> the MNIST-style uint8 (28, 28), or None if empty."""
    x, y, bw, bh = cv2.boundingRect((ink > 0.02).astype(np.uint8))
    if bw == 0:
        return None
    out = place_by_center_of_mass(scale_to_box(normalize_stroke(ink[y : y + bh, x : x + bw])))
    return cv2.convertScaleAbs(out, alpha=255.0)


def context_image(ink: np.ndarray) -> np.ndarray:
    """A piece's columns over its group's full height (float32 (H, W) in [0, 1]) -> uint8
    (28, 28): the rectangle scaled into MNIST's 20 px box and centred, so a piece keeps its size
    and place in the group. A stroke cut from a digit then looks short and off-centre; scaled up
    on its own it looks like a whole 1."""
    out = np.zeros((CANVAS, CANVAS), np.float32)
    patch = scale_to_box(normalize_stroke(ink))
    h, w = patch.shape
    y, x = (CANVAS - h) // 2, (CANVAS - w) // 2
    out[y : y + h, x : x + w] = patch
    return cv2.convertScaleAbs(out, alpha=255.0)


def _local_minima(p: np.ndarray, edge: int) -> list[int]:
    """Columns ``edge <= x < len(p) - edge`` where ``p`` (1-D) is no higher than both neighbours."""
    x = np.arange(max(1, edge), len(p) - max(1, edge))
    if x.size == 0:
        return []
    return x[(p[x] <= p[x - 1]) & (p[x] <= p[x + 1])].tolist()


def _candidates(ink: np.ndarray, height: float) -> list[int]:
    """Candidate cut columns inside a group: valleys of its vertical ink projection, and of its
    upper and lower contours (where two digits meet, the outline dips between them)."""
    h, w = ink.shape
    k = max(1, round(0.06 * height)) | 1
    on = ink > 0.5
    proj = cv2.blur(ink.sum(axis=0).reshape(1, -1).astype(np.float32), (k, 1)).ravel()
    any_ink = on.any(axis=0)
    top = np.where(any_ink, on.argmax(axis=0), h).astype(np.float32)
    bottom = np.where(any_ink, h - 1 - on[::-1].argmax(axis=0), -1).astype(np.float32)
    top = cv2.blur(top.reshape(1, -1), (k, 1)).ravel()
    bottom = cv2.blur(bottom.reshape(1, -1), (k, 1)).ravel()
    edge = round(MIN_PIECE * height)
    cand = {x for x in _local_minima(proj, edge) if proj[x] < 0.7 * proj.max()}
    cand |= set(_local_minima(-top, edge))  # the upper outline dips down
    cand |= set(_local_minima(bottom, edge))  # the lower outline rises up
    return sorted(cand)


def _cuts(ink: np.ndarray, height: float) -> list[int]:
    """Cut columns inside a group, left to right: at most one per :data:`CUT_SPACING` line
    heights (the valleys whose column crosses the fewest strokes), then, while two cuts are
    more than :data:`FILL_GAP` line heights apart, the column between them crossing the
    fewest strokes (two digits can meet where no outline dips).

    Straight cuts: cheapest paths through the ink near each column (curving around strokes)
    were measured too (tuning seed, 270 strings a category): overlapping strings +5 points,
    separated -4 (single digits split along a path that slips between their strokes).
    """
    cols = (ink > 0.5).sum(axis=0)  # (W,) ink pixels each column crosses
    chosen: list[int] = []
    for c in sorted(_candidates(ink, height), key=lambda c: cols[c]):
        if all(abs(c - k) >= CUT_SPACING * height for k in chosen):
            chosen.append(c)
    margin = max(1, round(CUT_SPACING * height))
    cuts = [0, *sorted(chosen), ink.shape[1]]
    i = 0
    while i < len(cuts) - 1:
        a, b = cuts[i], cuts[i + 1]
        if b - a > FILL_GAP * height and b - a > 2 * margin:
            cuts.insert(i + 1, a + margin + int(np.argmin(cols[a + margin : b - margin + 1])))
        else:
            i += 1
    return cuts[1:-1]


def _stroke_width(ink: np.ndarray) -> float:
    """Typical stroke thickness of a group: the median length of its vertical ink runs."""
    m = np.zeros((ink.shape[0] + 2, ink.shape[1]), np.int8)
    m[1:-1] = ink > 0.5
    d = np.diff(m, axis=0)  # +1 where a run starts, -1 one past its end, column by column
    starts = np.flatnonzero(d.T.ravel() == 1)
    ends = np.flatnonzero(d.T.ravel() == -1)
    if starts.size == 0:
        return 1.0
    return max(1.0, float(np.median(ends - starts)))


def segment_graph(line: Line, extra_cuts=()) -> tuple[list[Edge], int]:
    """The segmentation graph of a line: its edges (node ids increase left to right; a group's
    last node is the next group's first) and the number of nodes. ``extra_cuts``: more cut
    positions (working x; :func:`lenet.linescan.sweep_cuts`, between the digits the line
    network sees), added inside the groups wide enough to hold two digits."""
    edges: list[Edge] = []
    node = 0
    hgt = max(line.height, 1.0)
    ends = []  # (first node, last node) of every group
    node_x = {}  # node -> x, working pixels: a cut's column; between groups, mid-gap
    for k, g in enumerate(line.groups):
        x0, y0, x1, y1 = g.box
        width = x1 - x0
        first = node
        node_x[first] = (line.groups[k - 1].box[2] + x0) / 2 if k else -math.inf
        if g.dash:
            edges.append(Edge(node, node + 1, g.box, width / hgt, None))
            node += 1
            ends.append((first, node))
            continue
        ink = g.ink
        cuts = [0, width]
        if width > SPLIT_WIDTH * hgt:
            inner = _cuts(ink, hgt)
            near, edge = SWEEP_CUT_NEAR * hgt, MIN_PIECE * hgt
            for x in extra_cuts:
                c = round(x - x0)
                if edge <= c <= width - edge and all(abs(c - k) > near for k in inner):
                    inner.append(c)
            cuts = [0, *sorted(inner), width]
        for i in range(1, len(cuts) - 1):
            node_x[node + i] = x0 + cuts[i]
        for i in range(len(cuts) - 1):
            for j in range(i + 1, len(cuts)):
                a, b = cuts[i], cuts[j]
                whole = i == 0 and j == len(cuts) - 1
                if not whole and not MIN_PIECE * hgt <= b - a <= MAX_PIECE * hgt:
                    continue
                piece = ink[:, a:b]
                bx, by, bw, bh = cv2.boundingRect((piece > 0.02).astype(np.uint8))
                if bw == 0:
                    continue
                img = piece_image(piece[by : by + bh, bx : bx + bw])
                if img is None:
                    continue
                box = (x0 + a + bx, y0 + by, x0 + a + bx + bw, y0 + by + bh)
                ctx = context_image(piece[:, bx : bx + bw])
                space = _space(line.groups, k) / hgt if whole else -math.inf
                edges.append(
                    Edge(node + i, node + j, box, bw / hgt, img, ctx, alone=whole, space=space)
                )
        node += len(cuts) - 1
        ends.append((first, node))
    # A digit broken into two full-size strokes (a 5 whose bar stands apart, a 4 written in
    # two strokes) is two groups: close neighbours, narrow enough together, get one more edge.
    # A faint digit can break into three (an 8's loops and its waist): runs of up to
    # MERGE_RUN groups, each close to the next, get one too.
    groups = line.groups
    for k in range(len(groups) - 1):
        for m in range(k + 1, min(k + MERGE_RUN, len(groups))):
            run = groups[k : m + 1]
            # A dash close to a digit may be that digit's detached bar (a 5's): it gets the
            # piece too, at either end of a run; two dashes, or one between two digits, never.
            dashes = [q.dash for q in run]
            if (
                sum(dashes) > 1
                or any(dashes[1:-1])
                or run[-1].box[0] - run[-2].box[2] > MERGE_GAP * hgt
            ):
                break
            x0, y0 = min(q.box[0] for q in run), min(q.box[1] for q in run)
            x1, y1 = max(q.box[2] for q in run), max(q.box[3] for q in run)
            if x1 - x0 > MAX_PIECE * hgt:
                break
            ink = np.zeros((y1 - y0, x1 - x0), np.float32)
            for q in run:
                sub = ink[q.box[1] - y0 : q.box[3] - y0, q.box[0] - x0 : q.box[2] - x0]
                np.maximum(sub, q.ink, out=sub)
            img = piece_image(ink)
            if img is not None:
                box = (x0, y0, x1, y1)
                edges.append(
                    Edge(ends[k][0], ends[m][1], box, (x1 - x0) / hgt, img, context_image(ink))
                )
    node_x[node] = math.inf
    for e in edges:
        e.span = (node_x[e.a], node_x[e.b])
    return edges, node + 1


def _space(groups: list[Group], k: int) -> float:
    """Clear space between character k and its nearer neighbour, working pixels (inf alone)."""
    left = groups[k].box[0] - groups[k - 1].box[2] if k else math.inf
    right = groups[k + 1].box[0] - groups[k].box[2] if k + 1 < len(groups) else math.inf
    return min(left, right)


def _edge_scores(e: Edge) -> np.ndarray:
    """Score of each class (10,) for a digit piece: the two networks' log p of the digit, the
    piece network's log P(one whole digit), the width prior and the piece bonus."""
    logp = np.log(np.maximum(e.probs, 1e-12))
    if e.piece is not None:
        whole = max(1.0 - float(e.piece[NOT_A_DIGIT]), 1e-12)
        logq = np.log(np.maximum(e.piece[:NOT_A_DIGIT], 1e-12) / whole)  # P(digit | whole)
        logp = (1 - PIECE_VOTE) * logp + PIECE_VOTE * logq + WHOLE_WEIGHT * math.log(whole)
    z = (e.aspect - np.asarray(ASPECT_MEAN)) / ASPECT_SD
    score = logp - PRIOR_WEIGHT * 0.5 * z * z + PIECE_BONUS
    if e.sweep is not None:
        one = float(np.logaddexp.reduce(e.sweep[1:]))  # log P(exactly one digit in the span)
        count = one
        if e.space >= APART and e.piece is not None and 1 - e.piece[NOT_A_DIGIT] > WHOLE_TRUST:
            count = max(one, COUNT_FLOOR)  # a digit standing apart, whole to the piece networks
        score = score + SWEEP_SPLIT * count + SWEEP_DIGIT * (e.sweep[1:] - one)
    return score


def _repeat(left: Edge, right: Edge, d: int) -> float:
    """The line network's correction for the same digit d on two neighbouring pieces: scored
    apart, both may claim one run of d frames that crosses the cut (a wide 2 read as "22");
    as a string they need two runs (:func:`lenet.linescan.repeat_correction`), weighted as
    its count."""
    if left.ends is None or right.ends is None:
        return 0.0
    return SWEEP_SPLIT * repeat_correction(
        float(left.sweep[d + 1]), left.ends[:, d], float(right.sweep[d + 1]), right.ends[:, d]
    )


def decode(
    edges: list[Edge], nodes: int, digits: int | None = None, pattern: str | None = None
) -> list[tuple[Edge, str]] | None:
    """The best path through the graph as [(edge, character)], or None when no path fits.

    Unconstrained: Viterbi. ``digits``: Viterbi over (node, digits so far), the path with
    exactly that many digits. ``pattern``: beam search over the :data:`ALTERNATIVES` best
    classes of each piece; the best complete string that ``re.fullmatch``-es the pattern.
    The same digit on two neighbouring pieces pays the line network's correction
    (:func:`_repeat`), which depends on the hypothesis's last piece: the search keeps the best
    hypothesis per key as before, so it is exact for the paths it keeps, not over all paths.
    """
    out: list[list[Edge]] = [[] for _ in range(nodes)]
    for e in edges:
        out[e.a].append(e)
    scored = {id(e): _edge_scores(e) for e in edges if e.image is not None}
    rx = re.compile(pattern) if pattern is not None else None
    # hyps[node]: {key: (score, path)}; path is a tuple of (edge, char)
    hyps: list[dict] = [{} for _ in range(nodes)]
    hyps[0][0 if digits is not None and rx is None else ""] = (0.0, ())
    for i in range(nodes):
        here = hyps[i]
        if rx is not None and len(here) > BEAM:
            here = dict(sorted(here.items(), key=lambda kv: -kv[1][0])[:BEAM])
        for e in out[i]:
            if e.image is None:
                options = [(DASH, 0.0 if e.sweep is None else SWEEP_SPLIT * float(e.sweep[0]))]
            else:
                s = scored[id(e)]
                k = ALTERNATIVES if rx is not None else 1
                options = [(str(int(d)), float(s[d])) for d in np.argsort(-s)[:k]]
            for key, (score, path) in here.items():
                for ch, sc in options:
                    if path and path[-1][1] == ch != DASH:
                        sc += _repeat(path[-1][0], e, int(ch))
                    if rx is not None:
                        nkey = key + ch
                    elif digits is not None:
                        nkey = key + (ch != DASH)  # digits so far
                        if nkey > digits:
                            continue
                    else:
                        nkey = ""
                    old = hyps[e.b].get(nkey)
                    if old is None or score + sc > old[0]:
                        hyps[e.b][nkey] = (score + sc, (*path, (e, ch)))
    final = hyps[nodes - 1]
    if rx is not None:
        ok = [v for k, v in final.items() if rx.fullmatch(k)]
    elif digits is not None:
        ok = [v for k, v in final.items() if k == digits]
    else:
        ok = list(final.values())
    if not ok:
        return None
    return list(max(ok, key=lambda v: v[0])[1])


@dataclass
class Character:
    """One character read: a digit (or a dash) with its box in the image's own pixels."""

    char: str  # "0".."9", "-", or "?" below the confidence asked for
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), image pixels
    digit: int | None = None
    confidence: float | None = None
    top_k: list[list] = field(default_factory=list)  # [[digit, probability], ...] best first
    image: np.ndarray | None = None  # uint8 (28, 28): what the network saw

    def to_dict(self) -> dict:
        """JSON-ready: char, digit, confidence, top_k, box."""
        return {
            "char": self.char,
            "digit": self.digit,
            "confidence": self.confidence,
            "top_k": self.top_k,
            "box": list(self.box),
        }


@dataclass
class Reading:
    """The answer for one input: the string read, character by character, or why there is none."""

    source: str
    text: str | None = None
    confidence: float | None = None  # product of the characters' confidences
    characters: list[Character] = field(default_factory=list)
    unsure: bool = False  # a character is below the confidence asked for ("?" in text)
    reason: str | None = None  # "no digits found" / "no reading fits the constraint"
    error: str | None = None  # the input could not be used

    @property
    def ok(self) -> bool:
        """True unless the input itself was unusable."""
        return self.error is None

    def to_dict(self) -> dict:
        """JSON-ready dict: path, text, confidence, unsure, characters (+ reason / error)."""
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        d = {
            "path": self.source,
            "text": self.text,
            "confidence": self.confidence,
            "unsure": self.unsure,
            "characters": [c.to_dict() for c in self.characters],
        }
        if self.reason is not None:
            d["reason"] = self.reason
        return d


def check_constraint(digits: int | None, pattern: str | None) -> None:
    """Refuse a bad ``digits`` / ``pattern`` in one line (both at once, a count out of range,
    a regular expression that does not compile)."""
    if digits is not None and pattern is not None:
        raise LenetError("give digits or pattern, not both")
    if digits is not None and not 1 <= digits <= 64:
        raise LenetError("digits must be between 1 and 64")
    if pattern is not None:
        if len(pattern) > 200:
            raise LenetError("pattern is longer than 200 characters")
        try:
            re.compile(pattern)
        except re.error as e:
            raise LenetError(f"pattern is not a regular expression: {e}") from None


class Reader:
    """A model loaded once, reading strings of digits in images (CLI, service, Python API).

    ``Reader()`` uses the bundled weights; the arguments are :class:`lenet.Predictor`'s (the
    same loading; the network runs through its :meth:`~lenet.Predictor.probabilities`), or
    ``predictor``, one already loaded. ``pieces``: the piece network's checkpoint (an
    11-class model, :mod:`lenet.bench.pieces`); default the bundled one, shared by every reader
    in the process. ``second_opinion``: digit network checkpoints (a path or a list) whose
    vote is mixed in on every piece that is a whole character (None or True: the bundled
    ``lenet5-plus``; False: none). It is mixed in with ``checkpoint`` too.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        backend: str = "torch",
        max_pixels: int = MAX_PIXELS,
        predictor=None,
        pieces: str | os.PathLike | None = None,
        context_pieces: str | os.PathLike | None = None,
        line_net: str | os.PathLike | None | bool = None,
        second_opinion: list[str | os.PathLike] | None | bool = None,
    ):
        from lenet.predictor import Predictor

        if predictor is None:
            predictor = Predictor(checkpoint, device=device, backend=backend, max_pixels=max_pixels)
        self.predictor = predictor
        self.piece_nets = {}  # view -> Predictor
        for view, path in (("image", pieces), ("context", context_pieces)):
            net = bundled_piece_predictor(view) if path is None else Predictor(path)
            if net.info["classes"] != NOT_A_DIGIT + 1:
                raise LenetError(
                    f"{path}: a piece network has {NOT_A_DIGIT + 1} classes (digits and "
                    f"'not one digit'), this one {net.info['classes']}"
                )
            self.piece_nets[view] = net
        # The line network (the SDNN): None the bundled one, a path another, False none.
        if line_net is False:
            self.line_net = None
        elif line_net is None or line_net is True:
            self.line_net = bundled_line_net()
        else:
            self.line_net = LineNet(line_net)
        # The second opinion on whole characters: None the bundled one, paths others, False none.
        if isinstance(second_opinion, (str, os.PathLike)):
            second_opinion = [second_opinion]
        if second_opinion is False:
            self.second = []
        elif second_opinion is None or second_opinion is True:
            self.second = bundled_second_opinion()
        else:
            self.second = [Predictor(p) for p in second_opinion]
            for p, net in zip(second_opinion, self.second, strict=True):
                if net.info["classes"] != NOT_A_DIGIT:
                    raise LenetError(
                        f"{p}: a second-opinion network has {NOT_A_DIGIT} classes (the "
                        f"digits), this one {net.info['classes']}"
                    )
        self.name = predictor.name
        self.max_pixels = predictor.max_pixels

    def __repr__(self) -> str:
        return f"Reader({self.predictor!r})"

    def read(
        self,
        inputs,
        *,
        digits: int | None = None,
        pattern: str | None = None,
        min_confidence: float | None = None,
        top_k: int = 3,
    ) -> list[Reading]:
        """One :class:`Reading` per input (a single input is accepted too), in order."""
        from lenet.predictor import _is_single

        if _is_single(inputs):
            inputs = [inputs]
        return [
            self.read_one(
                s, digits=digits, pattern=pattern, min_confidence=min_confidence, top_k=top_k
            )
            for s in inputs
        ]

    def read_one(
        self,
        source,
        *,
        digits: int | None = None,
        pattern: str | None = None,
        min_confidence: float | None = None,
        top_k: int = 3,
        max_pixels: int | None = None,
    ) -> Reading:
        """Read the digits in one image. Unusable input gets ``error``; a blank one ``reason``.

        ``digits``: exactly that many digits; ``pattern``: a regular expression the whole
        string must match (e.g. ``\\d{3}-\\d{4}``); ``min_confidence``: characters below it
        read ``?`` and the reading is ``unsure``; ``max_pixels`` lowers the cap for this input.
        """
        from lenet.predictor import _check_options, describe_source

        _check_options(top_k, min_confidence)
        check_constraint(digits, pattern)
        name = describe_source(source)
        cap = self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)
        try:
            line = find_line(source, cap)
        except ImageError as e:
            return Reading(name, error=str(e))
        if not line.groups:
            return Reading(name, reason=NO_DIGITS)
        scan = None if self.line_net is None else self.line_net.scan(line)
        edges, nodes = segment_graph(line, () if scan is None else sweep_cuts(scan))
        pieces = [e for e in edges if e.image is not None]
        if pieces:
            images = np.stack([e.image for e in pieces])
            probs = self.predictor.probabilities(images)
            whole = piece_votes(self.piece_nets, pieces)
            for e, p, q in zip(pieces, probs, whole, strict=True):
                e.probs, e.piece = p, q
            second_opinion(self.second, [e for e in pieces if e.alone])
        if scan is not None:
            sweep_scores(scan, edges)
        path = decode(edges, nodes, digits, pattern)
        if path is None:
            return Reading(name, reason=NO_MATCH)
        return _reading(name, path, line.scale, top_k, min_confidence)


def sweep_scores(scan: Scan, edges: list[Edge]) -> None:
    """Fill every edge's ``sweep``: the line network's scores of the frames in its span
    (:func:`lenet.linescan.span_scores`; a span too narrow to hold a frame gets the nearest)."""
    if not edges:
        return
    logp = scan.logp
    last = len(logp)
    spans = frames_of(np.array([e.span for e in edges]), scan.x0, scan.f, scan.stride)  # (E, 2)
    spans = np.clip(np.nan_to_num(spans, posinf=last, neginf=0), 0, last).astype(int)
    spans[:, 0] = np.minimum(spans[:, 0], last - 1)
    spans[:, 1] = np.maximum(spans[:, 1], spans[:, 0] + 1)
    scores, ends = span_scores_and_ends(logp, spans)
    for e, s, n in zip(edges, scores, ends, strict=True):
        e.sweep, e.ends = s, n


def second_opinion(nets: list, pieces: list[Edge]) -> None:
    """Mix the second-opinion networks into the digit probabilities of whole characters: the
    normalized geometric mean, :data:`SECOND_WEIGHT` for their mean log probability."""
    if not nets or not pieces:
        return
    images = np.stack([e.image for e in pieces])
    theirs = np.mean([np.log(np.maximum(n.probabilities(images), 1e-30)) for n in nets], axis=0)
    mine = np.log(np.maximum(np.stack([e.probs for e in pieces]), 1e-30))
    mixed = _from_log((1 - SECOND_WEIGHT) * mine + SECOND_WEIGHT * theirs)
    for e, p in zip(pieces, mixed, strict=True):
        e.probs = p


@functools.cache
def bundled_second_opinion() -> list:
    """The bundled second-opinion networks (:data:`SECOND_NAMES`), loaded once per process."""
    from lenet.predictor import Predictor

    return [Predictor(Path(__file__).parent / "weights" / n) for n in SECOND_NAMES]


def piece_votes(nets: dict, pieces: list[Edge]) -> np.ndarray:
    """(P, 11): the piece networks' softmax, each on its view of every piece, combined as the
    normalized geometric mean (a committee, as the digit model's)."""
    logq = np.mean(
        [
            np.log(np.maximum(net.probabilities(np.stack([getattr(e, v) for e in pieces])), 1e-12))
            for v, net in nets.items()
        ],
        axis=0,
    )
    return _from_log(logq)


def _from_log(logp: np.ndarray) -> np.ndarray:
    """(N, C) unnormalized log probabilities -> probabilities, each row summing to 1."""
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@functools.cache
def bundled_piece_predictor(view: str = "image"):
    """A bundled piece network (:data:`VIEWS`: ``image`` or ``context``), loaded once per
    process."""
    from lenet.predictor import Predictor

    return Predictor(Path(__file__).parent / "weights" / VIEWS[view])


def _reading(name: str, path, scale, top_k: int, min_confidence: float | None) -> Reading:
    """Turn a decoded path into a :class:`Reading` (boxes scaled back to image pixels)."""
    sx, sy = scale
    chars = []
    conf = 1.0
    unsure = False
    for e, ch in path:
        x0, y0, x1, y1 = e.box
        box = (
            int(math.floor(x0 * sx)),
            int(math.floor(y0 * sy)),
            int(math.ceil(x1 * sx)),
            int(math.ceil(y1 * sy)),
        )
        if e.image is None:
            chars.append(Character(DASH, box))
            continue
        p = e.probs
        d = int(ch)
        order = np.argsort(-p, kind="stable")[:top_k]
        c = Character(
            ch,
            box,
            digit=d,
            confidence=round(float(p[d]), 6),
            top_k=[[int(k), round(float(p[k]), 6)] for k in order],
            image=e.image,
        )
        conf *= float(p[d])
        if min_confidence is not None and c.confidence < min_confidence:
            c.char, c.digit = UNKNOWN, None
            unsure = True
        chars.append(c)
    text = "".join(c.char for c in chars)
    return Reading(name, text, round(conf, 6), chars, unsure)
