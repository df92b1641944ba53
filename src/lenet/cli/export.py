"""``lenet export``: write a checkpoint as ONNX or TorchScript for other runtimes."""

from __future__ import annotations

import argparse
import json

from lenet.export import DEFAULT_OPSET, EXPORTERS, FORMATS


def register(sub) -> None:
    """Add the ``export`` verb."""
    p = sub.add_parser(
        "export",
        description="Write a checkpoint as ONNX (run it with ONNX Runtime) or TorchScript. The "
        "model takes normalized float32 input (N,1,28,28), N dynamic, and returns logits; the "
        "normalization (mean/std) is recorded in the file's metadata under the key 'lenet'.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.pt) to export")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    p.add_argument("--out", help="output file (default: next to CKPT, .onnx / .torchscript.pt)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="ONNX exporter: dynamo (needs onnxscript), legacy, or auto (default)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip re-running the exported file against PyTorch on a few random inputs",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, then (unless --no-check) compare the file's outputs with PyTorch's."""
    from lenet.export import check_export, export_onnx, export_torchscript

    if args.format == "onnx":
        out = export_onnx(args.checkpoint, args.out, opset=args.opset, exporter=args.exporter)
    else:
        out = export_torchscript(args.checkpoint, args.out)
    summary = {"format": args.format, "path": str(out), "checkpoint": args.checkpoint}
    if not args.no_check:
        summary["max_abs_diff_vs_torch"] = check_export(args.checkpoint, out, args.format)
    if args.json:
        print(json.dumps(summary))
    else:
        check = ""
        if "max_abs_diff_vs_torch" in summary:
            check = f" (max |logit diff| vs PyTorch on 64 random inputs: {summary['max_abs_diff_vs_torch']:.2e})"
        print(f"wrote {out}{check}")
    return 0
