"""Write the string test set of ``lenet read``: MNIST TEST digits side by side, as photos.

    python scripts/make_strings.py --data-dir ./data --out strings/ [--n 270] [--seed 0]

Writes ``N`` strings of each category (separated, touching, overlapping; 2-10 digits) as PNG
and JPEG files plus ``labels.csv`` into a new or empty folder. Deterministic: the same seed
gives the same files (lenet.bench.strings). ``python -m lenet.bench.read`` reads the same set
from memory and prints the benchmark.
"""

from __future__ import annotations

import argparse

from lenet.bench.strings import write_string_set
from lenet.data import load_split


def main() -> None:
    """Parse the flags and write the set."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="./data", help="MNIST folder (default: ./data)")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--n", type=int, default=270, help="strings per category (default 270)")
    p.add_argument("--seed", type=int, default=0, help="0 = the benchmark set (default)")
    a = p.parse_args()
    test = load_split("test", a.data_dir)
    path = write_string_set(a.out, test.images.numpy(), test.labels.numpy(), a.n, a.seed)
    print(f"wrote {3 * a.n} strings and {path}")


if __name__ == "__main__":
    main()
