"""``napari-sam finetune``: the command-line face of :func:`napari_sam.training.finetune`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..console import set_summary
from .lora import TRAIN_MODES
from .recipes import RECIPES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``finetune`` sub-command on ``subparsers``; it runs :func:`run`."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on annotated images (simulated interactive training)",
        description=(
            "Fine-tune SAM on image / instance-label pairs with simulated clicks (11 rounds per "
            "object; 3 with --recipe fast). Images and labels are matched by file name: two folders "
            "with the same names, or one folder with X_image.tif + X_labels.tif. Stacks give one "
            "sample per plane. "
            "Writes the best model (by validation IoU) to --out and the training state beside it "
            "(model.pt -> model.state.pt), which --resume continues from. Ctrl+C stops after the current step "
            "and keeps a resumable state."
        ),
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", help="folder of image files (TIFF, PNG)")
    data.add_argument("--synthetic", action="store_true", help="train on procedurally generated images")
    parser.add_argument("--labels", help="folder of instance-label files (default: the --images folder)")
    parser.add_argument("--base", default="default", help="model to start from: a name or a checkpoint file")
    parser.add_argument("--train", choices=TRAIN_MODES, help="what to train (default: decoder)")
    parser.add_argument("--epochs", type=int,
                        help="passes over every training object (default: 10; on --resume, the saved run's)")
    parser.add_argument("--out", required=True, help="output model file, e.g. model.pt")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="sam",
                        help="settings to start from: 'sam' (the SAM paper's: focal + dice 20:1, lr 1e-4, 11 "
                             "rounds) or 'fast' (dice alone, lr 1e-3, 3 rounds, loss at the input resolution: "
                             "the most gain per CPU-minute in docs/benchmarks.md); the options below override it")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--val-fraction", type=float, help="share of images used for validation (default: 0.2)")
    parser.add_argument("--objects-per-step", type=int, help="objects of one image per step (default: 8)")
    parser.add_argument("--focal-weight", type=float,
                        help="focal-loss weight beside dice weight 1 (default: the recipe's; 0: dice alone)")
    parser.add_argument("--loss-resolution", choices=["low", "input"],
                        help="mask loss on the low-res logit grid or on logits upsampled to the model input, "
                             "which learns finer edges (default: the recipe's; docs/training.md)")
    parser.add_argument("--rounds", type=int,
                        help="simulated-interaction rounds per batch of objects (default: the recipe's; "
                             "fewer rounds make each step cheaper, docs/training.md)")
    parser.add_argument("--lora-rank", type=int, help="LoRA rank for --train lora (default: 4)")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps or auto (default: best available)")
    parser.add_argument("--no-tile", dest="tile_large_planes", action="store_false", default=None,
                        help="shrink planes larger than the model input to it instead of cutting them into "
                             "input-sized crops at native resolution (the default, as tiled inference)")
    parser.add_argument("--resume", action="store_true", help="continue from the training state beside --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out model (its .json and training state) with a new run")
    parser.set_defaults(func=run)
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("lr", "val_fraction", "objects_per_step", "lora_rank", "seed", "focal_weight", "loss_resolution",
             "rounds", "device", "tile_large_planes")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


class _Progress:
    """Turns progress events into a tqdm bar and one line per epoch."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        from ..console import progress_bar

        if self.bar is None:
            # A live bar in a terminal; a line per 10 % (or minute) in a log file.
            self.bar = progress_bar(total=event["total_steps"], initial=event["step"] - (event["event"] == "step"),
                                    unit="step", desc="finetune")
        if event["event"] == "step":
            self.bar.update(1)
            self.bar.set_postfix(epoch=event["epoch"] + 1, loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
        elif event["event"] == "epoch":
            val = event["val"]
            self.bar.write(
                f"epoch {event['epoch'] + 1}: loss {event['loss']:.4f}, validation mIoU point "
                f"{val['point_miou']:.3f} box {val['box_miou']:.3f}"
                + (f" text {val['text_miou']:.3f}" if "text_miou" in val else "")
                + (f" (two-kind images {val['text_miou_mixed']:.3f})" if "text_miou_mixed" in val else "")
                + f" ({val['objects']} objects)"
            )
        else:
            self.bar.close()


def _check_out(args: argparse.Namespace, state: Path) -> None:
    """Before training: --out may be written, and no earlier model or run is replaced unasked."""
    from ..checkpoints import metadata_path
    from ..files import check_output

    out = Path(args.out).expanduser()
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {out}: give the model file (e.g. model.pt); its .json is written beside it")
    base = Path(str(args.base)).expanduser()
    if base.exists() and out.exists() and os.path.samefile(base, out):
        raise ValueError(f"--out {out} is the --base model; write the fine-tuned model to a new file")
    if args.resume:
        check_output(out, overwrite=True)  # the folder exists and is writable
        return
    if state.exists() and not args.overwrite:
        raise ValueError(f"an unfinished run's state {state} exists: continue it with --resume, "
                         "or pass --overwrite to start over")
    for path in (out, metadata_path(out)):
        check_output(path, overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    """Run ``napari-sam finetune`` with parsed ``args``; returns the exit status."""
    from . import TrainConfig, TrainingDiverged, finetune, state_path_for

    try:
        _check_out(args, state_path_for(args.out))
    except ValueError as err:
        print(f"napari-sam finetune: error: {err}", file=sys.stderr)
        return 2
    cancel = threading.Event()

    def interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
        if cancel.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl+C again to abort)...", file=sys.stderr)
        cancel.set()

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if on_main_thread else None
    progress = _Progress()
    try:
        result = finetune(
            "synthetic" if args.synthetic else args.images,
            args.labels,
            base=args.base,
            train=args.train,
            epochs=args.epochs,
            out=args.out,
            resume=args.resume,
            config=TrainConfig.recipe(args.recipe),
            on_progress=progress,
            cancel=cancel,
            **_options(args),
        )
    except (FileNotFoundError, ValueError, TrainingDiverged) as err:
        if progress.bar is not None:
            progress.bar.close()  # the message on a line of its own, not after the bar
        print(f"napari-sam finetune: error: {err}", file=sys.stderr)
        return 2
    finally:
        if progress.bar is not None:
            progress.bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    state = state_path_for(args.out)
    if result.cancelled:
        print(f"stopped at step {result.step} of {result.total_steps}; resume with --resume (state: {state})")
    if result.model_path is not None:
        best = result.best or {}
        saved = (
            f"saved {result.model_path} (best epoch {best.get('epoch', 0) + 1}: mIoU point "
            f"{best.get('point_miou', float('nan')):.3f}, box {best.get('box_miou', float('nan')):.3f})"
        )
        print(saved)
        set_summary(f"{saved}, {result.step} of {result.total_steps} steps")
    elif result.cancelled:
        set_summary(f"stopped at step {result.step} of {result.total_steps}, nothing saved")
    return 0
