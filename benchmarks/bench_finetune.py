"""Decoder-only fine-tune on BBBC007: seconds per epoch and validation-IoU gain over the base.

Trains on the A9 and 17P1 images, validates on the 20P1 images (held out by plate), from
the bundled default model, on this CPU, with at most ``--minutes`` of training. Images are
cut into crops of the model's input size (native resolution, as tiled inference sees them).

    python benchmarks/bench_finetune.py --base default --minutes 10 --epochs 20 --recipe fast \
        --out docs/finetune_bbbc007_fast.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import tifffile
import torch

from napari_sam import load_model, save_model
from napari_sam.training import RECIPES, TrainConfig, Trainer
from napari_sam.training.data import SampleSet, samples_from_arrays, tile_samples

# The TrainConfig options written into the report.
REPORTED_CONFIG = ("train", "rounds", "objects_per_step", "lr", "epochs", "focal_weight", "dice_weight", "iou_weight",
                   "schedule", "box_probability", "loss_resolution")

EVAL = Path(os.environ.get("NAPARI_SAM_EVAL", Path(__file__).resolve().parents[2] / "shared" / "eval")) / "bbbc007"


def load(prefixes: tuple[str, ...], tile: int, overlap: float = 0.0) -> list:
    """Samples of the plates ``prefixes``, cut into ``tile``-pixel crops (0: whole images).

    Crops at the model's input size train and validate the model as it is used on larger
    planes (tiles at native resolution, see napari_sam.inference.tiling); whole images would be
    shrunk to the input. Crops overlap by the fraction ``overlap`` of ``tile`` (validation:
    none), the last one flush with the edge, crops without labels dropped (``tile_samples``).
    """
    images, labels = [], []
    for path in sorted(EVAL.glob("*_image.tif")):
        if path.name.startswith(prefixes):
            images.append(tifffile.imread(path))
            labels.append(tifffile.imread(path.with_name(path.name.replace("_image", "_labels"))))
    samples = samples_from_arrays(images, labels)
    return tile_samples(samples, tile, overlap=overlap) if tile else samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop (keeping the best model) after this")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save", type=Path, help="also save the best fine-tuned model here")
    parser.add_argument("--tile", type=int, default=None,
                        help="crop size in pixels (default: the model's input size; 0: whole images, resized)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="sam",
                        help="TrainConfig.recipe to start from; the options below override it")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--focal-weight", type=float, help="focal : dice weight (SAM: 20 : 1)")
    parser.add_argument("--objects-per-step", type=int, default=16)
    parser.add_argument("--overlap", type=float, default=0.0,
                        help="overlap of the training crops, a fraction of the crop (validation crops: none)")
    parser.add_argument("--box-probability", type=float, default=0.5,
                        help="share of interactions that start from a box instead of a point")
    parser.add_argument("--loss-resolution", choices=["low", "input"],
                        help="mask loss on the low-res grid or at the model input (TrainConfig.loss_resolution)")
    parser.add_argument("--rounds", type=int,
                        help="simulated-interaction rounds per batch of objects (SAM: 11)")
    parser.add_argument("--iou-weight", type=float, help="weight of the IoU head's MSE (SAM: 1)")
    args = parser.parse_args()
    if args.save and args.out and args.save.with_suffix(".json").resolve() == args.out.resolve():
        parser.error(f"--save {args.save} writes its metadata to {args.out}: choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_model(args.base, device="cpu")
    tile = base.image_size if args.tile is None else args.tile
    train_samples = load(("A9", "17P1"), tile, args.overlap)
    val_samples = load(("20P1",), tile)
    overrides = {"rounds": args.rounds, "lr": args.lr, "focal_weight": args.focal_weight,
                 "iou_weight": args.iou_weight, "loss_resolution": args.loss_resolution}
    config = TrainConfig.recipe(
        args.recipe, train="decoder", epochs=args.epochs, device="cpu", objects_per_step=args.objects_per_step,
        box_probability=args.box_probability, val_max_objects=100,
        **{name: value for name, value in overrides.items() if value is not None},
    )

    before = Trainer(base, config, SampleSet(val_samples, base.image_size), val_samples).validate()
    print(f"base: point mIoU {before['point_miou']:.3f}, box mIoU {before['box_miou']:.3f}", flush=True)

    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60, stop.set)
    timer.start()
    epochs = []
    start = time.time()

    def log(event):
        if event["event"] == "epoch":
            epochs.append({"epoch": event["epoch"], "seconds": round(time.time() - start, 1), **event["val"]})
            print(epochs[-1], flush=True)

    # Validation uses the held-out plate: finetune's own split would take images from the
    # training plates, so the trainer is given the held-out samples directly.
    train_set = SampleSet(train_samples, base.image_size)
    run = Trainer(load_model(args.base, device="cpu"), config, train_set, val_samples, on_progress=log, cancel=stop)
    result = run.fit()
    timer.cancel()
    best = result.best
    if best is None:
        sys.exit(f"no epoch finished within {args.minutes} minutes: nothing to compare")
    seconds_per_epoch = epochs[-1]["seconds"] / len(epochs) if epochs else float("nan")
    report = {
        "command": " ".join(["python"] + sys.argv),
        "train": f"A9 + 17P1 plates (9 images, {len(train_samples)} crops)",
        "validation": f"20P1 plate (5 images, {len(val_samples)} crops)", "tile": tile,
        "threads": torch.get_num_threads(),
        "config": {"recipe": args.recipe, "training_crop_overlap": args.overlap,
                   **{name: config.to_dict()[name] for name in REPORTED_CONFIG}},
        "base": before, "best": best, "epochs": epochs, "seconds_per_epoch": round(seconds_per_epoch, 1),
        "point_gain": best["point_miou"] - before["point_miou"], "box_gain": best["box_miou"] - before["box_miou"],
    }
    print(json.dumps({k: report[k] for k in ("seconds_per_epoch", "point_gain", "box_gain")}))
    if args.save:
        save_model(result.model, args.save, metadata={"base": args.base, "benchmark": report["command"]})
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
