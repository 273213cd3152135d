"""napari-sam vs the reference SAM code, side by side in one process, on this machine.

Both implementations get the same perturbed random weights (no checkpoint needed) and the
same uint8 image; runs alternate (reference, ours, reference, ours, ...) so drifts in
machine load hit both alike. Reports medians and the ratio reference / ours. Every
(model, mode) pair is measured in a fresh process.

    python benchmarks/bench_predictor.py --models vit_t vit_b --repeats 5 --clicks 21 --fast \\
        --out docs/benchmarks_predictor.json

- encoder: ``SamPredictor.set_image`` vs ``Predictor.set_image`` (resize, normalise, encode);
- click to masks: one positive point, three candidates at image resolution, with the
  embedding cached: ``SamPredictor.predict`` vs ``Predictor.predict``;
- ``--fast``: the same for ``fast_mode(model)`` (``napari_sam.model.fast``), plus the agreement of its top mask
  with exact mode's (IoU) on real nuclei images in ``--eval-dir`` (BBBC007, CTC HeLa, a cells3d plane) (a point at each
  labelled object's centre). With random weights the masks mean nothing as
  segmentations; the agreement only measures how far fast mode moves the output.

Needs the test-only reference packages (`pip install --no-deps segment-anything
mobilesam-mirror`) and tests/ on the path for their torchvision/timm stand-ins.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import reference  # noqa: E402  (installs the stand-ins, builds perturbed reference models)

import napari_sam  # noqa: E402
from napari_sam.model import build_sam  # noqa: E402

# (file stem under --eval-dir, plane of a 3D stack or None): fluorescence nuclei from
# three sources (see ../shared/eval/README.md).
EVAL_IMAGES = (
    ("bbbc007/A9_p5d", None), ("bbbc007/A9_p7d", None), ("bbbc007/17P1_POS0006_D_1UL", None),
    ("bbbc007/20P1_POS0005_D_1UL", None), ("ctc_hela/ctc_hela_t19", None), ("cells3d_nbsd/nuclei3d", 30),
)


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(size // 16, size // 16, 3))
    image = np.kron(small, np.ones((16, 16, 1))) + rng.normal(0, 20, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _summary(ref_times: list[float], ours_times: list[float]) -> dict:
    r, o = statistics.median(ref_times), statistics.median(ours_times)
    # Runs alternate, so each (reference, ours) pair saw about the same machine load.
    pairs = statistics.median(a / b for a, b in zip(ref_times, ours_times))
    return {"reference_s": r, "ours_s": o, "speedup": r / o, "speedup_median_of_pairs": pairs,
            "runs": len(ref_times), "reference_all_s": ref_times, "ours_all_s": ours_times}


def bench_model(model_type: str, size: int, repeats: int, clicks: int, fast: bool, device: torch.device) -> dict:
    from segment_anything import SamPredictor

    ref_model = reference.build_reference(model_type, seed=0).to(device)
    ours_model = build_sam(model_type)
    ours_model.load_state_dict(ref_model.state_dict(), strict=True)
    ours_model = ours_model.to(device)
    if fast:
        from napari_sam.model.fast import fast_mode

        ours_model = fast_mode(ours_model)
    ref = SamPredictor(ref_model)
    ours = napari_sam.Predictor(ours_model, mode="whole")  # the reference resizes the whole image, any size
    image = _image(size)

    def ref_embed():
        with torch.inference_mode():
            ref.set_image(image)

    def ours_embed():
        ours.set_image(image)

    # Warm-up (allocator, thread pools, lazy init) outside the timed runs.
    ref_embed()
    ours_embed()
    ref_times, ours_times = [], []
    for _ in range(repeats):
        ref_times.append(_timed(ref_embed, device))
        ours_times.append(_timed(ours_embed, device))

    rng = np.random.default_rng(1)
    points = rng.uniform(0.1 * size, 0.9 * size, size=(clicks, 2))  # (row, col)

    def ref_click(i):
        with torch.inference_mode():
            ref.predict(point_coords=points[i : i + 1, ::-1].copy(), point_labels=np.array([1]), multimask_output=True)

    def ours_click(i):
        ours.predict(points=points[i : i + 1], point_labels=[1], multimask=True)

    ref_click(0)
    ours_click(0)
    ref_clicks, ours_clicks = [], []
    for i in range(clicks):
        ref_clicks.append(_timed(lambda: ref_click(i), device))
        ours_clicks.append(_timed(lambda: ours_click(i), device))

    return {
        "model": model_type,
        "image": f"{size}x{size} uint8 RGB",
        "device": str(device),
        "mode": ours_model.config.get("fast_mode", "exact") if fast else "exact",
        "encoder": _summary(ref_times, ours_times),
        "click_to_masks": _summary(ref_clicks, ours_clicks),
    }


def fast_mode_agreement(model_type: str, eval_dir: Path, device: torch.device) -> dict:
    """Top-mask IoU of fast vs exact mode, one point at each labelled object's centre."""
    import tifffile
    from scipy import ndimage

    from napari_sam.model.fast import fast_mode

    exact_model = build_sam(model_type)
    exact_model.load_state_dict(reference.build_reference(model_type, seed=0).state_dict(), strict=True)
    exact_model = exact_model.to(device)
    exact, fast = napari_sam.Predictor(exact_model), napari_sam.Predictor(fast_mode(exact_model))
    ious = []
    for name, plane in EVAL_IMAGES:
        image = tifffile.imread(eval_dir / f"{name}_image.tif")
        labels = tifffile.imread(eval_dir / f"{name}_labels.tif")
        if plane is not None:
            image, labels = image[plane], labels[plane]
        exact.set_image(image)
        fast.set_image(image)
        for label in range(1, int(labels.max()) + 1):
            inside = labels == label
            if inside.sum() < 10:
                continue
            distance = ndimage.distance_transform_edt(inside)
            centre = np.unravel_index(np.argmax(distance), distance.shape)
            a, b = exact.predict(points=[centre]).best, fast.predict(points=[centre]).best
            union = (a | b).sum()
            ious.append(1.0 if union == 0 else float((a & b).sum() / union))
    ious = np.array(ious)
    return {
        "model": model_type, "images": [n if z is None else f"{n}[z={z}]" for n, z in EVAL_IMAGES], "objects": len(ious),
        "mean_iou": float(ious.mean()), "median_iou": float(np.median(ious)),
        "p05_iou": float(np.percentile(ious, 5)), "min_iou": float(ious.min()),
        "fraction_iou_at_least_0.98": float((ious >= 0.98).mean()),
    }


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=21)
    parser.add_argument("--fast", action="store_true", help="also time napari-sam's fast mode and its agreement")
    parser.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval",
                        help="folder with bbbc007/*_image.tif and *_labels.tif for the fast-mode agreement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--variant", choices=["exact", "fast", "agreement"],
                        help="run one measurement of one model in this process (what each child runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.variant:
        run_variant(args, device)
        return

    results = {
        "machine": _machine(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "command": " ".join(["python"] + sys.argv),
        "results": [],
        "fast_mode_agreement": [],
    }
    # Each measurement runs in a fresh process: the allocator's state after one model's
    # runs (heap size, cached pages) otherwise shifts the next model's figures by up to 30 %.
    variants = ["exact", "fast"] if args.fast else ["exact"]
    for model_type in args.models:
        for variant in variants + (["agreement"] if args.fast and (args.eval_dir / "bbbc007").is_dir() else []):
            row = _child(model_type, variant, args)
            if variant == "agreement":
                results["fast_mode_agreement"].append(row)
                print(
                    f"{model_type} fast vs exact top-mask IoU over {row['objects']} objects: mean "
                    f"{row['mean_iou']:.4f}, 5th percentile {row['p05_iou']:.4f}, min {row['min_iou']:.4f}",
                    flush=True,
                )
                continue
            results["results"].append(row)
            enc, click = row["encoder"], row["click_to_masks"]
            print(
                f"{model_type} {row['mode']}: encoder ref {enc['reference_s']:.2f} s, ours {enc['ours_s']:.2f} s "
                f"(x{enc['speedup']:.2f}, pairs x{enc['speedup_median_of_pairs']:.2f}); click->masks ref "
                f"{click['reference_s'] * 1000:.1f} ms, ours {click['ours_s'] * 1000:.1f} ms (x{click['speedup']:.2f}, "
                f"pairs x{click['speedup_median_of_pairs']:.2f})",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _child(model_type: str, variant: str, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    import tempfile

    options = ["--size", str(args.size), "--repeats", str(args.repeats), "--clicks", str(args.clicks),
               "--eval-dir", str(args.eval_dir), "--device", args.device]
    if args.threads:
        options += ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        subprocess.run([sys.executable, __file__, *options, "--models", model_type, "--variant", variant,
                        "--out", str(out)], check=True)
        return json.loads(out.read_text())


def run_variant(args: argparse.Namespace, device: torch.device) -> None:
    (model_type,) = args.models
    if args.variant == "agreement":
        row = fast_mode_agreement(model_type, args.eval_dir, device)
    else:
        row = bench_model(model_type, args.size, args.repeats, args.clicks, args.variant == "fast", device)
    args.out.write_text(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
