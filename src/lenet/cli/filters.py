"""``lenet filters``: the learned first-layer (c1) kernels of a checkpoint as one picture."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """Add the ``filters`` verb."""
    p = sub.add_parser(
        "filters",
        description="Draws the first convolution's kernels (c1 for LeNet-5) with one shared "
        "red/blue colour scale (red positive, blue negative).",
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", help="PNG path (default: filters.png next to the checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw and print where the picture went."""
    from lenet.checkpoint import load_model, output_dir_for
    from lenet.visualize import plot_filters

    lm = load_model(args.checkpoint)
    out = args.out or output_dir_for(args.checkpoint) / "filters.png"
    print(
        f"picture: {plot_filters(lm.model, out, title=f'{lm.name}: learned first-layer kernels')}"
    )
    return 0
