"""``python -m lenet.bench``: the same as ``lenet bench``."""

import sys

from lenet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
