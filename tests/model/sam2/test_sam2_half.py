"""SAM 2.1 in half precision: ``fast_mode(model, dtype=...)`` runs the Hiera encoder and its
neck in float16 / bfloat16 and gives float32 multi-scale features back, so the prompt path,
the tiles and the memory propagation run unchanged. Agreement with float32 on random
perturbed weights: the features within a few percent, the masks within a few pixels.

bfloat16 runs here on CPU (where the CPU has bfloat16 kernels); float16 and bfloat16 on
CUDA run where a CUDA device is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
from napari_sam.model.fast import _bfloat16_supported, fast_mode
from napari_sam.model.sam2 import build_sam2
from napari_sam.model.sam2.video import VideoTracker

from test_sam2_build import SMALL

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_cpu_bf16 = pytest.mark.skipif(not _bfloat16_supported(), reason="this CPU has no bfloat16 kernels")

CASES = [pytest.param("cpu", torch.bfloat16, marks=needs_cpu_bf16, id="cpu-bfloat16"),
         pytest.param("cuda", torch.bfloat16, marks=needs_cuda, id="cuda-bfloat16"),
         pytest.param("cuda", torch.float16, marks=needs_cuda, id="cuda-float16")]


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam2(SMALL)
    reference.perturb_(sam, seed=0)
    with torch.no_grad():  # random weights call every object absent: make it present
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 50.0
    return sam.eval()


def _plane(shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:96, :128]
    disc = (rows - 48) ** 2 + (cols - 40 - shift) ** 2 < 20**2
    plane = np.clip(rng.normal(60, 10, (96, 128)) + 150 * disc, 0, 255).astype(np.uint8)
    return np.repeat(plane[..., None], 3, axis=2)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("device, dtype", CASES)
def test_the_encoder_runs_in_half_precision_and_hands_back_float32(model, device, dtype):
    exact = model.to(device)
    half = fast_mode(exact, dtype=dtype)
    assert half.config["fast_mode"] == f"{str(dtype)[6:]} image encoder"
    assert next(half.image_encoder.parameters()).dtype == dtype
    assert next(exact.image_encoder.parameters()).dtype == torch.float32  # the original is untouched
    with torch.inference_mode():
        x, _ = exact.prepare(_plane())
        want, got = exact.encode(x), half.encode(x)
    for name, value in want.items():
        assert got[name].dtype == torch.float32 and got[name].device.type == device
        error = float((got[name] - value).abs().max() / value.abs().max())
        assert error < 0.08, (name, error)  # 8-bit (bfloat16) / 11-bit (float16) mantissas


@pytest.mark.parametrize("device, dtype", CASES)
def test_prompts_give_the_same_masks_in_half_precision(model, device, dtype):
    exact = model.to(device)
    half = fast_mode(exact, dtype=dtype)
    rng = np.random.default_rng(1)
    points = torch.as_tensor(rng.uniform(10, 118, (12, 1, 2)), dtype=torch.float32, device=device)
    labels = torch.ones(12, 1, device=device)
    with torch.inference_mode():
        x, _ = exact.prepare(_plane())
        want_masks, want_iou = exact.decode(exact.encode(x), points, labels)
        got_masks, got_iou = half.decode(half.encode(x), points, labels)
    ious = [_iou((w > 0).cpu().numpy(), (g > 0).cpu().numpy()) for w, g in zip(want_masks, got_masks)]
    assert np.mean(ious) > 0.95 and min(ious) > 0.8, ious
    assert float((got_iou - want_iou).abs().max()) < 0.05


@pytest.mark.parametrize("device, dtype", CASES)
def test_memory_propagation_follows_the_object_in_half_precision(model, device, dtype):
    exact = model.to(device)
    half = fast_mode(exact, dtype=dtype)
    planes = [_plane(6 * t) for t in range(5)]
    results = []
    for sam in (exact, half):
        with torch.inference_mode():
            inputs = [sam.prepare(plane)[0] for plane in planes]
        tracker = VideoTracker(sam, inputs)
        scale = sam.image_size / 128
        tracker.add_points(2, obj_id=1, points_xy=np.array([[52.0 * scale, 48.0 * scale]]), labels=[1])
        masks = {t: (r[1] > 0).cpu().numpy() for t, r in tracker.propagate()}
        masks.update({t: (r[1] > 0).cpu().numpy() for t, r in tracker.propagate(reverse=True)})
        results.append(masks)
    assert sorted(results[0]) == sorted(results[1]) == list(range(5))
    ious = [_iou(results[0][t], results[1][t]) for t in range(5)]
    assert min(ious) > 0.9, ious


def test_other_precisions_are_refused(model):
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        fast_mode(model, dtype=torch.float64)
