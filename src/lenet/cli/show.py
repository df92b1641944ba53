"""``lenet show``: the note's test.py done right: predictions for test images, drawn as one grid."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_device, add_json
from lenet.config import DATASETS


def register(sub) -> None:
    """Add the ``show`` verb."""
    p = sub.add_parser(
        "show",
        help="predict the first N test images and draw them as one grid",
        description="Prints predicted/actual for the first N test images of the checkpoint's "
        "dataset (as the study note's test.py does) and writes them as ONE grid picture, wrong "
        "ones framed in red.",
    )
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=20, help="how many test images (default 20)")
    p.add_argument("--start", type=int, default=0, help="first test index (default 0)")
    p.add_argument("--out", help="grid PNG path (default: show.png next to the checkpoint)")
    add_data_dir(p)
    p.add_argument(
        "--dataset", choices=DATASETS, help="default: the one the checkpoint was trained on"
    )
    add_device(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict, print one line per image, write the grid."""
    from lenet.errors import LenetError
    from lenet.evaluation import prediction_grid

    if args.n < 1 or args.start < 0:
        raise LenetError("--n must be at least 1 and --start not negative")
    res = prediction_grid(
        args.checkpoint,
        n=args.n,
        start=args.start,
        data_dir=args.data_dir,
        dataset=args.dataset,
        device=args.device,
        out=args.out,
    )
    if args.json:
        grid = str(res.grid) if res.grid else None
        rows = [
            {
                **r,
                "predicted_name": res.classes[r["predicted"]],
                "actual_name": res.classes[r["actual"]],
            }
            for r in res.rows
        ]
        print(json.dumps({"dataset": res.dataset, "predictions": rows, "grid": grid}))
        return 0
    for r in res.rows:  # the class names: digits for MNIST, as the note prints them
        print(f'predicted: "{res.classes[r["predicted"]]}", actual: "{res.classes[r["actual"]]}"')
    if res.grid:
        print(f"grid: {res.grid}")
    return 0
