"""Tune the AMG thresholds of a model on BBBC007's 17P1 plates (never the evaluation images).

For each grid density, every candidate mask of the tuning images is generated once with
the filters open (predicted IoU and stability >= 0, no NMS); each combination of
thresholds is then a cheap filter + NMS + paint, scored by F1 at IoU 0.5 and the DSB-style
mean AP (:mod:`napari_sam.automatic.scoring`, counts pooled over the images).

    OMP_NUM_THREADS=1 python benchmarks/tune_amg.py --model default --images 3 --out docs/amg_tuning_default.json
    OMP_NUM_THREADS=1 python benchmarks/tune_amg.py --densities 8,12 --pred-iou 0.65,0.7,0.75 \
        --stability 0.9,0.95 --nms 0.15,0.2,0.3 --min-area 30,60 --out docs/amg_tuning_default_fine.json

The chosen values go to ``AMG_PRESETS`` in ``napari_sam/automatic/amg.py`` (per model);
benchmarks/bench_automatic_quality.py reports them on the other images.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_sam.automatic import amg
from napari_sam.automatic.amg import AmgOptions, MaskCandidate, mask_nms, paint
from napari_sam.automatic.scoring import counts
from napari_sam.checkpoints import load_model

EVAL = Path(os.environ.get("NAPARI_SAM_EVAL", Path(__file__).resolve().parents[2] / "shared" / "eval"))
TUNING = "bbbc007/17P1_*_image.tif"  # the tuning split; bench_automatic_quality.py reports the rest


def candidates(model, plane: np.ndarray, points_per_side: int) -> list[MaskCandidate]:
    """Every candidate of the grid (no IoU / stability threshold, no NMS), with min_area 0."""
    open_filters = AmgOptions(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              stability_score_offset=1.0, min_area=0)
    original, amg.mask_nms = amg.mask_nms, lambda found, threshold: found
    try:
        return amg.generate_masks(model, plane, open_filters)
    finally:
        amg.mask_nms = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=3, help="how many 17P1 plates to tune on")
    parser.add_argument("--densities", default="12,16,24", help="points per tile side to try")
    parser.add_argument("--pred-iou", default="0.5,0.6,0.7,0.8,0.88", help="pred_iou_thresh values to try")
    parser.add_argument("--stability", default="0.6,0.75,0.85,0.95", help="stability_score_thresh values")
    parser.add_argument("--nms", default="0.3,0.5,0.7", help="nms_iou_thresh values")
    parser.add_argument("--min-area", default="0,30", help="min_area values (here: masks smaller are dropped)")
    parser.add_argument("--out", default=None, help="JSON with every combination's scores")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = load_model(args.model, device="cpu")
    paths = sorted(EVAL.glob(TUNING))[: args.images]
    images = [(tifffile.imread(p), tifffile.imread(str(p).replace("_image", "_labels"))) for p in paths]
    print("tuning on", [p.name for p in paths])
    rows = []
    for density in [int(v) for v in args.densities.split(",")]:
        start = time.perf_counter()
        found = [candidates(model, image, density) for image, _ in images]
        print(f"{density} points per side: {sum(map(len, found))} candidates in {time.perf_counter() - start:.0f} s")
        values = [[float(v) for v in text.split(",")] for text in (args.pred_iou, args.stability, args.nms,
                                                                   args.min_area)]
        for pred_iou, stability, nms, min_area in itertools.product(*values):
            total = None
            for (image, truth), masks in zip(images, found):
                kept = [c for c in masks if c.score >= pred_iou and c.stability >= stability
                        and c.area >= min_area]
                labels = paint(mask_nms(kept, nms), image.shape[:2])
                total = counts(labels, truth) if total is None else total + counts(labels, truth)
            rows.append(dict(points_per_side=density, pred_iou_thresh=pred_iou, stability_score_thresh=stability,
                             nms_iou_thresh=nms, min_area=min_area, f1=round(total.f1(0.5), 4),
                             mean_ap=round(total.mean_ap(), 4), predicted=total.predicted, true=total.true))
    rows.sort(key=lambda r: (-r["mean_ap"], -r["f1"]))
    for row in rows[:10]:
        print(row)
    if args.out:
        Path(args.out).write_text(json.dumps({"images": [p.name for p in paths], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
