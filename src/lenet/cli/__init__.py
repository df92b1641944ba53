"""The ``lenet`` command line: a thin layer that parses flags, calls the library and prints.

Only the verb being run is imported: ``lenet --help``, ``lenet --version`` and a mistyped verb
answer without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable

from lenet._version import __version__
from lenet.config import BACKENDS, DEVICES, TrainConfig
from lenet.errors import LenetError

# Every verb with its one-line help, in the order ``lenet --help`` lists them. Each lives in
# lenet/cli/<verb>.py (a dash becomes an underscore), whose ``register(subparsers)`` adds the
# verb's parser (description and flags; the help line comes from here) and sets ``func``.
VERBS = {
    "data": "fetch and verify MNIST",
    "train": "train a model",
    "eval": "evaluate a checkpoint on MNIST",
    "show": "predict the first N test digits and draw them as one grid",
    "predict": "predict the digit in your own images",
    "read": "read whole numbers (several digits) in your own images",
    "serve": "run the HTTP prediction service and drawing page",
    "summary": "per-layer output shape, parameters and connections of a model",
    "viz": "draw one digit's path through the network: every layer's feature maps",
    "filters": "draw the learned c1 kernels of a checkpoint",
    "augment-preview": "draw original vs distorted digits (what --augment does)",
    "reproduce": "train lenet1/4/5 variants and compare with the 1998 paper",
    "export": "export a checkpoint to ONNX or TorchScript",
    "bench": "measure training/inference speed and time-to-accuracy",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one ``lenet: error:`` line like every other."""

    def error(self, message: str):
        """Print one line naming the mistake and where the flags are listed; exit 2."""
        self.exit(2, f"lenet: error: {message} (see '{self.prog} --help')\n")


def bounded(kind: type, low: float, high: float | None = None):
    """An argparse ``type``: a ``kind`` number in ``low..high`` (no upper bound if None)."""

    def convert(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")):  # nan passes both bound checks below
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if v < low or (high is not None and v > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}: {v}")
        return v

    return convert


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--data-dir``: the folder holding the datasets (torchvision layout)."""
    p.add_argument(
        "--data-dir", default=TrainConfig.data_dir, help="dataset folder (default: %(default)s)"
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``: one of :data:`lenet.config.DEVICES`."""
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where to run (default: auto = cuda, then mps, then cpu)",
    )


def add_backend(p: argparse.ArgumentParser) -> None:
    """``--backend``: what runs the network, one of :data:`lenet.config.BACKENDS`."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="run the network in PyTorch (default) or ONNX Runtime (exported on the fly; CPU)",
    )


def add_image_inputs(p: argparse.ArgumentParser) -> None:
    """The image paths and ``--model`` of ``predict`` and ``read``."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder, glob, or -")
    p.add_argument("--model", metavar="CKPT", help="checkpoint (default: the bundled weights)")


def add_top_k(p: argparse.ArgumentParser, help: str) -> None:
    """``--top-k K``: how many best classes to list, 1 to 10 (all of them)."""
    p.add_argument("--top-k", type=int, choices=range(1, 11), default=3, metavar="K", help=help)


def add_min_confidence(p: argparse.ArgumentParser, help: str) -> None:
    """``--min-confidence P``: a probability, below which the answer is "unsure"."""
    p.add_argument("--min-confidence", type=bounded(float, 0.0, 1.0), metavar="P", help=help)


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


class _VerbParsers:
    """The subparsers as a verb's ``register`` sees them: the help line is taken from VERBS."""

    def __init__(self, subparsers: argparse._SubParsersAction):
        self._subparsers = subparsers

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        """Add the verb's parser, with its one-line help from :data:`VERBS`."""
        kwargs["help"] = VERBS[name]
        return self._subparsers.add_parser(name, **kwargs)


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``verbs`` get their full parsers (default: all of them).

    Every other verb gets a placeholder that only names it in ``lenet --help``, so building
    the parser for one verb imports that verb's module alone.
    """
    full = set(VERBS) if verbs is None else set(verbs)
    parser = _Parser(
        prog="lenet",
        description="Handwritten-digit recognition with the LeNet family (PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_line in VERBS.items():
        if name in full:
            module = importlib.import_module(f"lenet.cli.{name.replace('-', '_')}")
            module.register(_VerbParsers(sub))
        else:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one verb; user mistakes print one line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level options take no value, so the first word that is not an option is the verb.
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([verb] if verb in VERBS else []).parse_args(argv)
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
