"""Prompted and text-alone quality on generated images, per modality (never pooled).

    python benchmarks/bench_generated.py --model default --out docs/quality_generated.json

For each set below, ``--images`` generated 256 x 256 images (seeds ``[9000 + set, i]``,
which no training stage draws: those use integer seeds or ``[0..4, i]``). Per object (at
most ``--max-objects`` per image, the first ids): IoU of the top-ranked mask from one
interior point (the maximum of its distance transform) and from its box; per image and
kind: IoU of the text-alone mask with the union of that kind's objects. Everything goes
through the documented API, ``Predictor(model)`` (native-resolution tiles).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import iou, objects  # noqa: E402

from napari_sam import Predictor, load_model  # noqa: E402
from napari_sam.synthetic import generate  # noqa: E402

# name -> generate() keyword arguments (shape and seed added per image)
SETS = {
    "fluorescence nuclei": dict(modality="fluorescence", kinds=("nucleus",)),
    "fluorescence nuclei 16-bit low SNR": dict(modality="fluorescence", kinds=("nucleus",), dtype=np.uint16,
                                               noise_scale=3.0),
    "fluorescence cells 30-100 px": dict(modality="fluorescence", kinds=("cell",), size_range=(30.0, 100.0)),
    "phase contrast bacteria": dict(modality="phase contrast", kinds=("elongated cell",), size_range=(12.0, 50.0)),
    "phase contrast cells": dict(modality="phase contrast", kinds=("cell",), size_range=(20.0, 80.0)),
    "dic cells": dict(modality="dic", kinds=("cell",), size_range=(25.0, 90.0)),
    "brightfield cells": dict(modality="brightfield", kinds=("cell",)),
    "H&E nuclei": dict(modality="histology", kinds=("nucleus",), size_range=(10.0, 35.0)),
    "IHC nuclei": dict(modality="ihc", kinds=("nucleus",), size_range=(10.0, 35.0)),
    "IHC cells": dict(modality="ihc", kinds=("cell",), size_range=(25.0, 70.0)),
}
# the words a user would type for each kind (the first is the training name)
TEXTS = {"nucleus": ("nucleus",), "cell": ("cell",), "elongated cell": ("elongated cell", "bacterium")}


def evaluate(predictor: Predictor, index: int, name: str, images: int, max_objects: int) -> dict:
    point_ious, box_ious, text_ious = [], [], {}
    start = time.perf_counter()
    for i in range(images):
        sample = generate((256, 256), seed=[9000 + index, i], **SETS[name])
        predictor.set_image(sample.image)
        for n, (mask, point, box) in enumerate(objects(sample.labels, 8)):
            if n >= max_objects:
                break
            point_ious.append(iou(predictor.predict(points=[point]).best, mask))
            box_ious.append(iou(predictor.predict(box=box).best, mask))
        if predictor.model.supports_text:
            for kind in set(sample.classes.values()):
                union = np.isin(sample.labels, [k for k, v in sample.classes.items() if v == kind])
                for text in TEXTS[kind]:
                    text_ious.setdefault(text, []).append(iou(predictor.predict(text=text).best, union))
    return {
        "set": name,
        "generate": {k: (str(np.dtype(v)) if k == "dtype" else v) for k, v in SETS[name].items()},
        "images": images,
        "objects": len(point_ious),
        "point_miou": float(np.mean(point_ious)),
        "box_miou": float(np.mean(box_ious)),
        "text_alone_iou": {text: float(np.mean(v)) for text, v in text_ious.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--images", type=int, default=4, help="generated 256 x 256 images per set")
    parser.add_argument("--max-objects", type=int, default=30, help="objects scored per image")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    predictor = Predictor(load_model(args.model, device="cpu"))
    report = {"model": args.model, "command": " ".join(["python"] + sys.argv), "results": []}
    for name in args.sets:
        row = evaluate(predictor, list(SETS).index(name), name, args.images, args.max_objects)
        report["results"].append(row)
        texts = "  ".join(f"text {t!r} {v:.3f}" for t, v in row["text_alone_iou"].items())
        print(f"{name:36s} objects {row['objects']:4d}  point {row['point_miou']:.3f}  box {row['box_miou']:.3f}  "
              f"{texts}  ({row['seconds']} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
