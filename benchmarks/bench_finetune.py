"""Decoder-only fine-tune on BBBC007: seconds per epoch and validation-IoU gain over the base.

Trains on the A9 and 17P1 images, validates on the 20P1 images (held out by plate), from
the bundled default model, on this CPU, with at most ``--minutes`` of training.

    python benchmarks/bench_finetune.py --base default --minutes 10 --out docs/finetune_bbbc007.json
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

from napari_sam import load_model
from napari_sam.training import TrainConfig
from napari_sam.training.data import SampleSet, samples_from_arrays
from napari_sam.training.trainer import Trainer

EVAL = Path(os.environ.get("NAPARI_SAM_EVAL", Path(__file__).resolve().parents[2] / "shared" / "eval")) / "bbbc007"


def load(prefixes: tuple[str, ...]):
    images, labels = [], []
    for path in sorted(EVAL.glob("*_image.tif")):
        if path.name.startswith(prefixes):
            images.append(tifffile.imread(path))
            labels.append(tifffile.imread(path.with_name(path.name.replace("_image", "_labels"))))
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop (keeping the best model) after this")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    train_images, train_labels = load(("A9", "17P1"))
    val_images, val_labels = load(("20P1",))
    val_samples = samples_from_arrays(val_images, val_labels)
    config = TrainConfig(train="decoder", epochs=args.epochs, device="cpu", objects_per_step=16, rounds=11,
                         lr=1e-4, val_max_objects=100)

    base = load_model(args.base, device="cpu")
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
    train_set = SampleSet(samples_from_arrays(train_images, train_labels), base.image_size)
    run = Trainer(load_model(args.base, device="cpu"), config, train_set, val_samples, on_progress=log, cancel=stop)
    result = run.fit()
    timer.cancel()
    best = result.best
    seconds_per_epoch = epochs[-1]["seconds"] / len(epochs) if epochs else float("nan")
    report = {
        "command": " ".join(["python"] + sys.argv),
        "train": "A9 + 17P1 plates (9 images)", "validation": "20P1 plate (5 images)",
        "config": {"train": config.train, "rounds": config.rounds, "objects_per_step": config.objects_per_step,
                   "lr": config.lr},
        "base": before, "best": best, "epochs": epochs, "seconds_per_epoch": round(seconds_per_epoch, 1),
        "point_gain": best["point_miou"] - before["point_miou"], "box_gain": best["box_miou"] - before["box_miou"],
    }
    print(json.dumps({k: report[k] for k in ("seconds_per_epoch", "point_gain", "box_gain")}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
