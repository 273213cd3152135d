"""``napari-sam export``: the command-line face of :func:`napari_sam.export.export_model`."""

from __future__ import annotations

import argparse

from . import FORMATS


def _point(text: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is row,col (two numbers), got {text!r}") from None
    return row, col


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``export`` sub-command on ``subparsers``; it runs :func:`run`."""
    parser = subparsers.add_parser(
        "export",
        help="write a model as a BioImage.IO model package (.zip) for model zoos and other tools",
        description=(
            "Write MODEL (a name such as 'default' or 'vit_b', or a checkpoint file such as a fine-tuned "
            "model.pt) as a BioImage.IO model package: weights, rdf.yaml, test image and prompt with the "
            "outputs they give, cover picture, README and citations. Validate it with `bioimageio test "
            "PACKAGE.zip` (pip install bioimageio.core)."
        ),
    )
    parser.add_argument("model", help="model name (default, vit_t, vit_b, ...) or checkpoint path")
    parser.add_argument("--format", choices=FORMATS, default="bioimageio", help="package format (default: bioimageio)")
    parser.add_argument("--out", required=True, help="package file to write, e.g. my_model.zip")
    parser.add_argument("--name", help="name shown by model zoos (letters, digits, spaces, _+-(); default from the model)")
    parser.add_argument("--description", help="one-paragraph description (default from the model)")
    parser.add_argument("--author", action="append", help="who trained the weights (repeatable)")
    parser.add_argument("--license", help="SPDX licence id of the weights (default from the model's lineage)")
    parser.add_argument("--image", help="test image file (default: the bundled sample nuclei); needs --point")
    parser.add_argument("--point", type=_point, action="append", default=[], help="positive test point row,col")
    parser.add_argument("--negative", type=_point, action="append", default=[], help="negative test point row,col")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``napari-sam export`` with parsed ``args``; returns the exit status."""
    from ..console import set_summary
    from . import export_model

    options = {"overwrite": args.overwrite, "name": args.name, "description": args.description,
               "license": args.license}
    if args.author:
        options["authors"] = args.author
    if args.image or args.point or args.negative:
        if not args.image or not (args.point or args.negative):
            raise SystemExit("error: a test --image needs at least one --point (or --negative) on it, and vice versa")
        from ..files import read_image

        options["image"] = read_image(args.image)
        options["points"] = list(args.point) + list(args.negative)
        options["point_labels"] = [1] * len(args.point) + [0] * len(args.negative)
    path = export_model(args.model, args.out, format=args.format, **options)
    print(f"wrote {path}")
    set_summary(f"wrote {args.format} package {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
