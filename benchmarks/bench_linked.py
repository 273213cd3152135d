"""Automatic 3D objects (issue 19): every plane segmented (AIS with the default model, or the
classical baseline of bench_automatic_quality), instances linked across planes by overlap
(``automatic.linked.link_planes``, IoU floor 0.3, objects on fewer than ``--min-planes``
planes dropped: default 3, as ``segment-all --link``), scored in 3D against the volumes' labels:
F1 at 3D IoU 0.5 and the DSB-style mean AP, plus the object counts.

    OMP_NUM_THREADS=1 python benchmarks/bench_linked.py --out docs/linked_quality.json

Time-lapse: the CTC HeLa frames segmented and linked into tracks (``--frames``), followed
from frame 0 and scored per frame as benchmarks/bench_propagate.py scores propagation.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_automatic_quality import EVAL, classical  # noqa: E402

from napari_sam.automatic import AutomaticSegmenter  # noqa: E402
from napari_sam.automatic.linked import link_planes  # noqa: E402
from napari_sam.automatic.scoring import counts  # noqa: E402

VOLUMES = {
    "cells3d": "cells3d_nbsd/nuclei3d",
    "stardist3d": "stardist_synthetic3d/nuclei3d",
}


def tracks(segmenter, frames: int, iou_floor: float) -> dict:
    """AIS on every frame of the CTC HeLa time-lapse, linked into tracks, followed as the
    propagation benchmark follows them: every reference track of frame 0 (the per-frame
    labels linked by overlap, ``annotate.linking.link``; the data has no track ground truth)
    is paired with the predicted track that overlaps it most on frame 0, and the IoU of the
    two is taken on every frame where the reference track exists (0 where the predicted
    track has ended or moved to another nucleus). Mean over all those frames."""
    from napari_sam.annotate.linking import link

    image = tifffile.imread(EVAL / "ctc_hela_timelapse" / "hela_t00-19_image.tif")[:frames]
    reference = link(tifffile.imread(EVAL / "ctc_hela_timelapse" / "hela_t00-19_labels.tif")[:frames]).labels
    start = time.perf_counter()
    per_frame = np.stack([np.asarray(segmenter.segment(plane)).astype(np.uint32) for plane in image])
    linked = link_planes(per_frame, "tracks", iou_floor=iou_floor)
    seconds = time.perf_counter() - start
    ious, lengths = [], []
    for label in (int(v) for v in np.unique(reference[0]) if v):
        truth0 = reference[0] == label
        ids, counts_ = np.unique(linked.labels[0][truth0], return_counts=True)
        found = [(c, i) for i, c in zip(ids, counts_) if i]
        track = max(found)[1] if found else None
        for t in range(frames):
            truth = reference[t] == label
            if truth.any():
                mask = linked.labels[t] == track if track is not None else np.zeros_like(truth)
                union = np.logical_or(mask, truth).sum()
                ious.append(float(np.logical_and(mask, truth).sum() / union))
        if track is not None:
            lengths.append(int(sum((linked.labels[t] == track).any() for t in range(frames))))
    result = {"tracks": int(len(np.unique(reference[0])) - 1), "frames": frames,
              "mean_per_frame_iou": round(float(np.mean(ious)), 3),
              "mean_track_length": round(float(np.mean(lengths)), 1) if lengths else 0.0,
              "divisions": len(linked.parents), "seconds": round(seconds, 1),
              "reference": "per-frame labels linked by overlap (annotate.linking.link, IoU floor 0.3)"}
    print(f"ctc_hela_timelapse ais tracks: mean per-frame IoU {result['mean_per_frame_iou']:.3f} over "
          f"{result['tracks']} reference tracks, {frames} frames; tracks last {result['mean_track_length']} frames "
          f"({seconds:.1f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--decoder", default=None)
    parser.add_argument("--object-size", default="auto", help="auto, none or a diameter in pixels")
    parser.add_argument("--iou-floor", type=float, default=0.3)
    parser.add_argument("--min-planes", type=int, default=None, help="default: link_planes's (3 for objects)")
    parser.add_argument("--frames", type=int, default=20, help="CTC HeLa frames for the tracks (0: none)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    size = {"auto": "auto", "none": None}.get(args.object_size.lower(), None)
    if args.object_size.lower() not in ("auto", "none"):
        size = float(args.object_size)
    segmenter = AutomaticSegmenter.load(args.model, args.decoder, device="cpu", object_size=size)
    methods = {"classical": classical, "ais": segmenter.segment}
    results = {}
    for name, stem in VOLUMES.items():
        image = tifffile.imread(EVAL / f"{stem}_image.tif")
        truth = tifffile.imread(EVAL / f"{stem}_labels.tif")
        results[name] = {"shape": list(image.shape), "true_objects": int(len(np.unique(truth)) - 1)}
        for method, segment in methods.items():
            start = time.perf_counter()
            per_plane = np.stack([np.asarray(segment(plane)).astype(np.uint32) for plane in image])
            linked = link_planes(per_plane, "objects", iou_floor=args.iou_floor, min_planes=args.min_planes).labels
            seconds = time.perf_counter() - start
            score = counts(linked, truth)
            results[name][method] = {"f1": round(score.f1(0.5), 3), "mean_ap": round(score.mean_ap(), 3),
                                     "objects": int(len(np.unique(linked)) - 1), "seconds": round(seconds, 1)}
            print(f"{name} {method}: 3D F1 {score.f1(0.5):.3f} mAP {score.mean_ap():.3f}, "
                  f"{results[name][method]['objects']} objects for {results[name]['true_objects']} "
                  f"({seconds:.1f} s)", flush=True)
    if args.frames:
        results["ctc_hela_timelapse"] = tracks(segmenter, args.frames, args.iou_floor)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "object_size": args.object_size,
                                        "iou_floor": args.iou_floor, "min_planes": args.min_planes or 3, "volumes": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
