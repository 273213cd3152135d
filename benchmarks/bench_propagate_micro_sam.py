"""Propagation speed beside micro-sam's ``segment_mask_in_volume``, in one process.

Both get the same perturbed random vit_b weights (``tests/reference.py``) and the same
embeddings: ours are computed once for every plane of a cells3d sub-volume (kept in
``--cache``) and handed to micro-sam as its ``ImageEmbeddings`` (``features``
``(Z, 1, 256, 64, 64)``), so only the propagation itself is timed.

- ``step``: the unit both loops repeat, from the same previous mask (the true mask of
  the neighbouring plane, towards the seed): micro-sam's ``segment_from_mask`` +
  ``compute_iou`` (the body of ``segment_mask_in_volume``'s loop) vs our
  ``Propagator._segment`` + ``_check`` (the body of ours: prompts, decoder, candidate
  choice, stop rules including the contrast rule). Alternating, medians.
- ``volume``: the whole calls, ``segment_mask_in_volume`` (``iou_threshold=0``) vs
  ``Propagator.run`` (every stop rule off) from the seed's true mask on the middle plane,
  ms per plane visited. With random weights the masks mean nothing and ours, which keeps
  only mask pieces touching the previous mask, can end early: hence per plane visited.

    OMP_NUM_THREADS=2 python benchmarks/bench_propagate_micro_sam.py --planes 6 --objects 4 --cache /tmp/vitb-cache

Modes compared (ours / micro-sam's ``projection``): ``points+mask`` / ``points_and_mask``,
``box`` / ``box``, ``box+mask`` / ``mask`` (micro-sam's "mask" is the box and the mask).
Needs the test-only references (segment-anything, micro_sam 1.8.14, see scripts/test.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "automatic")]

import reference  # noqa: E402  (stand-ins for torchvision; perturbed reference models)
from micro_sam_reference import import_micro_sam  # noqa: E402

from napari_sam.annotate.stack_objects import PlaneMask  # noqa: E402
from napari_sam.inference.embeddings import EmbeddingStore  # noqa: E402
from napari_sam.annotate.propagate import PlaneSource, PropagationSettings, Propagator, Seed  # noqa: E402
from napari_sam.inference.predictor import Predictor  # noqa: E402
from napari_sam.model import build_sam  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval" / "cells3d_nbsd"
MODES = {"points+mask": "points_and_mask", "box": "box", "box+mask": "mask"}
NO_STOP = dict(min_score=0.0, max_growth=float("inf"), max_shrink=0.0, min_overlap=0.0, min_area=1, min_contrast=0.0,
               prefetch=0)


def micro_sam_volume_module():
    import_micro_sam()
    import importlib

    import reference_shims

    reference_shims.install()
    return importlib.import_module("micro_sam.multi_dimensional_segmentation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=12, help="planes of the sub-volume around z = 35")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache folder (vit_b on CPU is slow)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume_module = micro_sam_volume_module()
    from micro_sam.prompt_based_segmentation import segment_from_mask
    from micro_sam.util import compute_iou
    from segment_anything import SamPredictor

    reference_model = reference.build_reference("vit_b", seed=0).eval()
    ours_model = build_sam("vit_b")
    ours_model.load_state_dict(reference_model.state_dict(), strict=True)
    ours_model.eval()

    start = 35 - args.planes // 2
    image = tifffile.imread(EVAL / "nuclei3d_image.tif")[start: start + args.planes]
    labels = tifffile.imread(EVAL / "nuclei3d_labels.tif")[start: start + args.planes]
    middle = args.planes // 2
    values = [int(v) for v in np.unique(labels[middle]) if v][: args.objects]

    predictor = Predictor(ours_model)
    source = PlaneSource(image)
    store = EmbeddingStore(ours_model, predictor.normalization, cache_dir=args.cache)
    warm = Propagator(predictor, store, settings=PropagationSettings(**NO_STOP))
    t0 = time.perf_counter()
    features = []
    for z in range(len(image)):  # every plane's embedding, once, shared by both sides
        tiled = warm._tiled_for(source, z)
        features.append(tiled.embedding(next(iter(tiled.grid))))
    embed_s = time.perf_counter() - t0
    embeddings = {"features": torch.stack([e.features for e in features]),  # (Z, 1, 256, 64, 64)
                  "input_size": tuple(features[0].input_size), "original_size": tuple(features[0].original_size)}
    reference_predictor = SamPredictor(reference_model)

    record = {"model": "vit_b, perturbed random weights (tests/reference.py, seed 0)", "threads": args.threads,
              "volume": f"cells3d planes {start}-{start + args.planes - 1}, {image.shape[1]}x{image.shape[2]}",
              "objects": len(values), "embeddings_s": embed_s, "modes": {}}
    for mode in args.modes:
        settings = PropagationSettings(prompt=mode, **NO_STOP)
        use_box, use_mask, use_points, single = volume_module._validate_projection(MODES[mode])
        stepper = Propagator(predictor, warm.store, settings=PropagationSettings(prompt=mode))
        step_theirs, step_ours = [], []
        for _ in range(args.repeats):
            for value in values:
                for z in [z for z in range(len(image)) if z != middle]:
                    previous = labels[z + (1 if z < middle else -1)] == value
                    if not previous.any():
                        continue
                    previous_mask, tiled = PlaneMask.from_mask(previous), warm._tiled_for(source, z)

                    def micro_sam_step():
                        with torch.inference_mode():
                            mask, _, _ = segment_from_mask(
                                reference_predictor, previous, image_embeddings=embeddings, i=z, use_mask=use_mask,
                                use_box=use_box, use_points=use_points, return_all=True, use_single_point=single)
                        return compute_iou(previous, mask)

                    def our_step():
                        mask, score = stepper._segment(tiled, previous_mask)
                        return stepper._check(mask, previous_mask, score, (source.plane(z), False), 1.0)

                    t = time.perf_counter()
                    micro_sam_step()
                    step_theirs.append(1000 * (time.perf_counter() - t))
                    t = time.perf_counter()
                    our_step()
                    step_ours.append(1000 * (time.perf_counter() - t))
        theirs_ms, ours_ms, visited = [], [], []
        for _ in range(args.repeats):
            for value in values:
                seed_mask = labels[middle] == value

                def run_micro_sam():
                    segmentation = np.zeros(labels.shape, np.uint8)
                    segmentation[middle] = seed_mask
                    with torch.inference_mode():
                        out, (low, high) = volume_module.segment_mask_in_volume(
                            segmentation, reference_predictor, embeddings, np.array([middle]), stop_lower=False,
                            stop_upper=False, iou_threshold=0.0, projection=MODES[mode])
                    return high - low  # planes segmented beyond the seed

                def run_ours():
                    result = Propagator(predictor, warm.store, settings=settings).run(
                        source, [Seed(1, middle, mask=seed_mask)])
                    return len(result.planes(1)) - 1

                t = time.perf_counter()
                planes_theirs = run_micro_sam()
                theirs_ms.append(1000 * (time.perf_counter() - t) / max(planes_theirs, 1))
                t = time.perf_counter()
                planes_ours = run_ours()
                if planes_ours:  # with random weights ours may end at once: no plane to divide by
                    ours_ms.append(1000 * (time.perf_counter() - t) / planes_ours)
                visited.append((planes_theirs, planes_ours))
        theirs = statistics.median(theirs_ms)
        ours = statistics.median(ours_ms) if ours_ms else float("nan")
        step_t, step_o = statistics.median(step_theirs), statistics.median(step_ours)
        record["modes"][mode] = {
            "micro_sam_projection": MODES[mode],
            "step": {"micro_sam_ms": step_t, "ours_ms": step_o, "speedup": step_t / step_o, "steps": len(step_ours)},
            "volume": {"micro_sam_ms_per_plane": theirs, "ours_ms_per_plane": ours, "speedup": theirs / ours,
                       "planes_visited_micro_sam_ours": visited}}
        print(f"{mode:12s} step: micro-sam {step_t:7.1f} ms, ours {step_o:7.1f} ms: {step_t / step_o:.2f}x | "
              f"volume: micro-sam {theirs:7.1f} ms/plane, ours {ours:7.1f} ms/plane: {theirs / ours:.2f}x "
              f"(planes visited {visited})", flush=True)
    print(json.dumps(record))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
