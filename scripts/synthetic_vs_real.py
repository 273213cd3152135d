"""Side-by-side picture of generated images and real ones of the same kind.

    python scripts/synthetic_vs_real.py --out docs/images/synthetic_vs_real.png

Each row starts with real crops (the evaluation images under ../shared/eval, whose
sources are listed in its README, and scikit-image's bundled IHC image),
then generated images (``napari_sam.synthetic.generate``, 256 x 256, fixed seeds) of the
same modality, with the generated objects' outlines on the last panel of each row. Real
crops are shown at the pixel size they have (no resampling), so object sizes compare,
except StarDist's 61 x 57 slice (enlarged, said in its title).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
CROP = 256


def _display(image: np.ndarray) -> np.ndarray:
    """(H, W[, 3]) -> float RGB in [0, 1], grey planes stretched to percentiles 0.5-99.5."""
    if image.ndim == 3:
        return image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 4095.0)
    lo, hi = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(grey[..., None], 3, axis=2)


def _crop(image: np.ndarray, top: int, left: int) -> np.ndarray:
    return image[top : top + CROP, left : left + CROP]


def real_images() -> dict[str, list[tuple[str, np.ndarray]]]:
    """Real crops per row name (missing sources are skipped)."""
    import tifffile
    from skimage import data

    rows: dict[str, list[tuple[str, np.ndarray]]] = {k: [] for k in ROWS}
    bbbc = EVAL / "bbbc007" / "A9_p7d_image.tif"
    if bbbc.exists():
        rows["fluorescence nuclei"].append(("real: BBBC007", _crop(tifffile.imread(bbbc), 100, 100)))
    hela = EVAL / "ctc_hela" / "ctc_hela_t19_image.tif"
    if hela.exists():
        rows["fluorescence nuclei"].append(("real: CTC HeLa (16-bit)", _crop(tifffile.imread(hela), 200, 400)))
    scratch = EVAL / "ndev_scratch" / "scratch_oblique_t00-09_image.tif"
    if scratch.exists():
        rows["transmitted light, whole cells"].append(
            ("real: ndev oblique light", _crop(tifffile.imread(scratch)[0], 0, 0))
        )
    cells3d = EVAL / "cells3d_nbsd" / "nuclei3d_image.tif"
    if cells3d.exists():
        volume = tifffile.imread(cells3d)
        rows["widefield z-stack slices"].append(("real: cells3d z=30", volume[30]))
        rows["widefield z-stack slices"].append(("real: cells3d z=15 (edge)", volume[15]))
    stardist = EVAL / "stardist_synthetic3d" / "nuclei3d_image.tif"
    if stardist.exists():  # 61 x 57: shown enlarged, the only panel not at its own pixel size
        rows["widefield z-stack slices"].append(("real: StarDist z=15 (enlarged)",
                                                 tifffile.imread(stardist)[15]))
    rows["IHC histology"].append(("real: skimage IHC", _crop(data.immunohistochemistry(), 0, 0)))
    rows["IHC histology"].append(("real: skimage IHC", _crop(data.immunohistochemistry(), 256, 256)))
    return rows


# row name -> generated panels: (title, generate() keyword arguments)
ROWS = {
    "fluorescence nuclei": [
        ("nuclei, 8-bit", dict(modality="fluorescence", kinds=("nucleus",), seed=3)),
        ("nuclei, 16-bit, low SNR", dict(modality="fluorescence", kinds=("nucleus",), dtype=np.uint16,
                                         noise_scale=3.0, size_range=(20.0, 40.0), seed=4)),
    ],
    "widefield z-stack slices": [
        ("large nuclei, haze 0.6", dict(modality="fluorescence", kinds=("nucleus",), dtype=np.uint16,
                                                      size_range=(34.0, 56.0), out_of_focus=0.6, seed=41)),
        ("8-14 px, blur 3, haze 1", dict(modality="fluorescence", kinds=("nucleus",),
                                                       dtype=np.uint16, size_range=(8.0, 14.0), density=0.5,
                                                       out_of_focus=1.0, psf_sigma=3.0, seed=42)),
    ],
    "fluorescence whole cells": [
        ("cells 30-70 px", dict(modality="fluorescence", kinds=("cell",), seed=5)),
        ("cells 60-120 px", dict(modality="fluorescence", kinds=("cell",), size_range=(60.0, 120.0), seed=6)),
        ("small cells + nuclei", dict(modality="fluorescence", kinds=("cell", "nucleus"),
                                      size_range={"cell": (20.0, 40.0), "nucleus": (8.0, 14.0)}, seed=7)),
        ("cells 16-bit, low SNR", dict(modality="fluorescence", kinds=("cell",), dtype=np.uint16,
                                       noise_scale=4.0, seed=8)),
    ],
    "transmitted light, whole cells": [
        ("DIC / oblique cells", dict(modality="dic", kinds=("cell",), size_range=(30.0, 70.0), seed=1)),
        ("phase contrast cells", dict(modality="phase contrast", kinds=("cell",), size_range=(30.0, 60.0), seed=1)),
        ("brightfield cells", dict(modality="brightfield", kinds=("cell",), seed=2)),
    ],
    "phase contrast bacteria": [
        ("rods", dict(modality="phase contrast", kinds=("elongated cell",), size_range=(15.0, 50.0), seed=11)),
        ("rods, crowded", dict(modality="phase contrast", kinds=("elongated cell",), density=0.5,
                               size_range=(20.0, 60.0), seed=12)),
        ("small round cells", dict(modality="phase contrast", kinds=("cell",), size_range=(10.0, 20.0), seed=15)),
        ("inverted / 16-bit", dict(modality="phase contrast", kinds=("elongated cell", "nucleus"), dtype=np.uint16,
                                   seed=14)),
    ],
    "IHC histology": [
        ("IHC nuclei", dict(modality="ihc", kinds=("nucleus",), seed=21)),
        ("IHC cells", dict(modality="ihc", kinds=("cell",), seed=22)),
    ],
    "H&E histology": [
        ("H&E nuclei", dict(modality="histology", kinds=("nucleus",), seed=31)),
        ("H&E cells", dict(modality="histology", kinds=("cell",), seed=32)),
        ("H&E nuclei + rods", dict(modality="histology", kinds=("nucleus", "elongated cell"), seed=33)),
    ],
}


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from napari_sam.synthetic import generate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/synthetic_vs_real.png"))
    args = parser.parse_args(argv)

    real = real_images()
    rows = []
    for name, generated in ROWS.items():
        panels = [(title, _display(image)) for title, image in real[name]]
        for i, (title, kwargs) in enumerate(generated):
            sample = generate((CROP, CROP), **kwargs)
            shown = _display(sample.image)
            if i == len(generated) - 1:
                shown[find_boundaries(sample.labels, mode="inner")] = (1.0, 0.2, 0.2)
                title += " (labels)"
            panels.append((f"generated: {title}", shown))
        rows.append((name, panels))

    columns = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.75 * len(rows)), squeeze=False)
    for r, (name, panels) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(panels):
                title, shown = panels[c]
                ax.imshow(shown, interpolation="nearest")
                ax.set_title(title, fontsize=7.5)
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    # a 256-colour palette keeps the noisy panels' file small enough for the docs
    from PIL import Image

    Image.open(args.out).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
