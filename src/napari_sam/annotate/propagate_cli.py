"""``napari-sam propagate``: objects given on one plane each, segmented through a stack.

::

    napari-sam propagate STACK --point I,ROW,COL ... --box I,R0,C0,R1,C1 ... --out LABELS.tif
                         [--axis N] [--model NAME] [--at J,K] [--overwrite]

Each ``--point`` / ``--box`` is one object on plane ``I`` of the propagation axis (the
first axis of the stack unless ``--axis``); objects get ids 1, 2, ... in the order given.
The stack is read one plane at a time; the output is a label stack of the input's shape
(colour samples dropped), uint16 (uint32 past 65535 objects). Along an axis the file
names ``T`` the time-lapse defaults apply (``PropagationSettings.for_axis``: box prompts,
no contrast rule); ``--prompt`` / ``--min-contrast`` / ``--min-score`` override them.

With a SAM 2.1 model the objects are followed with SAM 2's memory
(:mod:`~napari_sam.annotate.propagate_video`); ``--prompt`` and ``--min-contrast`` do not
apply then (:data:`SAM2_NOTE`, the end of ``--help``).
"""

from __future__ import annotations

import argparse

import numpy as np

from ..cli import parse_numbers as _numbers


SAM2_NOTE = (
    "With a SAM 2.1 model (--model sam2.1_hiera_tiny, _small, _base_plus or _large, or a SAM 2.1 file with its "
    "memory modules) the objects are followed with SAM 2's memory: the planes are the frames of a video, every "
    "object is tracked at once, and each whole plane is stretched to the model's input (no tiles). An object "
    "stops where its predicted IoU is below --min-score, where SAM 2's object score says it is absent, or where "
    "its mask has fewer than 4 pixels. The SAM 1 rules do not apply then: --prompt and --min-contrast are "
    "ignored, as are the stops on area jumps and on leaving the previous mask; --division works as with SAM 1.")


def _point(text: str) -> tuple[str, int, tuple[float, ...]]:
    values = _numbers(text, 3, "a point (plane,row,col)")
    return "point", int(values[0]), values[1:]


def _box(text: str) -> tuple[str, int, tuple[float, ...]]:
    values = _numbers(text, 5, "a box (plane,r0,c0,r1,c1)")
    return "box", int(values[0]), values[1:]


def _indices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at takes comma-separated integers, got {text!r}") from None


def make_predictor(model):
    """The predictor the command uses (a seam for tests)."""
    from ..inference.predictor import Predictor

    return Predictor(model)


def seeds_from_args(objects) -> list:
    """One :class:`~napari_sam.annotate.propagate.Seed` per ``--point`` / ``--box``, ids from 1."""
    from .propagate import Seed

    seeds = []
    for label, (kind, plane, values) in enumerate(objects, start=1):
        if kind == "point":
            seeds.append(Seed(label, plane, points=np.array([values]), point_labels=np.array([1])))
        else:
            seeds.append(Seed(label, plane, box=np.array(values)))
    return seeds


