"""The string benchmark of ``lenet read``: accuracy on MNIST-test strings, rejection, speed.

``python -m lenet.bench.read [--data-dir DIR] [--n N] [--seed S] [--json]`` renders ``N``
strings of every category of :mod:`lenet.bench.strings` (lengths 2-10 in turn; seed 0 is the
benchmark, other seeds are for tuning) and reads them with the bundled weights (or ``--model``).
It prints, per category, string accuracy (all lengths; and on ``--n5`` more strings of exactly
five digits, the length of a zip code), character
accuracy (1 - edit distance / length) and string accuracy when the length is given (``--digits
N``), the rejection curve (string error among the strings kept
when the least confident are rejected) and the median time to read one 5-digit 640x480 photo
with one torch thread. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from lenet.bench.strings import CATEGORIES, make_string, make_strings

REJECT = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20)  # shares of strings rejected, least confident first


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(truths: list[str], texts: list[str | None]) -> dict:
    """String accuracy and character accuracy (1 - total edit distance / total length)."""
    got = [t or "" for t in texts]
    strings = sum(t == g for t, g in zip(truths, got, strict=True)) / max(1, len(truths))
    errors = sum(edit_distance(t, g) for t, g in zip(truths, got, strict=True))
    chars = 1 - errors / max(1, sum(len(t) for t in truths))
    return {"strings": len(truths), "string_accuracy": strings, "char_accuracy": chars}


def rejection(truths: list[str], texts: list, confidences: list) -> list[dict]:
    """String error among the kept strings when the least confident share is rejected."""
    order = np.argsort([c if c is not None else -1.0 for c in confidences], kind="stable")
    right = np.array([t == g for t, g in zip(truths, texts, strict=True)])[order]
    out = []
    for share in REJECT:
        k = int(round(share * len(right)))
        kept = right[k:]
        out.append({"rejected": share, "string_error": float(1 - kept.mean()) if len(kept) else 0})
    return out


def run(
    data_dir: str,
    n: int,
    seed: int,
    model: str | None = None,
    timing: bool = True,
    n5: int = 300,
    second_opinion: bool = True,
) -> dict:
    """Read ``n`` strings of every category; return the figures (see the module doc)."""
    import torch

    from lenet.data import load_split
    from lenet.reader import Reader

    torch.set_num_threads(1)
    test = load_split("test", data_dir)
    images, labels = test.images.numpy(), test.labels.numpy()
    reader = Reader(model, second_opinion=None if second_opinion else False)
    out: dict = {"seed": seed, "per_category": n, "five_digit_per_category": n5, "categories": {}}
    truths_all, texts_all, confs_all = [], [], []
    for cat in CATEGORIES:
        strings = make_strings(images, labels, n, cat, seed)
        readings = [reader.read_one(s.data) for s in strings]
        known = [reader.read_one(s.data, digits=len(s.text)).text for s in strings]
        truths = [s.text for s in strings]
        texts = [r.text for r in readings]
        confs = [r.confidence for r in readings]
        row = score(truths, texts)
        rng = np.random.default_rng([seed, 5, list(CATEGORIES).index(cat)])
        fives = [make_string(images, labels, 5, cat, rng) for _ in range(n5)]
        row["five_digit_string_accuracy"] = score(
            [s.text for s in fives], [reader.read_one(s.data).text for s in fives]
        )["string_accuracy"]
        row["five_digit_strings"] = n5
        row["digits_known"] = score(truths, known)  # --digits N, the length given
        row["rejection"] = rejection(truths, texts, confs)
        out["categories"][cat] = row
        truths_all += truths
        texts_all += texts
        confs_all += confs
    out["all"] = score(truths_all, texts_all)
    out["all"]["rejection"] = rejection(truths_all, texts_all, confs_all)
    if timing:
        rng = np.random.default_rng([seed, 99])
        photos = [
            make_string(images, labels, 5, "separated", rng, size=(640, 480)).data
            for _ in range(10)
        ]
        for p in photos:  # warm-up: first-call costs are not per-photo costs
            reader.read_one(p)
        times = []
        for _ in range(3):
            for p in photos:
                t0 = time.perf_counter()
                reader.read_one(p)
                times.append(1000 * (time.perf_counter() - t0))
        out["ms_per_5_digit_640x480_photo_p50"] = statistics.median(times)
    return out


def format_table(res: dict) -> str:
    """The figures as a text table (what the README shows)."""
    lines = [
        f"{'category':<12} {'strings':>7} {'string acc':>10} {'5-digit acc':>11} {'char acc':>9}"
        f" {'with --digits N':>15}"
    ]
    for cat, r in res["categories"].items():
        lines.append(
            f"{cat:<12} {r['strings']:>7} {100 * r['string_accuracy']:>9.1f}% "
            f"{100 * r['five_digit_string_accuracy']:>10.1f}% {100 * r['char_accuracy']:>8.2f}%"
            f" {100 * r['digits_known']['string_accuracy']:>14.1f}%"
        )
    a = res["all"]
    lines.append(
        f"{'all':<12} {a['strings']:>7} {100 * a['string_accuracy']:>9.1f}% "
        f"{'':>11} {100 * a['char_accuracy']:>8.2f}%"
    )
    lines.append("")
    lines.append(
        "rejection (all): "
        + ", ".join(
            f"{100 * r['rejected']:g}% rejected -> {100 * r['string_error']:.1f}% error"
            for r in a["rejection"]
        )
    )
    if "ms_per_5_digit_640x480_photo_p50" in res:
        lines.append(
            f"5-digit 640x480 photo: {res['ms_per_5_digit_640x480_photo_p50']:.1f} ms (p50, "
            "1 torch thread)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the table (or the JSON)."""
    p = argparse.ArgumentParser(prog="python -m lenet.bench.read", description=__doc__)
    p.add_argument("--data-dir", default="./data", help="MNIST folder (default: ./data)")
    p.add_argument("--n", type=int, default=270, help="strings per category (default 270)")
    p.add_argument("--n5", type=int, default=300, help="5-digit strings per category (300)")
    p.add_argument("--seed", type=int, default=0, help="0 = the benchmark set (default)")
    p.add_argument("--model", help="checkpoint (default: the bundled weights)")
    p.add_argument(
        "--no-second-opinion",
        action="store_true",
        help="read whole characters with --model alone (without the bundled lenet5-plus)",
    )
    p.add_argument("--no-timing", action="store_true", help="skip the speed measurement")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    res = run(
        a.data_dir,
        a.n,
        a.seed,
        a.model,
        timing=not a.no_timing,
        n5=a.n5,
        second_opinion=not a.no_second_opinion,
    )
    print(json.dumps(res, indent=1) if a.json else format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
