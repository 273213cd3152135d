"""The ``napari-sam`` command: segment, embed, fine-tune and manage models headless."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _pair(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> tuple[float, ...]:
    return _pair(text, 2, "a point (row,col)")


def _box(text: str) -> tuple[float, ...]:
    return _pair(text, 4, "a box (r0,c0,r1,c1)")


def write_tiff_atomic(path: str | os.PathLike, data: np.ndarray) -> None:
    """Write a TIFF through a temporary file in the same folder, then rename it in place."""
    import tifffile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, compression="zlib")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_plane(args) -> np.ndarray:
    if args.sample:
        from .synthetic import sample_nuclei

        return sample_nuclei().image
    if not args.image:
        raise SystemExit("error: give an IMAGE file or --sample nuclei")
    import tifffile

    image = tifffile.imread(args.image) if str(args.image).lower().endswith((".tif", ".tiff")) else _read_other(args.image)
    if args.plane is not None:
        image = image[tuple(args.plane)]
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim > (3 if rgb else 2):
        raise SystemExit(
            f"error: {args.image} has shape {image.shape}; choose a 2D plane with --plane, e.g. --plane 0 "
            "for the first plane of a stack"
        )
    return image


def _read_other(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def _cmd_segment(args) -> int:
    from . import Predictor, load_model
    from .inference.tiling import TiledPredictor

    if not (args.point or args.negative or args.box or args.text):
        raise SystemExit(
            "error: give at least one prompt: --point R,C, --negative R,C, --box R0,C0,R1,C1 or --text KIND"
        )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it (nothing was written)")

    plane = _read_plane(args)
    model = load_model(args.model, device=args.device)
    # Native-resolution tiles: a plane larger than the model input is not shrunk to it
    # (small nuclei would vanish); no larger, it is exactly Predictor on the whole plane.
    predictor = TiledPredictor(Predictor(model))
    start = time.perf_counter()
    predictor.set_plane(plane)
    embed_s = time.perf_counter() - start

    labels = np.zeros(plane.shape[:2], dtype=np.uint16)
    start = time.perf_counter()
    if len(args.box) > 1 and not (args.point or args.negative or args.text):
        results = predictor.predict_boxes(args.box)
    else:
        points = list(args.point) + list(args.negative)
        point_labels = [1] * len(args.point) + [0] * len(args.negative)
        results = [
            predictor.predict(
                points=points or None,
                point_labels=point_labels or None,
                box=args.box[0] if args.box else None,
                text=args.text,
            )
        ]
    for label, candidates in enumerate(results, start=1):
        # Earlier objects keep their pixels: later ones fill only background.
        labels[candidates.best & (labels == 0)] = label
        print(f"object {label}: {int(candidates.best.sum())} px, predicted IoU {candidates.scores[0]:.3f}")
    if args.split:
        from .inference.objects import split_objects

        pieces = split_objects(labels > 0)
        if pieces.max() > np.iinfo(labels.dtype).max:
            raise SystemExit(f"error: {pieces.max()} objects do not fit a uint16 labels image")
        labels = pieces.astype(labels.dtype)
        print(f"split into {int(labels.max())} objects")
    decode_s = time.perf_counter() - start
    write_tiff_atomic(out, labels)
    print(f"setup {embed_s:.2f} s, embedding + masks {decode_s * 1000:.0f} ms; wrote {out} ({labels.shape[0]}x{labels.shape[1]} uint16)")
    if args.save_image:
        write_tiff_atomic(args.save_image, np.asarray(plane))
    return 0


def _cmd_models(args) -> int:
    from .checkpoints.registry import BUNDLED_DIR as _BUNDLED_DIR, MODELS, cache_dir

    for spec in MODELS.values():
        path = (_BUNDLED_DIR if spec.bundled else cache_dir()) / spec.filename
        state = "present" if path.exists() else ("missing" if spec.bundled else "not downloaded")
        print(f"{spec.name:8s} {spec.description}\n         {path} ({state})")
    return 0


def _cmd_fetch(args) -> int:
    from .checkpoints import fetch_weights

    print(fetch_weights(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment objects in a 2D plane from point / box prompts")
    seg.add_argument("image", nargs="?", help="TIFF (or PNG/JPEG) image; stacks need --plane")
    seg.add_argument("--sample", choices=["nuclei"], help="use the bundled sample image instead of a file")
    seg.add_argument("--plane", type=lambda t: tuple(int(v) for v in t.split(",")),
                     help="index of the 2D plane in a stack, e.g. 5 or 0,5 (leading axes)")
    seg.add_argument("--point", type=_point, action="append", default=[], help="positive point row,col (repeatable)")
    seg.add_argument("--negative", type=_point, action="append", default=[], help="negative point row,col")
    seg.add_argument("--box", type=_box, action="append", default=[],
                     help="box r0,c0,r1,c1; several boxes alone segment one object each")
    seg.add_argument("--text", help='kind of object, e.g. "nucleus" (alone: every object of that kind as one mask)')
    seg.add_argument("--split", action="store_true",
                     help="write the mask as one label per object (connected pieces, touching ones cut at "
                          "their necks); for text alone, e.g. --text nucleus --split")
    seg.add_argument("--model", default="default", help="model name (default, vit_t, vit_b, ...) or checkpoint path")
    seg.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    seg.add_argument("--out", required=True, help="output Labels TIFF (uint16, 0 = background)")
    seg.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    seg.add_argument("--save-image", help="also write the input plane as a TIFF (handy with --sample)")
    seg.set_defaults(func=_cmd_segment)

    lst = sub.add_parser("models", help="list named models and where their weights are")
    lst.set_defaults(func=_cmd_models)

    fetch = sub.add_parser("fetch", help="download a named model's weights into the cache (sha256-checked)")
    fetch.add_argument("name")
    fetch.set_defaults(func=_cmd_fetch)

    from .inference.batch import add_embed_parser
    from .training.cli import add_parser as add_finetune_parser

    add_embed_parser(sub)
    add_finetune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
