"""The ``napari-sam`` command: segment, embed, fine-tune, export and manage models headless."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from .console import set_summary
from .files import TIFF_SUFFIXES, OutputError, atomic_write_tiff, check_output


TRACEBACK_ENV = "NAPARI_SAM_TRACEBACK"  # set to 1 to see the traceback of a failure
# Errors that describe the user's input or environment: their message is the whole story.
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, LookupError)


def error_line(error: BaseException) -> str:
    """One line for ``error``: its message for expected errors, its type and a hint otherwise."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, MemoryError):
        return "out of memory" + (f" ({message})" if message else "") + "; try a smaller plane or tile, or fewer planes"
    if isinstance(error, ImportError):
        if "pip install" in message:  # already says what to install (e.g. the text encoder's)
            return message
        name = getattr(error, "name", None) or message
        return (f"a package this needs is not installed ({name}); for text prompts install the extra: "
                "pip install 'napari-samscope[text]'")
    if type(error).__name__ == "DecompressionBombError":
        return f"image too large to decode safely ({message})"
    if isinstance(error, EXPECTED_ERRORS) and message:
        return message
    return f"unexpected {type(error).__name__}: {message or 'no message'} (set {TRACEBACK_ENV}=1 for the traceback)"


QUIET_HELP = "no progress and no output but the final one-line summary (errors still go to stderr)"


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """``count`` comma-separated numbers from ``text`` (an argparse type; ``what`` names them in the error)."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> tuple[float, ...]:
    return parse_numbers(text, 2, "a point (row,col)")


def _box(text: str) -> tuple[float, ...]:
    return parse_numbers(text, 4, "a box (r0,c0,r1,c1)")


def _read_plane(args) -> np.ndarray:
    if args.sample:
        if args.image:
            raise ValueError(f"give an IMAGE file or --sample, not both ({args.image} and --sample {args.sample})")
        if args.plane is not None:
            raise ValueError("--plane needs an IMAGE file; the sample is one plane")
        from .synthetic import sample_nuclei

        return sample_nuclei().image
    if not args.image:
        raise ValueError("give an IMAGE file or --sample nuclei")
    from .io import read_plane

    try:
        plane = read_plane(args.image, args.plane)  # only that plane is read; sizes checked first
    except IndexError as error:
        raise ValueError(f"{error} (use --plane, e.g. --plane 0)") from None
    if plane.ndim == 3 and plane.shape[-1] not in (3, 4):
        raise ValueError(f"{args.image}: a plane of shape {plane.shape} is not 2D grey or RGB(A)")
    return plane


def _cmd_segment(args) -> int:
    from . import Predictor, load_model
    from .annotate import AnnotationSession, PromptSet, paint

    if not (args.point or args.negative or args.box or args.text):
        raise SystemExit(
            "error: give at least one prompt: --point R,C, --negative R,C, --box R0,C0,R1,C1 or --text KIND"
        )
    # Every output is checked before any work: never an input, never an existing file
    # without --overwrite, never two outputs on one file, a TIFF name, a writable folder.
    out = check_output(args.out, overwrite=args.overwrite, inputs=[args.image], suffixes=TIFF_SUFFIXES)
    if args.save_image:
        if os.path.realpath(os.path.expanduser(args.save_image)) == os.path.realpath(out):
            raise OutputError(f"--save-image {args.save_image} is also --out: give two files (nothing was written)")
        check_output(args.save_image, overwrite=args.overwrite, inputs=[args.image, out], suffixes=TIFF_SUFFIXES,
                     what="--save-image")

    plane = _read_plane(args)
    blank = _no_contrast(plane)
    if blank:
        print(f"warning: {blank}; the masks will not mean anything", file=sys.stderr)
    model = load_model(args.model, device=args.device)
    # Native-resolution tiles: a plane larger than the model input is not shrunk to it
    # (small nuclei would vanish); no larger, it is exactly Predictor on the whole plane.
    # The same session, dispatch and painting rule as the Annotate widget.
    session = AnnotationSession(Predictor(model))
    start = time.perf_counter()
    session.set_plane(args.image or args.sample, plane)
    embed_s = time.perf_counter() - start

    start = time.perf_counter()
    prompt_set = PromptSet.make(
        list(args.point) + list(args.negative), [1] * len(args.point) + [0] * len(args.negative), args.box, args.text
    )
    if prompt_set.points_ignored:
        print("several boxes: one object per box, the points are not used")
    session.show(session.predict(session.request(prompt_set, split=args.split)))
    for label, candidates in enumerate(session.candidates, start=1):
        print(f"object {label}: {int(candidates.best.sum())} px, predicted IoU {candidates.scores[0]:.3f}")
    # New labels from 1; earlier objects keep their pixels, later ones fill only background.
    plan = session.plan_commit(next_id=1, split=args.split)
    labels = np.zeros(plane.shape[:2], dtype=np.uint16)
    if plan.values and plan.values[-1] > np.iinfo(labels.dtype).max:
        raise SystemExit(f"error: {plan.values[-1]} objects do not fit a uint16 labels image")
    paint(labels, plan).apply(labels)
    if args.split and len(session.candidates) == 1:
        print(f"split into {len(plan.values)} objects")
    decode_s = time.perf_counter() - start
    atomic_write_tiff(out, labels)
    count = int(labels.max())
    set_summary(f"wrote {out}: {count} object{'' if count == 1 else 's'} on a {labels.shape[0]}x{labels.shape[1]} plane")
    print(f"setup {embed_s:.2f} s, embedding + masks {decode_s * 1000:.0f} ms; wrote {out} ({labels.shape[0]}x{labels.shape[1]} uint16)")
    if args.save_image:
        atomic_write_tiff(args.save_image, np.asarray(plane))
    return 0


def _no_contrast(plane: np.ndarray) -> str | None:
    """Why ``plane`` shows nothing to segment (all NaN / inf, or one value), or None."""
    values = np.asarray(plane)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
        if values.size == 0:
            return "the image holds no finite value (all NaN or infinite)"
    if values.size and values.min() == values.max():
        return f"the image is constant ({values.flat[0]})"
    return None


def _cmd_models(args) -> int:
    from .checkpoints.registry import BUNDLED_DIR as _BUNDLED_DIR, MODELS, cache_dir

    for spec in MODELS.values():
        path = (_BUNDLED_DIR if spec.bundled else cache_dir()) / spec.filename
        state = "present" if path.exists() else ("missing" if spec.bundled else "not downloaded")
        print(f"{spec.name:8s} {spec.description}\n         {path} ({state})")
    set_summary(f"{len(MODELS)} named models")
    return 0


def _cmd_fetch(args) -> int:
    from .checkpoints import fetch_decoder, fetch_weights
    from .checkpoints.registry import MODELS

    path = fetch_weights(args.name)
    print(path)
    decoder = fetch_decoder(args.name) if args.name in MODELS else None  # e.g. vit_b_lm's vit_b_lm_decoder
    if decoder is not None:
        print(decoder)
    set_summary(f"{args.name} weights at {path}" + (f", its instance decoder at {decoder}" if decoder else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-sam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (napari-samscope)")
    parser.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment objects in a 2D plane from point / box prompts")
    seg.add_argument("image", nargs="?", help="TIFF (or PNG/JPEG) image; stacks need --plane")
    seg.add_argument("--sample", choices=["nuclei"], help="use the bundled sample image instead of a file")
    seg.add_argument("--plane", type=lambda t: tuple(int(v) for v in t.split(",")),
                     help="index of the 2D plane in a stack, e.g. 5 or 0,5 (leading axes)")
    seg.add_argument("--point", type=_point, action="append", default=[], help="positive point row,col (repeatable)")
    seg.add_argument("--negative", type=_point, action="append", default=[], help="negative point row,col")
    seg.add_argument("--box", type=_box, action="append", default=[],
                     help="box r0,c0,r1,c1; several boxes segment one object each (points are then not "
                          "used; a --text goes with every box)")
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

    fetch = sub.add_parser("fetch", help="download a named model's weights (and its instance decoder) into the cache, hash-checked")
    fetch.add_argument("name")
    fetch.set_defaults(func=_cmd_fetch)

    from .inference.batch import add_embed_parser
    from .training.cli import add_parser as add_finetune_parser

    add_embed_parser(sub)
    add_finetune_parser(sub)
    from .export.cli import add_parser as add_export_parser

    add_export_parser(sub)
    from .automatic.cli import add_parser as add_segment_all_parser

    add_segment_all_parser(sub)
    from .annotate.propagate_cli import add_propagate_parser

    add_propagate_parser(sub)
    for command in sub.choices.values():
        # Also after the sub-command (`napari-sam segment ... --quiet`); SUPPRESS keeps a
        # --quiet given before it.
        command.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import console

    parser = build_parser()
    args = parser.parse_args(argv)
    console.set_quiet(args.quiet)
    console.take_summary()
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            if args.quiet:
                # The command's own lines go nowhere; the summary line below still prints.
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            status = int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one error boundary of the command line
        # A failure's last line is its error (here, or a command's SystemExit message).
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1
    if status == 0:
        print(console.summary_line(parser.prog, args.command, time.perf_counter() - start), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