def run(args) -> int:
    from ..checkpoints import load_model
    from ..console import progress_bar, set_summary
    from ..files import atomic_write_tiff
    from ..io import TIFF_SUFFIXES, open_stack
    from .propagate import PlaneSource, PropagationSettings, Propagator

    if not args.objects:
        raise SystemExit("error: give at least one object: --point I,ROW,COL or --box I,R0,C0,R1,C1")
    from ..files import OutputError, check_output

    try:  # before any work: never an input, never an existing file without --overwrite
        out = check_output(args.out, overwrite=args.overwrite, inputs=[args.stack], suffixes=(".tif", ".tiff"))
    except OutputError as error:
        raise SystemExit(f"error: {error}") from None
    if not str(args.stack).lower().endswith(TIFF_SUFFIXES):
        raise SystemExit(f"error: {args.stack}: propagate reads TIFF stacks (.tif, .tiff, OME-TIFF)")
    with open_stack(args.stack) as stack:
        try:
            source = PlaneSource(stack, args.axis, args.at)
        except ValueError as error:
            raise SystemExit(f"error: {args.stack} (axes {stack.axes!r}, shape {stack.shape}): {error}") from None
        seeds = seeds_from_args(args.objects)
        for seed in seeds:
            if not 0 <= seed.plane < len(source):
                raise SystemExit(f"error: object {seed.label} is on plane {seed.plane}; axis {args.axis} "
                                 f"({stack.axes[args.axis]!r}) has {len(source)} planes")
        # The stack's axis letter picks the measured defaults: T (time-lapse) or anything else (volume).
        settings = PropagationSettings.for_axis(stack.axes[args.axis], prompt=args.prompt, min_score=args.min_score,
                                                min_contrast=args.min_contrast, division=args.division)
        predictor = make_predictor(load_model(args.model, device=args.device))
        bar = progress_bar(2 * len(source), desc="propagate", unit="plane")
        done = [0]

        def progress(current: int, total: int) -> None:
            bar.update(current - done[0])
            done[0] = current

        try:
            result = Propagator(predictor, settings=settings).run(source, seeds, progress=progress)
        finally:
            bar.close()
        shape = stack.shape[:-1] if stack.rgb else stack.shape
    dtype = np.uint16 if result.labels_ids and max(result.labels_ids) <= np.iinfo(np.uint16).max else np.uint32
    labels = np.zeros(shape, dtype)
    result.edit(labels, args.axis, source.position).apply(labels)
    for label in result.labels_ids:
        planes = result.planes(label)
        span = f"planes {planes[0]}-{planes[-1]}" if planes else "no plane"
        print(f"object {label}: {span} ({len(planes)} planes)")
    for division in result.divisions:
        print(f"object {division.parent} divides on plane {division.plane}")
    atomic_write_tiff(out, labels, photometric="minisblack")  # never RGB, whatever the plane count
    set_summary(f"wrote {out}: {len(result.labels_ids)} object{'' if len(result.labels_ids) == 1 else 's'} "
                f"through {len(result.planes())} planes of {shape}")
    return 0


def add_propagate_parser(subparsers) -> None:
    """Register ``napari-sam propagate`` on the CLI's subparsers."""
    from .propagate import DIVISION_MODES, PROMPT_MODES

    cmd = subparsers.add_parser(
        "propagate", help="segment objects through the planes of a stack (z or t) from one prompt each",
        description=__doc__.split("\n\n")[0], epilog=SAM2_NOTE)
    cmd.add_argument("stack", help="TIFF stack (read one plane at a time)")
    cmd.add_argument("--point", dest="objects", type=_point, action="append", default=[],
                     help="one object from a positive point on plane I: I,ROW,COL (repeatable)")
    cmd.add_argument("--box", dest="objects", type=_box, action="append",
                     help="one object from a box on plane I: I,R0,C0,R1,C1 (repeatable)")
    cmd.add_argument("--out", required=True, help="output label stack TIFF (the input's shape, 0 = background)")
    cmd.add_argument("--axis", type=int, default=0, help="the propagation axis among the leading axes (default 0)")
    cmd.add_argument("--at", type=_indices, default=None,
                     help="indices of the other leading axes, e.g. a channel (default all 0)")
    cmd.add_argument("--model", default="default", help="model name (default, vit_t, vit_b, sam2.1_hiera_tiny, ...) or checkpoint path "
                          "(a SAM 2.1 model propagates with its memory, see below)")
    cmd.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    cmd.add_argument("--prompt", choices=PROMPT_MODES, default=None,
                     help="how a plane's mask prompts the next plane (default points+mask; box along a T axis; "
                          "ignored with a SAM 2.1 model)")
    cmd.add_argument("--min-score", type=float, default=None, help="stop below this predicted IoU (default 0: never)")
    cmd.add_argument("--min-contrast", type=float, default=None,
                     help="stop where the object's contrast with its surroundings falls below this share of the "
                          "seed's (default 0.65; 0 along a T axis; ignored with a SAM 2.1 model)")
    cmd.add_argument("--division", choices=DIVISION_MODES, default="ignore",
                     help="along time: what a division does (stop the track, or daughters get new ids)")
    cmd.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    cmd.set_defaults(func=run)
