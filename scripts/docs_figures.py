"""Render the documentation's figures from the benchmark records and the bundled model.

    python scripts/docs_figures.py                 # writes docs/images/*.png
    python scripts/docs_figures.py --out /tmp/fig  # elsewhere (the tests do this)

Figures (each from files in the repository, nothing measured here except the loop):

- ``quality.png``: mean IoU per image source, point vs box prompt (docs/quality_default.json)
- ``speed.png``: encoder and click-to-masks time vs the reference (docs/benchmarks_predictor.json)
- ``finetune_curves.png``: validation mIoU over
  training time for every docs/finetune_bbbc007*.json run
- ``loop.png``: the annotate loop on the sample image with the default model: the click,
  the three ranked candidates with their predicted IoU, the accepted label
- ``modalities.png``: the default model's masks on one image of each labelled source in
  ../shared/eval (one point per object, as benchmarks/bench_quality.py prompts); skipped
  when that folder is absent
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EVAL = Path(os.environ.get("NAPARI_SAM_EVAL", ROOT.parent / "shared" / "eval"))
# One image per modality: (label, file stem in EVAL, plane index for stacks, crop (r0, c0, size)).
MODALITIES = [
    ("BBBC007 fluorescence nuclei", "bbbc007/A9_p5d", None, (0, 0, 450)),
    ("HeLa nuclei (CTC)", "ctc_hela/ctc_hela_t19", None, (250, 400, 300)),
    ("cells3d nuclei, z = 30", "cells3d_nbsd/nuclei3d", 30, (0, 0, 256)),
    ("synthetic 3D nuclei, z = 15", "stardist_synthetic3d/nuclei3d", 15, (0, 0, 61)),
    ("transmitted light, whole cells", "ndev_scratch/scratch_oblique_t00-09", 0, (0, 0, 210)),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def quality(out: Path) -> Path:
    """Bar chart: point and box mIoU of the default model per image source."""
    plt = _plt()
    record = json.loads((DOCS / "quality_default.json").read_text())
    rows = record["results"]
    names = [r["source"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 2), 3.4))
    for offset, key, label in ((-0.2, "point_miou", "one point"), (0.2, "box_miou", "box")):
        bars = ax.bar(x + offset, [r[key] for r in rows], width=0.4, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"{n}\n({r['objects']} obj.)" for n, r in zip(names, rows)], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean IoU")
    ax.set_title(f"Default model, {record.get('mode', '')} prediction, per image source", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out / "quality.png")


def speed(out: Path) -> Path:
    """Grouped bars: seconds per image embedding and per click, ours vs the reference."""
    plt = _plt()
    record = json.loads((DOCS / "benchmarks_predictor.json").read_text())
    rows = record["results"]
    labels = [f"{r['model']}\n{'int8' if 'int8' in r['mode'] else r['mode']}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, part, unit, scale in ((axes[0], "encoder", "s", 1.0), (axes[1], "click_to_masks", "ms", 1000.0)):
        for offset, key, name in ((-0.2, "reference_s", "reference"), (0.2, "ours_s", "napari-samscope")):
            bars = ax.bar(x + offset, [r[part][key] * scale for r in rows], width=0.4, label=name)
            ax.bar_label(bars, fmt="%.2f" if scale == 1 else "%.0f", fontsize=7)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(f"{part.replace('_', ' ')} ({unit})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Speed on {record.get('machine', 'a CPU')} ({rows[0]['image']})", fontsize=10)
    return _save(fig, out / "speed.png")


def finetune_curves(out: Path) -> Path:
    """Validation point / box mIoU against training minutes for every recorded run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for path in sorted(DOCS.glob("finetune_bbbc007*.json")):
        record = json.loads(path.read_text())
        epochs = record.get("epochs") or []
        if not epochs:
            continue
        minutes = [0.0] + [e["seconds"] / 60 for e in epochs]
        name = path.stem.removeprefix("finetune_bbbc007").lstrip("_") or "baseline"
        for ax, key in zip(axes, ("point_miou", "box_miou")):
            ax.plot(minutes, [record["base"][key]] + [e[key] for e in epochs], marker=".", label=name)
    for ax, title in zip(axes, ("one point", "box")):
        ax.set_xlabel("training time (min, CPU)")
        ax.set_title(f"validation mIoU, {title} prompt", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean IoU (BBBC007 20P1)")
    axes[1].legend(fontsize=7, loc="lower right")
    return _save(fig, out / "finetune_curves.png")


def loop(out: Path, point: tuple[float, float] = (145.0, 161.0)) -> Path:
    """The annotate loop in panels: click, three ranked candidates, accepted label."""
    plt = _plt()
    import napari_sam
    from napari_sam.synthetic import sample_nuclei

    image = sample_nuclei().image
    predictor = napari_sam.Predictor(napari_sam.load_model("default", device="cpu"))
    predictor.set_image(image)
    candidates = predictor.predict(points=[point], multimask=True)
    fig, axes = plt.subplots(1, 2 + len(candidates.scores), figsize=(3 * (2 + len(candidates.scores)), 3.3))
    row, col = point
    crop = (slice(max(0, int(row) - 64), int(row) + 64), slice(max(0, int(col) - 64), int(col) + 64))
    extent = (crop[1].start - 0.5, crop[1].stop - 0.5, crop[0].stop - 0.5, crop[0].start - 0.5)
    for ax in axes:
        ax.imshow(image[crop], cmap="gray", extent=extent)
        ax.set_axis_off()
    axes[0].plot(col, row, "o", color="lime", markeredgecolor="black", markersize=8)
    axes[0].set_title("1. click (row 145, col 161)", fontsize=9)
    for i, (mask, score) in enumerate(zip(candidates.masks, candidates.scores)):
        ax = axes[1 + i]
        ax.imshow(np.ma.masked_where(~mask[crop], mask[crop]), cmap="spring", alpha=0.5, extent=extent)
        ax.plot(col, row, "o", color="lime", markeredgecolor="black", markersize=6)
        ax.set_title(f"2. candidate {i + 1}: IoU {score:.2f}" + (" (best)" if i == 0 else ""), fontsize=9)
    labels = candidates.best.astype(np.uint16)
    axes[-1].imshow(np.ma.masked_where(labels[crop] == 0, labels[crop]), cmap="tab10", alpha=0.6,
                    extent=extent, vmin=0, vmax=9)
    axes[-1].set_title("3. accept: label 1 written", fontsize=9)
    fig.suptitle("The annotate loop, default model, sample nuclei", fontsize=10)
    return _save(fig, out / "loop.png")


def modalities(out: Path) -> Path | None:
    """Image with true outlines above, the default model's masks (one point each) below."""
    if not EVAL.is_dir():
        print(f"skipping modalities.png: no evaluation images at {EVAL}", file=sys.stderr)
        return None
    plt = _plt()
    import tifffile
    from skimage.segmentation import find_boundaries

    import napari_sam
    from napari_sam.inference.tiling import TiledPredictor

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_quality import iou, objects  # the benchmark's prompts and score, not a copy

    predictor = TiledPredictor(napari_sam.Predictor(napari_sam.load_model("default", device="cpu")))
    fig, axes = plt.subplots(2, len(MODALITIES), figsize=(3.2 * len(MODALITIES), 6.6))
    rng = np.random.default_rng(0)
    for column, (title, stem, index, (r0, c0, size)) in enumerate(MODALITIES):
        image = tifffile.imread(EVAL / f"{stem}_image.tif")
        labels = tifffile.imread(EVAL / f"{stem}_labels.tif")
        if index is not None:
            image, labels = image[index], labels[index]
        crop = (slice(r0, r0 + size), slice(c0, c0 + size))
        predictor.set_plane(image)
        predicted = np.zeros(labels.shape, np.int32)
        scores = []
        for number, (mask, point, _box) in enumerate(objects(labels, 20), start=1):
            if not (crop[0].start <= point[0] < crop[0].stop and crop[1].start <= point[1] < crop[1].stop):
                continue
            best = predictor.predict(points=[point]).best
            scores.append(iou(best, mask))
            predicted[best & (predicted == 0)] = number
        shown = image[crop].astype(np.float32)
        low, high = np.percentile(shown, (0.5, 99.5))
        shown = np.clip((shown - low) / max(high - low, 1e-6), 0, 1)
        colours = rng.random((int(predicted.max()) + 1, 3))
        for row, (ax, part) in enumerate(zip(axes[:, column], (labels[crop], predicted[crop]))):
            ax.imshow(shown, cmap="gray")
            if row == 0:
                outline = find_boundaries(part, mode="inner")
                ax.imshow(np.ma.masked_where(~outline, outline), cmap="autumn", alpha=0.9)
                ax.set_title(f"{title}\nlabels ({len(scores)} objects)", fontsize=8)
            else:
                overlay = np.zeros((*part.shape, 4))
                overlay[..., :3] = colours[part]
                overlay[..., 3] = 0.45 * (part > 0)
                ax.imshow(overlay)
                ax.set_title(f"default model, one point each\nmean IoU {np.mean(scores):.2f}", fontsize=8)
            ax.set_axis_off()
    fig.suptitle("The default model per modality (evaluation images, crops)", fontsize=10)
    return _save(fig, out / "modalities.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


FIGURES = {"quality": quality, "speed": speed, "finetune_curves": finetune_curves, "loop": loop,
           "modalities": modalities}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS / "images", help="folder for the PNG files")
    parser.add_argument("--only", choices=sorted(FIGURES), action="append", help="render only these")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or FIGURES:
        path = FIGURES[name](args.out)
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
