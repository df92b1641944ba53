"""``lenet viz``: the input, every layer's feature maps and the output probabilities in one picture."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_json


def register(sub) -> None:
    """Add the ``viz`` verb."""
    p = sub.add_parser(
        "viz",
        description="Runs IMAGE through the checkpoint's model and draws the input, the feature "
        "maps of every layer (after its activation) and the output probabilities in one picture.",
    )
    p.add_argument("checkpoint")
    p.add_argument("image", help="test:N / train:N (an MNIST digit) or a 28x28 image file")
    p.add_argument("--out", help="PNG path (default: viz.png next to the checkpoint)")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw and print where the picture went."""
    from lenet.checkpoint import load_model, output_dir_for
    from lenet.visualize import load_digit, viz

    lm = load_model(args.checkpoint)
    image, label = load_digit(args.image, args.data_dir)
    out = args.out or output_dir_for(args.checkpoint) / "viz.png"
    res = viz(lm.model, lm.normalization, image, out, title=f"{lm.name} on {label}")
    if args.json:
        picture = {"picture": str(res.path), "predicted": res.predicted}
        print(json.dumps({**picture, "probabilities": res.probabilities, "layers": res.layers}))
    else:
        print(f"predicted {res.predicted} ({100 * res.probabilities[res.predicted]:.1f}%)")
        print(f"picture: {res.path}")
    return 0
