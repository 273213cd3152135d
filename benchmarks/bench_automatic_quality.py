"""Automatic instance segmentation (issue 18): quality per labelled source, memory, speed.

Quality: every method segments whole planes, scored against the instance labels by F1 at
IoU 0.5 and the DSB-style mean AP over IoU 0.5..0.95 (:mod:`napari_sam.automatic.scoring`;
counts pooled over a source's images, never over sources). Methods:

- ``classical``: Gaussian (sigma 2) + Otsu threshold + distance-transform watershed (peaks
  at least 6 px apart), computed here as the baseline;
- ``amg``: segment everything with the model's default AMG settings (for the bundled model
  the thresholds tuned by benchmarks/tune_amg.py on BBBC007's 17P1 plates, which are
  therefore left out of the bbbc007 source here);
- ``ais``: the model's instance decoder, when it has one (skipped otherwise).

    OMP_NUM_THREADS=1 python benchmarks/bench_automatic_quality.py quality --limit 3 --out docs/automatic_quality.json
    OMP_NUM_THREADS=1 python benchmarks/bench_automatic_quality.py memory [--mode amg --points 4]
    OMP_NUM_THREADS=1 python benchmarks/bench_automatic_quality.py speed

3D sources are scored on 2D slices (``--z-step``); CTC HeLa on its top-left 512 x 512 crop
(``--hela-crop 0`` for the whole 700 x 1100 frame).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import EVAL  # noqa: E402  (the evaluation images: ../shared/eval or $NAPARI_SAM_EVAL)
from bench_quality import SOURCES as PROMPTED_SOURCES  # noqa: E402

# The fluorescence-nuclei sources of the prompted benchmark, (folder, glob, description) each;
# the 17P1 plates (TUNING_PREFIX) tuned the AMG thresholds and are left out.
SOURCES = {name: PROMPTED_SOURCES[name] for name in ("bbbc007", "ctc_hela", "cells3d", "stardist3d")}
TUNING_PREFIX = "17P1_"


def planes(source: str, z_step: int, limit: int, hela_crop: int):
    """(name, image, labels) of a source, at most ``limit`` planes, tuning images left out."""
    folder, pattern, _ = SOURCES[source]
    found = 0
    for image_path in sorted((EVAL / folder).glob(pattern)):
        if image_path.name.startswith(TUNING_PREFIX):
            continue
        image = tifffile.imread(image_path)
        labels = tifffile.imread(image_path.with_name(image_path.name.replace("_image", "_labels")))
        if labels.ndim == 3:
            # the middle planes first: the outer ones hold few or no nuclei
            order = sorted(range(0, labels.shape[0], z_step), key=lambda z: abs(z - labels.shape[0] // 2))
            items = [(f"{image_path.name}[z={z}]", image[z], labels[z]) for z in order]
        else:
            if source == "ctc_hela" and hela_crop:
                image, labels = image[:hela_crop, :hela_crop], labels[:hela_crop, :hela_crop]
            items = [(image_path.name, image, labels)]
        for item in items:
            if found == limit:
                return
            if item[2].max() == 0:
                continue
            found += 1
            yield item


def classical(image: np.ndarray) -> np.ndarray:
    """Gaussian + Otsu + distance-transform watershed: ``(H, W)`` int32 labels."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), 2)
    foreground = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(foreground)
    pieces, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=6, labels=pieces, exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def segmenters(model_name: str, methods: list[str], decoder: str | None = None) -> dict:
    from napari_sam.automatic import AutomaticSegmenter

    found = {}
    if "classical" in methods:
        found["classical"] = classical
    if "amg" in methods:
        found["amg"] = AutomaticSegmenter.load(model_name, mode="amg", device="cpu").segment
    if "ais" in methods:
        ais = AutomaticSegmenter.load(model_name, decoder, device="cpu")
        if ais.mode == "ais":
            found["ais"] = ais.segment
        else:
            print(f"ais: model {model_name!r} has no instance decoder; skipped")
    return found


