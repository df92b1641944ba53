"""``python -m lenet`` is the ``lenet`` command."""

from lenet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
