"""The ``lenet`` command line: a thin layer that parses flags, calls the library and prints."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lenet._version import __version__
from lenet.errors import LenetError

# One module per verb (lenet/cli/<verb>.py), each with ``register(subparsers)``.
COMMANDS = [
    "data",
    "train",
    "eval",
    "show",
    "predict",
    "serve",
    "summary",
    "viz",
    "filters",
    "augment-preview",
    "reproduce",
    "export",
    "bench",
]


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--data-dir``: where MNIST lives (torchvision layout)."""
    p.add_argument("--data-dir", default="data", help="MNIST folder (default: ./data)")


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``: auto|cpu|cuda|mps."""
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
        help="where to run (default: auto = cuda, then mps, then cpu)",
    )  # fmt: skip


def add_backend(p: argparse.ArgumentParser) -> None:
    """``--backend``: run the network in PyTorch or in ONNX Runtime (``lenet.predictor.BACKENDS``)."""
    p.add_argument(
        "--backend", choices=["torch", "onnx"], default="torch",
        help="run the network in PyTorch (default) or ONNX Runtime (exported on the fly; CPU)",
    )  # fmt: skip


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every verb registered."""
    parser = argparse.ArgumentParser(
        prog="lenet",
        description="Handwritten-digit recognition with the LeNet family (PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"lenet.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one verb; user mistakes print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="lenet: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except LenetError as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lenet eval ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as e:  # a folder we cannot write, a path that is a file, a full disk...
        where = f"{e.filename}: " if e.filename else ""
        print(f"lenet: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lenet: interrupted", file=sys.stderr)
        return 130