def quality(args) -> None:
    from napari_sam.automatic.scoring import counts

    methods = segmenters(args.model, args.methods.split(","), args.decoder)
    results = {}
    for source in args.sources.split(","):
        totals, seconds, names = {}, {m: 0.0 for m in methods}, []
        for name, image, truth in planes(source, args.z_step, args.limit, args.hela_crop):
            names.append(name)
            for method, segment in methods.items():
                start = time.perf_counter()
                labels = segment(image)
                seconds[method] += time.perf_counter() - start
                c = counts(np.asarray(labels), truth)
                totals[method] = c if method not in totals else totals[method] + c
        results[source] = {"images": names, "description": SOURCES[source][2], **{
            method: {"f1": round(c.f1(0.5), 3), "mean_ap": round(c.mean_ap(), 3), "predicted": c.predicted,
                     "true": c.true, "seconds_per_image": round(seconds[method] / max(len(names), 1), 2)}
            for method, c in totals.items()}}
        row = "  ".join(f"{m} F1 {r['f1']:.3f} mAP {r['mean_ap']:.3f} ({r['predicted']}/{r['true']}, "
                        f"{r['seconds_per_image']:.1f} s)" for m, r in results[source].items()
                        if isinstance(r, dict) and "f1" in r)
        print(f"{source} ({len(names)} images): {row}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "z_step": args.z_step, "limit": args.limit,
                                              "hela_crop": args.hela_crop, "sources": results}, indent=1) + "\n")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def memory_case(args) -> None:
    """One case in this (fresh) process: prints peak RSS before and after segmenting."""
    from napari_sam.automatic import AmgOptions, AutomaticSegmenter
    from napari_sam.automatic.segment import SegmentAllJob, segment_stack

    rng = np.random.default_rng(0)
    mode = None if args.mode == "auto" else args.mode
    amg = AmgOptions(points_per_side=args.points)
    if args.case == "plane":
        segmenter = AutomaticSegmenter.load(args.model, mode=mode, device="cpu", amg=amg)
        plane = (rng.random((2048, 2048)) * 50).astype(np.uint16)
        plane[ndimage.gaussian_filter(rng.random((2048, 2048)), 6) > 0.52] += 1000  # blobs to segment
        before = _peak_rss_mb()
        start = time.perf_counter()
        labels = segmenter.segment(plane)
        what = f"2048 x 2048 plane ({segmenter.mode})"
    else:
        stack = (rng.random((50, 256, 256)) * 50).astype(np.uint16)
        stack[ndimage.gaussian_filter(rng.random((50, 256, 256)), (0, 4, 4)) > 0.53] += 1000
        path = Path(args.tmp) / "stack50.tif"
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
        del stack
        job = SegmentAllJob(path=str(path), model=args.model, mode=mode, device="cpu", amg=amg)
        before = _peak_rss_mb()
        start = time.perf_counter()
        labels = segment_stack(job, progress=False)
        what = "50 x 256 x 256 stack, plane by plane"
    print(json.dumps({"case": what, "seconds": round(time.perf_counter() - start, 1), "objects": int(labels.max()),
                      "peak_rss_mb_before": round(before), "peak_rss_mb": round(_peak_rss_mb()),
                      "labels_mb": round(labels.nbytes / 2**20, 1)}))


def memory(args) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for case in ("plane", "stack"):
            command = [sys.executable, __file__, "memory-case", "--case", case, "--model", args.model,
                       "--mode", args.mode, "--tmp", tmp] + (["--points", str(args.points)] if args.points else [])
            print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


def speed(args) -> None:
    from napari_sam.automatic import AutomaticSegmenter

    image = tifffile.imread(EVAL / "ctc_hela" / "ctc_hela_t19_image.tif")[:512, :512]
    for mode in ("amg", "ais"):
        segmenter = AutomaticSegmenter.load(args.model, mode=None if mode == "ais" else mode, device="cpu")
        if segmenter.mode != mode:
            print(f"{mode}: no instance decoder for {args.model!r}; skipped")
            continue
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            labels = segmenter.segment(image)
            times.append(time.perf_counter() - start)
        print(f"{mode} 512 x 512 (CTC HeLa crop, {torch.get_num_threads()} threads): best of {args.repeats} "
              f"{min(times):.2f} s, {int(labels.max())} objects")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--sources", default=",".join(SOURCES))
    q.add_argument("--methods", default="classical,amg,ais")
    q.add_argument("--limit", type=int, default=3, help="images (or slices) per source")
    q.add_argument("--z-step", type=int, default=10)
    q.add_argument("--hela-crop", type=int, default=512)
    q.add_argument("--decoder", default=None, help="instance decoder file for ais (default: the model's own)")
    q.add_argument("--out")
    for name in ("memory", "memory-case"):
        m = sub.add_parser(name)
        m.add_argument("--mode", default="auto", choices=["auto", "ais", "amg"])
        m.add_argument("--points", type=int, default=None, help="AMG points per tile side (default: the model's)")
        if name == "memory-case":
            m.add_argument("--case", choices=["plane", "stack"], required=True)
            m.add_argument("--tmp", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--repeats", type=int, default=2)
    for p in (q, s, *sub.choices.values()):
        if not any(a.dest == "model" for a in p._actions):
            p.add_argument("--model", default="default")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"quality": quality, "memory": memory, "memory-case": memory_case, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()
