"""Numerical parity with the reference implementations on random, perturbed weights.

The reference (segment-anything / mobilesam-mirror) is a test-only dependency. Both
models get the same perturbed state dict (no tensor at its init value), both predictors
see the same uint8 image, and every output is compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import Predictor
from napari_sam.model import build_sam

reference = pytest.importorskip("reference")

EMBEDDING_RTOL = 1e-4  # of the reference's largest magnitude
DECODER_ATOL = 1e-3
MASK_AGREEMENT = 0.999


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random RGB image: structure at several scales, like a real picture."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(shape[0] // 16 + 1, shape[1] // 16 + 1, 3))
    image = np.kron(small, np.ones((16, 16, 1)))[: shape[0], : shape[1]]
    image += rng.normal(0, 20, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class Pair:
    """The reference and our predictor on the same weights and the same image."""

    def __init__(self, model_type: str, image: np.ndarray, seed: int = 0) -> None:
        from segment_anything import SamPredictor  # the reference predictor; mobile_sam's is the same code

        ref_model = reference.build_reference(model_type, seed=seed)
        ours = build_sam(model_type)
        ours.load_state_dict(ref_model.state_dict(), strict=True)
        self.image = image
        self.reference = SamPredictor(ref_model)
        self.ours = Predictor(ours)
        with torch.inference_mode():
            self.reference.set_image(image)
        self.embedding = self.ours.set_image(image)

    def compare(self, points_rc=None, labels=None, box_rc=None, mask_input=None, multimask=False):
        """Run both; assert parity; return our candidates."""
        ref_masks, ref_scores, ref_logits = self.reference.predict(
            point_coords=None if points_rc is None else np.asarray(points_rc, float)[:, ::-1].copy(),
            point_labels=None if labels is None else np.asarray(labels),
            box=None if box_rc is None else np.asarray(box_rc, float)[[1, 0, 3, 2]],
            mask_input=None if mask_input is None else mask_input[None],
            multimask_output=multimask,
        )
        ours = self.ours.predict(
            points=points_rc, point_labels=labels, box=box_rc, mask_input=mask_input, multimask=multimask
        )
        order = np.argsort(-ref_scores, kind="stable")
        assert len(ours) == len(order) == (3 if multimask else 1)
        np.testing.assert_allclose(ours.scores, ref_scores[order], atol=DECODER_ATOL, rtol=0)
        np.testing.assert_allclose(ours.logits, ref_logits[order], atol=DECODER_ATOL, rtol=0)
        agreement = (ours.masks == ref_masks[order]).mean()
        assert agreement >= MASK_AGREEMENT, f"masks agree on {agreement:.5f} of pixels"
        assert np.all(np.diff(ours.scores) <= 0), "candidates not sorted best first"
        return ours


@pytest.fixture(scope="module", params=["vit_t", "vit_b"])
def pair(request) -> Pair:
    # Non-square on purpose: exercises the resize, the padding and the crop back.
    return Pair(request.param, _image((480, 640), seed=1), seed=3)


def test_embeddings_match_reference(pair: Pair):
    ref = pair.reference.features
    ours = pair.embedding.features
    assert ours.shape == ref.shape == (1, 256, 64, 64)
    scale = float(ref.abs().max())
    assert float((ours - ref).abs().max()) <= EMBEDDING_RTOL * scale
    assert pair.embedding.input_size == tuple(pair.reference.input_size)
    assert pair.embedding.original_size == (480, 640)


def test_one_point_multimask(pair: Pair):
    pair.compare(points_rc=[(200, 300)], labels=[1], multimask=True)


def test_one_point_single_mask(pair: Pair):
    pair.compare(points_rc=[(200, 300)], labels=[1], multimask=False)


def test_positive_and_negative_points(pair: Pair):
    pair.compare(points_rc=[(200, 300), (100, 500), (400, 50)], labels=[1, 0, 1])


def test_box(pair: Pair):
    pair.compare(box_rc=(120, 200, 330, 450))


def test_box_multimask(pair: Pair):
    pair.compare(box_rc=(120, 200, 330, 450), multimask=True)


def test_box_and_point(pair: Pair):
    pair.compare(points_rc=[(220, 320)], labels=[0], box_rc=(120, 200, 330, 450))


def test_mask_input_refinement(pair: Pair):
    first = pair.compare(points_rc=[(200, 300)], labels=[1], multimask=True)
    pair.compare(points_rc=[(200, 300), (260, 380)], labels=[1, 1], mask_input=first.logits[0])


def test_mask_input_alone(pair: Pair):
    first = pair.compare(box_rc=(120, 200, 330, 450))
    pair.compare(mask_input=first.logits[0])


def test_square_image_vit_t():
    pair = Pair("vit_t", _image((300, 300), seed=2), seed=5)
    ref = pair.reference.features
    assert float((pair.embedding.features - ref).abs().max()) <= EMBEDDING_RTOL * float(ref.abs().max())
    pair.compare(points_rc=[(150, 150)], labels=[1], multimask=True)
