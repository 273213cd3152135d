"""Which candidate of a single click to show first: ranking rules compared on the same masks.

    python benchmarks/bench_ranking.py --model default --out docs/ranking_default.json

Per object, one interior point (the maximum of its distance transform) gives the model's
three candidates once; each rule then picks one, and the table is the mean IoU of the
picks: ``iou`` (predicted IoU, SAM's rule), ``iou+stability`` (predicted IoU + stability
score, ``inference.predictor.ranking_keys``), ``stable-within-D`` (the stablest candidate
among those within D of the best predicted IoU) and ``oracle`` (the best candidate: what a
perfect ranking would reach). Real sources as in bench_quality.py (BBBC007: every 4th
plane), generated sets as in bench_generated.py (3 images each, at most 20 objects an image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generated import SETS  # noqa: E402
from bench_quality import SOURCES, iou, objects, planes  # noqa: E402

from napari_sam import Predictor, load_model  # noqa: E402
from napari_sam.inference.predictor import stability_scores  # noqa: E402
from napari_sam.synthetic import generate  # noqa: E402

WITHIN = (0.03, 0.1)


def picks(candidates, mask: np.ndarray) -> dict[str, float]:
    ious = np.array([iou(m, mask) for m in candidates.masks])
    scores = candidates.scores
    stable = stability_scores(torch.as_tensor(candidates.logits)).numpy()
    chosen = {"iou": int(np.argmax(scores)), "iou+stability": int(np.argmax(scores + stable))}
    for within in WITHIN:
        chosen[f"stable-within-{within:g}"] = int(np.argmax(np.where(scores >= scores.max() - within, stable, -1)))
    return {**{rule: float(ious[i]) for rule, i in chosen.items()}, "oracle": float(ious.max())}


def real(predictor: Predictor, source: str) -> list[dict]:
    rows = []
    for index, (_, image, labels) in enumerate(planes(source, 6)):
        if source == "bbbc007" and index % 4:
            continue
        predictor.set_image(image)
        rows += [picks(predictor.predict(points=[point]), mask) for mask, point, _ in objects(labels, 20)]
    return rows


def generated(predictor: Predictor, index: int, name: str) -> list[dict]:
    rows = []
    for i in range(3):
        sample = generate((256, 256), seed=[9000 + index, i], **SETS[name])
        predictor.set_image(sample.image)
        for n, (mask, point, _) in enumerate(objects(sample.labels, 8)):
            if n >= 20:
                break
            rows.append(picks(predictor.predict(points=[point]), mask))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    predictor = Predictor(load_model(args.model, device="cpu"))
    results = {}
    for source in SOURCES:
        results[source] = real(predictor, source)
    for index, name in enumerate(SETS):
        results[f"generated {name}"] = generated(predictor, index, name)
    table = {}
    for name, rows in results.items():
        table[name] = {"objects": len(rows), **{rule: float(np.mean([r[rule] for r in rows])) for rule in rows[0]}}
        print(f"{name:45s} " + "  ".join(f"{rule} {value:.3f}" for rule, value in table[name].items()
                                             if rule != "objects"), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "command": "python benchmarks/bench_ranking.py "
                                        + " ".join(argv or sys.argv[1:]), "mean_iou": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
