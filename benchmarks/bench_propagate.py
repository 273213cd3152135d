"""Propagation quality and speed on the evaluation volumes and the HeLa time-lapse.

- Volumes (``cells3d_nbsd``, ``stardist_synthetic3d``): for every object, one box (or one
  point: the deepest pixel) on its middle plane, propagated both ways; the 3D IoU against
  the object's true voxels.
- Time-lapse (``ctc_hela_timelapse``): its labels are per-frame segmentations whose ids
  change between frames, so reference tracks are made by overlap linking
  (``annotate.linking.link``, IoU floor 0.3). Every track present in frame 0 is followed
  from its frame-0 box (all objects at once); per-frame IoU against the reference track,
  a frame where either is missing counting 0, over the frames the reference exists.
- Speed: seconds per object including embeddings (cold store), and decoding only
  (ms per plane per object, warm store).
- Tuning split (``--part``): the stop rules and the prompt were chosen on the *tune* half
  (volumes: the objects at even positions of the sorted ids; HeLa: the tracks whose
  frame-0 centroid lies left of column 560) and are reported on the *held-out* half
  (odd positions; the right of the frame). Every run prints both halves and all.

    python benchmarks/bench_propagate.py --out docs/benchmarks_propagate.json [--prompt box] [--limit 40]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_sam import load_model
from napari_sam.annotate.linking import link
from napari_sam.annotate.propagate import PlaneSource, PropagationSettings, Propagator, Seed, interior_points
from napari_sam.annotate.stack_objects import PlaneMask
from napari_sam.inference.predictor import Predictor

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def object_seeds(labels: np.ndarray, value: int, how: str) -> Seed:
    planes = np.flatnonzero((labels == value).any(axis=(1, 2)))
    middle = int(planes[len(planes) // 2])
    mask = labels[middle] == value
    if how == "point":
        point = interior_points(PlaneMask.from_mask(mask), count=1)
        return Seed(1, middle, points=point, point_labels=np.array([1]))
    rows, cols = np.nonzero(mask)
    return Seed(1, middle, box=np.array([rows.min(), cols.min(), rows.max(), cols.max()], float))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


HELA_TUNE_COLUMNS = 560  # HeLa tracks left of this column (frame-0 centroid) tuned the defaults


def halves(scores: dict[int, float], tune: set[int]) -> dict:
    """Mean of ``scores`` over the tune half, the held-out half and all."""
    held = [v for k, v in scores.items() if k not in tune]
    tuned = [v for k, v in scores.items() if k in tune]
    return {"held_out": float(np.mean(held)) if held else None, "tune": float(np.mean(tuned)) if tuned else None,
            "all": float(np.mean(list(scores.values()))), "held_out_count": len(held), "tune_count": len(tuned)}


def volume(name: str, predictor: Predictor, settings: PropagationSettings, how: str, limit: int | None) -> dict:
    image = tifffile.imread(EVAL / name / "nuclei3d_image.tif")
    labels = tifffile.imread(EVAL / name / "nuclei3d_labels.tif")
    values = [int(v) for v in np.unique(labels) if v]
    tune = set(values[0::2])  # the defaults were chosen on these; report the others
    if limit:
        values = values[:: max(1, len(values) // limit)][:limit]
    propagator = Propagator(predictor, settings=settings)
    source = PlaneSource(image)
    scores, seconds, decode_ms, per_object = [], [], [], {}
    for value in values:
        seed = object_seeds(labels, value, how)
        start = time.perf_counter()
        result = propagator.run(source, [seed])
        seconds.append(time.perf_counter() - start)
        scores.append(iou(result.labels(np.uint8) == 1, labels == value))
        per_object[value] = scores[-1]
        # Warm store: the decoder and the propagation's own work only.
        start = time.perf_counter()
        again = Propagator(predictor, propagator.store, settings=settings).run(source, [seed])
        decode_ms.append(1000 * (time.perf_counter() - start) / max(len(again.planes(1)), 1))
    return {"objects": len(values), "mean_3d_iou": float(np.mean(scores)), "median_3d_iou": float(np.median(scores)),
            "mean_3d_iou_halves": halves(per_object, tune), "per_object": per_object,
            "seconds_per_object_with_embeddings": float(np.mean(seconds)),
            "ms_per_plane_per_object_warm": float(np.mean(decode_ms)),
            "planes": int(image.shape[0]), "plane_shape": list(image.shape[1:])}


def timelapse(predictor: Predictor, overrides: dict, frames: int) -> dict:
    image = tifffile.imread(EVAL / "ctc_hela_timelapse" / "hela_t00-19_image.tif")[:frames]
    reference = link(tifffile.imread(EVAL / "ctc_hela_timelapse" / "hela_t00-19_labels.tif")[:frames]).labels
    tracks = [int(v) for v in np.unique(reference[0]) if v]
    seeds = []
    for label in tracks:
        rows, cols = np.nonzero(reference[0] == label)
        seeds.append(Seed(label, 0, box=np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)))
    settings = PropagationSettings.for_axis("t", **{**overrides, "direction": "forward"})
    start = time.perf_counter()
    result = Propagator(predictor, settings=settings).run(PlaneSource(image), seeds)
    seconds = time.perf_counter() - start
    per_frame, per_track = [], {}
    tune = {label for label in tracks if np.nonzero(reference[0] == label)[1].mean() < HELA_TUNE_COLUMNS}
    for label in tracks:
        masks = result.masks.get(label, {})
        for t in range(frames):
            truth = reference[t] == label
            if truth.any():
                per_frame.append(iou(masks[t].full() if t in masks else np.zeros_like(truth), truth))
                per_track.setdefault(label, []).append(per_frame[-1])
    lengths = [len(result.planes(label)) for label in tracks]
    # Halves weighted per frame as the overall mean: each track's frames counted.
    held = [v for k, f in per_track.items() if k not in tune for v in f]
    tuned = [v for k, f in per_track.items() if k in tune for v in f]
    return {"tracks": len(tracks), "frames": frames, "mean_per_frame_iou": float(np.mean(per_frame)),
            "mean_per_frame_iou_halves": {"held_out": float(np.mean(held)), "tune": float(np.mean(tuned)),
                                          "held_out_tracks": len(per_track) - len(tune & set(per_track)),
                                          "tune_tracks": len(tune & set(per_track))},
            "mean_track_length": float(np.mean(lengths)), "seconds": seconds,
            "reference": "per-frame labels linked by overlap (annotate.linking.link, IoU floor 0.3)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompt", default=None, help="default: PropagationSettings.for_axis (z or t)")
    parser.add_argument("--min-score", type=float, default=None)
    parser.add_argument("--min-contrast", type=float, default=None)
    parser.add_argument("--seed", choices=["box", "point"], default="box")
    parser.add_argument("--limit", type=int, default=None, help="objects per volume (spread over the ids)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--only", choices=["cells3d_nbsd", "stardist_synthetic3d", "hela"], action="append")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    predictor = Predictor(load_model(args.model, device="cpu"))
    overrides = {"prompt": args.prompt, "min_score": args.min_score, "min_contrast": args.min_contrast}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = PropagationSettings.for_axis("z", **overrides)
    record = {"model": args.model, "overrides": overrides, "volume_settings": settings.__dict__,
              "timelapse_settings": PropagationSettings.for_axis("t", **overrides).__dict__,
              "seed": args.seed, "torch_threads": 2}
    for name in args.only or ["cells3d_nbsd", "stardist_synthetic3d", "hela"]:
        if name == "hela":
            record[name] = timelapse(predictor, overrides, args.frames)
        else:
            record[name] = volume(name, predictor, settings, args.seed, args.limit)
        print(name, json.dumps(record[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
