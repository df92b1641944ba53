"""``lenet summary``: what each layer of a model outputs, how many parameters and connections."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_json


def register(sub) -> None:
    """Add the ``summary`` verb."""
    p = sub.add_parser(
        "summary",
        description="Traces one 28x28 digit through MODEL (a registered name such as lenet5 or "
        "lenet5-1998, or a checkpoint file) and prints, per layer, its output shape, parameters "
        "and connections (inputs per unit incl. bias, summed over units: the 1998 paper's count, "
        "= multiply-adds), with totals.",
    )
    p.add_argument("model", metavar="MODEL|CKPT", help="registered model name or checkpoint path")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    from lenet.models import create_model, get_spec, list_models
    from lenet.summary import format_summary, summarize

    if args.model in list_models():
        name, model = args.model, create_model(args.model)
    else:
        from pathlib import Path

        from lenet.checkpoint import load_model
        from lenet.errors import LenetError

        if not Path(args.model).exists():
            raise LenetError(
                f"{args.model!r} is neither a model ({', '.join(list_models())}) nor a file"
            )
        lm = load_model(args.model)
        name, model = lm.name, lm.model
    s = summarize(model, name, get_spec(name).description)
    print(json.dumps(s.to_dict(), indent=2) if args.json else format_summary(s))
    return 0
