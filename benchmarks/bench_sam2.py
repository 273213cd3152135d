"""SAM 2.1 speed beside the official code (`sam2` 1.1.0), one process, same weights.

Both models are `sam2.1_hiera_<size>` at 1024 pixels with the same random perturbed
weights (no checkpoint download needed: speed does not depend on the values). Measured:

- encoder per image: the reference's ``SAM2ImagePredictor.set_image`` vs our
  ``Sam2.prepare`` + ``Sam2.encode`` (both include the resize to 1024 and normalisation);
- prompt -> masks: the reference's ``predict`` (one positive point, three masks, logits at
  the image size) vs our ``decode`` + bilinear upsampling to the image size;
- propagation per frame: the reference's ``SAM2VideoPredictor`` (``init_state``, one point
  on frame 0, ``propagate_in_video``) vs our ``VideoTracker`` (``add_points``,
  ``propagate``, logits upsampled to the frame), over ``--frames`` frames of a moving
  disc; the whole run divided by the number of frames (each frame is encoded once in both).

Outputs are compared first (max |difference| of the image embedding and of the logits),
so the timings are of equal results. Medians over ``--repeats`` / ``--prompts`` runs, the
two implementations alternating so that load on a shared machine hits both alike.

    OMP_NUM_THREADS=2 python benchmarks/bench_sam2.py --size tiny --repeats 3 --prompts 20 --frames 4

Needs the test-only reference install (scripts/test.sh) and tests/ on the path (for the
torchvision stand-ins).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def build_pair(size: str):
    """(reference predictor, reference model, our model) with the same perturbed weights."""
    import reference
    import reference_shims

    reference_shims.import_sam2_reference()
    from sam2.build_sam import build_sam2 as reference_build
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from napari_sam.model.sam2 import load_sam2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref_model = reference_build(f"configs/sam2.1/sam2.1_hiera_{SIZES[size]}.yaml", None, device="cpu")
    reference.perturb_(ref_model, seed=0)
    ours = load_sam2(ref_model.state_dict())
    return SAM2ImagePredictor(ref_model), ref_model, ours


def moving_disc(frames: int, height: int, width: int) -> list[np.ndarray]:
    """``frames`` uint8 RGB frames: a bright disc moving right over noise."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:height, :width]
    planes = []
    for t in range(frames):
        disc = (rows - height / 2) ** 2 + (cols - width / 3 - 12 * t) ** 2 < (height / 6) ** 2
        plane = np.clip(rng.normal(60, 10, (height, width)) + 150 * disc, 0, 255).astype(np.uint8)
        planes.append(np.repeat(plane[..., None], 3, axis=2))
    return planes


def propagation(size: str, ref_model, ours, frames: int, height: int, width: int) -> dict:
    """Propagation per frame, reference video predictor vs VideoTracker (same weights)."""
    import sam2.sam2_video_predictor as video_module
    from sam2.build_sam import build_sam2_video_predictor

    from napari_sam.model.sam2 import VideoTracker

    with torch.random.fork_rng(devices=[]):
        video = build_sam2_video_predictor(f"configs/sam2.1/sam2.1_hiera_{SIZES[size]}.yaml", None, device="cpu")
    video.load_state_dict(ref_model.state_dict())
    with torch.no_grad():  # random weights call every object absent: make it present in both
        video.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 50.0
        ours.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 50.0
    planes = moving_disc(frames, height, width)
    point = np.array([[width / 3, height / 2]])  # (x, y) on frame 0's disc
    scale = np.array([ours.image_size / width, ours.image_size / height])

    def read_frames(**kwargs):  # the reference's frame loader, on the same model inputs as ours
        return torch.cat([ours.prepare(plane)[0] for plane in planes]), height, width

    video_module.load_video_frames = read_frames

    def run_reference():
        state = video.init_state(video_path="unused")
        video.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=point, labels=np.array([1]))
        return {t: m[0] for t, _, m in video.propagate_in_video(state)}

    def run_ours():
        tracker = VideoTracker(ours, lambda t: ours.prepare(planes[t])[0], num_frames=frames)
        tracker.add_points(0, obj_id=1, points_xy=point * scale, labels=[1])
        return {t: F.interpolate(r[1], (height, width), mode="bilinear", align_corners=False)[0]
                for t, r in tracker.propagate()}

    with torch.inference_mode():
        times = {"reference": [], "ours": []}
        start = time.perf_counter()
        expected = run_reference()
        times["reference"].append(time.perf_counter() - start)
        start = time.perf_counter()
        got = run_ours()
        times["ours"].append(time.perf_counter() - start)
    diff = max(float((got[t] - expected[t]).abs().max()) for t in range(frames))
    per_frame = {key: [value / frames for value in values] for key, values in times.items()}
    return {"frames": frames, "max_abs_diff_logits": diff,
            "present_frames": sum(float(expected[t].max()) > 0 for t in range(frames)), "times": per_frame}


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="encoder runs per implementation")
    parser.add_argument("--prompts", type=int, default=20, help="single-point prompts per implementation")
    parser.add_argument("--frames", type=int, default=4, help="frames of the propagation run (0: skip it)")
    parser.add_argument("--image", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    ref, ref_model, ours = build_pair(args.size)
    rng = np.random.default_rng(0)
    height, width = args.image
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)

    features = {}

    def ours_encode():
        inputs, _ = ours.prepare(image)
        features.update(ours.encode(inputs))

    with torch.inference_mode():
        ref.set_image(image)
        ours_encode()
        embed_diff = float((features["image_embed"] - ref._features["image_embed"]).abs().max())
        embed_scale = float(ref._features["image_embed"].abs().max())

        points = rng.uniform([0, 0], [width, height], size=(args.prompts, 1, 2))
        scale = torch.tensor([ours.image_size / width, ours.image_size / height])
        labels = torch.ones(1, 1, dtype=torch.int64)

        def ours_predict(point):
            low, iou = ours.decode(features, torch.as_tensor(point, dtype=torch.float32)[None] * scale, labels)
            return F.interpolate(low, (height, width), mode="bilinear", align_corners=False), iou

        def ref_predict(point):
            return ref.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True,
                               return_logits=True)

        logit_diff = max(float(np.abs(ours_predict(p)[0][0].numpy() - ref_predict(p)[0]).max()) for p in points[:3])

        encoder = {"reference": [], "ours": []}
        for _ in range(args.repeats):
            encoder["reference"].append(timed(lambda: ref.set_image(image)))
            encoder["ours"].append(timed(ours_encode))
        decode = {"reference": [], "ours": []}
        for point in points:
            decode["reference"].append(timed(lambda: ref_predict(point)))
            decode["ours"].append(timed(lambda: ours_predict(point)))

    def summary(times: dict[str, list[float]]) -> dict[str, float]:
        ref_s, ours_s = statistics.median(times["reference"]), statistics.median(times["ours"])
        return {"reference_s": round(ref_s, 4), "ours_s": round(ours_s, 4), "speedup": round(ref_s / ours_s, 2)}

    results = {
        "model": f"sam2.1_hiera_{args.size}",
        "image": [height, width],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "max_abs_diff_image_embed": embed_diff,
        "image_embed_scale": embed_scale,
        "max_abs_diff_logits": logit_diff,
        "encoder_per_image": summary(encoder),
        "prompt_to_masks": summary(decode),
    }
    if args.frames:
        video = propagation(args.size, ref_model, ours, args.frames, height, width)
        results["propagation_per_frame"] = {**summary(video.pop("times")), **video}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
