"""AIS side by side with micro-sam 1.8.14, in one process: decoder maps + post-processing
on the same random vit_b-sized decoder (256-channel embedding, f = 64) and embedding.

The encoder is the same SAM image encoder in both (parity-tested elsewhere), so this times
what differs: the instance decoder and the seeded watershed, and checks equal outputs.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_automatic.py --size 512 --repeats 2

Needs the test-only references (micro_sam, torch_em; see scripts/test.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"),
                str(Path(__file__).resolve().parents[1] / "tests" / "automatic")]

import reference_shims  # noqa: E402

reference_shims.import_references()
from micro_sam_reference import import_micro_sam  # noqa: E402

from napari_sam.automatic import InstanceDecoder, WatershedOptions, decoder_from_state, instances_from_maps  # noqa: E402
from napari_sam.automatic.decoder import maps_to_plane  # noqa: E402
from napari_sam.model.family import InputFrame  # noqa: E402


def best_of(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side = model input side (pixels)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    instance_segmentation = import_micro_sam()
    from segment_anything.modeling import ImageEncoderViT
    from torch_em.util.segmentation import watershed_from_center_and_boundary_distances
    import bioimage_cpp

    torch.manual_seed(0)
    state = InstanceDecoder(embed_dim=256).state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.add_(0.05 * torch.randn_like(value))
    # micro-sam needs an encoder object only for its img_size; it is never run here.
    encoder = ImageEncoderViT(img_size=args.size, patch_size=16, embed_dim=32, depth=1, num_heads=1)
    reference = instance_segmentation.get_decoder(encoder, state, device="cpu")
    ours = decoder_from_state(state)
    grid = args.size // 16
    embedding = torch.randn(1, 256, grid, grid)
    frame = InputFrame((args.size, args.size), (args.size, args.size), args.size)

    with torch.no_grad():
        t_ref, ref_maps = best_of(lambda: reference(embedding, frame.input_size, frame.original_size)[0].numpy(),
                                  args.repeats)
        t_ours, our_maps = best_of(lambda: maps_to_plane(ours(embedding), frame)[0].numpy(), args.repeats)
    print(f"decoder maps {args.size}^2: micro-sam {t_ref:.2f} s, ours {t_ours:.2f} s, "
          f"max |diff| {np.abs(ref_maps - our_maps).max():.2e}")

    options = WatershedOptions()

    def compare(title: str, maps: np.ndarray) -> None:
        def micro_post():
            fg = bioimage_cpp.filters.gaussian_smoothing(maps[0], options.foreground_smoothing)
            return watershed_from_center_and_boundary_distances(maps[1].copy(), maps[2].copy(), fg)

        # CPU time of this process (the machine is shared): best of interleaved repeats.
        t_ref, t_ours = [], []
        for _ in range(max(args.repeats, 10)):
            start = time.process_time()
            ref_labels = micro_post()
            t_ref.append(time.process_time() - start)
            start = time.process_time()
            our_labels = instances_from_maps(*maps, options)
            t_ours.append(time.process_time() - start)
        print(f"post-processing, {title}: micro-sam {min(t_ref) * 1e3:.1f} ms, ours {min(t_ours) * 1e3:.1f} ms; "
              f"labels equal: {np.array_equal(ref_labels, our_labels)} ({int(our_labels.max())} vs "
              f"{int(ref_labels.max())} objects, {np.mean(ref_labels != our_labels):.4%} of pixels differ)")

    # A random decoder's maps are noise: one foreground piece over ~3/4 of the plane, where
    # float rounding of the Gaussians moves a few ties.
    compare("random decoder", ref_maps)
    # A decoder's maps on separated and touching nuclei: a perfect decoder's for 80 discs, plus noise.
    from stand_ins import discs, perfect_maps

    rng = np.random.default_rng(0)
    nuclei = discs((args.size, args.size), rng.integers(20, args.size - 20, (80, 2)).tolist(), args.size // 40)[1]
    noisy = perfect_maps(nuclei > 0) + rng.normal(0, 0.05, (3, args.size, args.size)).astype(np.float32)
    compare("nuclei-like maps", noisy.astype(np.float32))
    # Real maps: the shipped default decoder on CTC HeLa (when both are here).
    import os

    import tifffile

    from napari_sam.automatic import AutomaticSegmenter, decoder_maps

    hela = Path(os.environ.get("NAPARI_SAM_EVAL", Path(__file__).resolve().parents[2] / "shared" / "eval"))
    hela = hela / "ctc_hela" / "ctc_hela_t19_image.tif"
    segmenter = AutomaticSegmenter.load("default", device="cpu")
    if segmenter.mode == "ais" and hela.is_file():
        plane = tifffile.imread(hela)[: args.size, : args.size]
        compare("default decoder's maps, CTC HeLa crop",
                decoder_maps(segmenter.model, segmenter.decoder, plane).astype(np.float32))


if __name__ == "__main__":
    main()
