"""``napari-sam segment-all IMAGE --out LABELS.tif [--model NAME|PATH] [--mode ais|amg]
[--plane ...|--all-planes] [--link [objects|tracks]] [--overwrite]``: every object of a plane (or stack) as
instance labels; with ``--link`` the planes' instances linked into 3D objects or tracks (:mod:`.linked`)."""

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
    cmd.add_argument("--model", default="default", help="model name or checkpoint path; a named model with a "
                     "decoder (vit_b_lm, vit_t_em_organelles, ...) and a micro-sam checkpoint with 'decoder_state' "
                     "bring their decoder")
    cmd.add_argument("--decoder", default=None, help="instance decoder file (e.g. micro-sam's *_decoder.pt)")
    cmd.add_argument("--mode", choices=["ais", "amg"], default=None,
                     help="ais (learned decoder) or amg (point grid); default ais when a decoder is found")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--plane", type=lambda t: tuple(int(v) for v in t.split(",")),
                       help="index of the 2D plane in a stack, e.g. 5 or 0,5 (leading axes)")
    where.add_argument("--all-planes", action="store_true", help="every plane of the stack, plane by plane")
    cmd.add_argument("--link", nargs="?", const="auto", choices=["auto", "objects", "tracks"], default=None,
                     help="link the per-plane instances of a stack of one plane axis by overlap: one id per 3D "
                          "object (z) or track (t; divisions get new ids, and LABELS.tracks.csv is written beside "
                          "--out with track_id,frame,row,col,parent); auto: tracks when the axis is T")
    cmd.add_argument("--link-iou", type=float, default=0.3, help="with --link: lowest IoU of two linked instances")
    cmd.add_argument("--min-planes", type=int, default=None, help="with --link: drop linked objects on fewer planes "
                     "(default 3 for 3D objects, 1 for tracks)")
    cmd.add_argument("--min-size", type=int, default=None, help="drop objects smaller than this many pixels "
                     "(default: the decoder's tuned value; 0 for AMG)")
    cmd.add_argument("--object-size", type=_object_size, default="auto", metavar="auto|none|PIXELS",
                     help="typical object diameter in pixels, so the plane is segmented resized to the size "
                          "the model knows (ais, and amg with the default model); auto (default): measured on a "
                          "first pass (decoders trained here); none: the plane as it is")
    cmd.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    cmd.add_argument("--cache", default=None, help="embedding cache directory (as filled by `napari-sam embed`)")
    cmd.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    cmd.set_defaults(func=_cmd_segment_all)


def _object_size(text: str):
    import argparse

    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected auto, none or a diameter in pixels (1-10000), got {text!r}")
    return value


def _cmd_segment_all(args) -> int:
    from ..console import set_summary
    from ..files import atomic_write_tiff
    from .segment import SegmentAllJob, job_stack, segment_plane, segment_stack

    from ..files import OutputError, check_output

    try:  # before any work: never an input, never an existing file without --overwrite
        out = check_output(args.out, overwrite=args.overwrite, inputs=[args.image], suffixes=(".tif", ".tiff"))
    except OutputError as error:
        raise SystemExit(f"error: {error}") from None
    job = SegmentAllJob(path=str(args.image), model=args.model, decoder=args.decoder, mode=args.mode,
                        device=args.device, cache_dir=args.cache, min_size=args.min_size,
                        object_size=args.object_size)
    stack = job_stack(job)
    if args.link:
        return _segment_linked(args, job, stack, out)
    start = time.perf_counter()
    if args.all_planes:
        indices = list(stack.plane_indices())
        labels = segment_stack(job, indices).reshape(tuple(stack.stack_shape) + tuple(stack.plane_shape[:2]))
    else:
        if stack.stack_shape and args.plane is None:
            raise SystemExit(
                f"error: {args.image} is a stack of shape {stack.shape} ({stack.axes}); choose --plane N or --all-planes")
        labels = segment_plane(job, args.plane or ())
    atomic_write_tiff(out, np.ascontiguousarray(labels), photometric="minisblack")  # a 3-plane stack is not RGB
    count = int(labels.max()) if labels.size else 0
    set_summary(f"wrote {out}: labels of shape {labels.shape}, up to {count} objects per plane")
    print(f"segment-all {time.perf_counter() - start:.1f} s; wrote {out} {labels.shape} uint32")
    return 0


def _segment_linked(args, job, stack, out) -> int:
    """``--link``: every plane, then the instances linked into 3D objects or tracks."""
    from ..console import set_summary
    from ..files import OutputError, atomic_write_tiff, check_output
    from .linked import link_kind, link_planes, tracks_path, write_tracks_csv
    from .segment import segment_stack

    if len(stack.stack_shape) != 1 or args.plane is not None:
        raise SystemExit(f"error: --link needs a stack with one axis of planes (z or t) and every plane; "
                         f"{args.image} has axes {stack.axes} and shape {stack.shape}")
    if args.min_planes is not None and args.min_planes < 1:
        raise SystemExit(f"error: --min-planes must be >= 1, got {args.min_planes}")
    kind = link_kind(stack.stack_axes) if args.link == "auto" else args.link
    csv = tracks_path(out) if kind == "tracks" else None
    if csv is not None:
        try:
            check_output(csv, overwrite=args.overwrite, inputs=[args.image], what="tracks table")
        except OutputError as error:
            raise SystemExit(f"error: {error}") from None
    start = time.perf_counter()
    per_plane = segment_stack(job, list(stack.plane_indices()))
    try:
        linked = link_planes(per_plane, kind, iou_floor=args.link_iou, min_planes=args.min_planes)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    # minisblack: tifffile would take a stack of 3 or 4 planes for RGB(A) samples
    atomic_write_tiff(out, np.ascontiguousarray(linked.labels), photometric="minisblack")
    count = len(np.unique(linked.labels)) - int((linked.labels == 0).any())
    what = "tracks" if kind == "tracks" else "3D objects"
    written = f"wrote {out}: {count} {what} in labels of shape {linked.labels.shape}"
    if csv is not None:
        write_tracks_csv(csv, linked)
        written += f" and {csv} ({len(linked.parents)} daughters of divisions)"
    set_summary(written)
    print(f"segment-all --link {time.perf_counter() - start:.1f} s; {written}")
    return 0
