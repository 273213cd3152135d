"""AIS from image to labels, side by side with micro-sam 1.8.14 in one process.

Both get the same perturbed random vit_b SAM and the same random vit_b-sized instance
decoder (micro-sam's ``get_decoder`` on our state dict), and segment the same 512 x 512
uint16 plane with their default settings, as a user calls them:

- micro-sam: ``InstanceSegmentationWithDecoder(SamPredictor(sam), decoder)``,
  ``initialize(image)`` (min-max to uint8, resize to 1024, encoder, decoder) then
  ``generate()`` (smoothing, seeds, seeded watershed);
- napari-sam: ``AutomaticSegmenter(model, decoder).segment(image)`` (the same steps; the
  decoder is micro-sam's, so micro-sam's input scaling and per-image batch norms, and no
  object-size pass, which only decoders trained here have).

Runs alternate (micro-sam, ours, ...) after one warm-up each; medians and the median of
the per-pair ratios are printed, with how far the labels agree.

    OMP_NUM_THREADS=2 python benchmarks/bench_automatic_e2e.py --repeats 3

Needs the test-only references (segment_anything, micro_sam, torch_em; scripts/test.sh).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "automatic")]

import reference  # noqa: E402  (stand-ins for torchvision; perturbed reference models)
from micro_sam_reference import import_micro_sam  # noqa: E402

from napari_sam.automatic import AutomaticSegmenter, InstanceDecoder, decoder_from_state  # noqa: E402
from napari_sam.model import build_sam  # noqa: E402


def plane(size: int, seed: int = 0) -> np.ndarray:
    """A uint16 plane of bright blobs on a noisy background (so the watershed has work)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = rng.normal(200, 30, (size, size))
    image += 2000 * (ndimage.gaussian_filter(rng.random((size, size)), 6) > 0.52)
    return np.clip(ndimage.gaussian_filter(image, 1), 0, 65535).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="plane side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    instance_segmentation = import_micro_sam()
    from segment_anything import SamPredictor

    sam = reference.build_reference("vit_b", seed=0)
    ours_model = build_sam("vit_b")
    ours_model.load_state_dict(sam.state_dict(), strict=True)
    ours_model.eval()
    torch.manual_seed(0)
    state = InstanceDecoder(embed_dim=256).state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.add_(0.05 * torch.randn_like(value))
    micro_decoder = instance_segmentation.get_decoder(sam.image_encoder, state, device="cpu")
    micro = instance_segmentation.InstanceSegmentationWithDecoder(SamPredictor(sam), micro_decoder)
    ours = AutomaticSegmenter(ours_model, decoder_from_state(state))
    image = plane(args.size)

    def run_micro():
        micro.initialize(image)
        return micro.generate()

    def run_ours():
        return ours.segment(image)

    results = {}
    times = {"micro-sam": [], "napari-sam": []}
    for name, run in (("micro-sam", run_micro), ("napari-sam", run_ours)):
        results[name] = run()  # warm-up
    for _ in range(args.repeats):
        for name, run in (("micro-sam", run_micro), ("napari-sam", run_ours)):
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    ref, got = np.asarray(results["micro-sam"]), np.asarray(results["napari-sam"])
    pairs = statistics.median(a / b for a, b in zip(times["micro-sam"], times["napari-sam"]))
    print(f"AIS {args.size}^2 uint16 plane, vit_b (random perturbed weights), {torch.get_num_threads()} threads, "
          f"{args.repeats} alternating runs:")
    for name, values in times.items():
        print(f"  {name}: median {statistics.median(values):.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  x {statistics.median(times['micro-sam']) / statistics.median(times['napari-sam']):.2f} "
          f"(median of pairs {pairs:.2f})")
    same = ref.shape == got.shape
    print(f"  labels: {int(got.max())} vs {int(ref.max())} objects; equal: {same and np.array_equal(ref, got)}; "
          f"{np.mean(ref != got) if same else 1.0:.4%} of pixels differ")


if __name__ == "__main__":
    main()
