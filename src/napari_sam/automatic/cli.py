"""``napari-sam segment-all IMAGE --out LABELS.tif [--model NAME|PATH] [--mode ais|amg]
[--plane ...|--all-planes] [--overwrite]``: every object of a plane (or stack) as instance labels."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    """Register ``napari-sam segment-all`` on the CLI's subparsers."""
    cmd = subparsers.add_parser(
        "segment-all",
        help="segment every object of a plane or stack into an instance label TIFF (AIS or AMG)",
        description="Automatic instance segmentation: the learned decoder (ais) when the model has one, "
                    "else segment everything from a grid of point prompts (amg).",
    )
    cmd.add_argument("image", help="TIFF image or stack")
    cmd.add_argument("--out", required=True, help="output instance label TIFF (uint32, 0 = background)")
    cmd.add_argument("--model", default="default", help="model name or checkpoint path (a micro-sam checkpoint "
                     "with 'decoder_state' brings its decoder)")
    cmd.add_argument("--decoder", default=None, help="instance decoder file (e.g. micro-sam's *_decoder.pt)")
    cmd.add_argument("--mode", choices=["ais", "amg"], default=None,
                     help="ais (learned decoder) or amg (point grid); default ais when a decoder is found")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--plane", type=lambda t: tuple(int(v) for v in t.split(",")),
                       help="index of the 2D plane in a stack, e.g. 5 or 0,5 (leading axes)")
    where.add_argument("--all-planes", action="store_true", help="every plane of the stack, plane by plane")
    cmd.add_argument("--min-size", type=int, default=0, help="drop objects smaller than this many pixels")
    cmd.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    cmd.add_argument("--cache", default=None, help="embedding cache directory (as filled by `napari-sam embed`)")
    cmd.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    cmd.set_defaults(func=_cmd_segment_all)


def _cmd_segment_all(args) -> int:
    from ..console import set_summary
    from ..files import atomic_write_tiff
    from .amg import AmgOptions
    from .segment import SegmentAllJob, job_stack, segment_plane, segment_stack
    from .watershed import WatershedOptions

    from ..files import OutputError, check_output

    try:  # before any work: never an input, never an existing file without --overwrite
        out = check_output(args.out, overwrite=args.overwrite, inputs=[args.image], suffixes=(".tif", ".tiff"))
    except OutputError as error:
        raise SystemExit(f"error: {error}") from None
    job = SegmentAllJob(path=str(args.image), model=args.model, decoder=args.decoder, mode=args.mode,
                        device=args.device, cache_dir=args.cache,
                        watershed=WatershedOptions(min_size=args.min_size), amg=AmgOptions(min_area=args.min_size))
    stack = job_stack(job)
    start = time.perf_counter()
    if args.all_planes:
        indices = list(stack.plane_indices())
        labels = segment_stack(job, indices).reshape(tuple(stack.stack_shape) + tuple(stack.plane_shape[:2]))
    else:
        if stack.stack_shape and args.plane is None:
            raise SystemExit(
                f"error: {args.image} is a stack of shape {stack.shape} ({stack.axes}); choose --plane N or --all-planes")
        labels = segment_plane(job, args.plane or ())
    atomic_write_tiff(out, np.ascontiguousarray(labels))
    count = int(labels.max()) if labels.size else 0
    set_summary(f"wrote {out}: labels of shape {labels.shape}, up to {count} objects per plane")
    print(f"segment-all {time.perf_counter() - start:.1f} s; wrote {out} {labels.shape} uint32")
    return 0
