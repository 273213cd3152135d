"""SAM 2.1 through the model-family boundary: Predictor, TiledPredictor and the embedding
cache work with it unchanged, with SAM 2's stretched input geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.inference.embeddings import EmbeddingStore
from napari_sam.inference.encoding import Embedding
from napari_sam.inference.predictor import Predictor
from napari_sam.inference.tiling import TiledPredictor
from napari_sam.model.sam2 import build_sam2

SMALL = {
    "embed_dim": 8, "num_heads": 1, "stages": [1, 2, 4, 1], "global_att_blocks": [4, 6],
    "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7], "image_size": 128, "d_model": 32,
    "decoder_mlp_dim": 64, "mem_dim": 16, "memory_mlp_dim": 64, "name": "sam2-test-small",
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam2(SMALL)


def _plane(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)


def test_predictor_stretches_prompts_like_the_model_input(model):
    """A point at (row, col) of a 60 x 150 plane is decoded at (col * S / 150, row * S / 60)
    and the logits cover the whole plane (no padding to crop)."""
    plane = _plane((60, 150))
    predictor = Predictor(model, mode="whole")  # one stretched embedding (150 > the 128-px input: tiles otherwise)
    embedding = predictor.set_image(plane)
    assert embedding.input_size == (128, 128)
    candidates = predictor.predict(points=[(30, 100)], multimask=True)

    with torch.inference_mode():
        inputs, _ = model.prepare(plane)
        features = model.encode(inputs)
        xy = torch.tensor([[[100 * 128 / 150, 30 * 128 / 60]]])
        low, iou = model.decode(features, xy, torch.ones(1, 1, dtype=torch.int64), multimask=True)
        full = F.interpolate(low, (60, 150), mode="bilinear", align_corners=False)[0] > 0
    order = torch.argsort(iou[0], descending=True).numpy()
    np.testing.assert_allclose(candidates.scores, iou[0].numpy()[order], atol=1e-5)
    np.testing.assert_allclose(candidates.logits, low[0].numpy()[order], atol=1e-4)
    # The project upsamples as SAM 1 (to S x S, then to the plane); the SAM 2 reference
    # goes to the plane in one step: the masks differ only along edges.
    assert (candidates.masks == full.numpy()[order]).mean() > 0.98


def test_box_and_refinement_through_the_predictor(model):
    predictor = Predictor(model)
    predictor.set_image(_plane((90, 70), seed=1))
    first = predictor.predict(box=(10, 5, 70, 60))
    assert first.masks.shape == (1, 90, 70)
    again = predictor.predict(points=[(40, 30)], box=(10, 5, 70, 60), mask_input=first.mask_prompt(0))
    assert again.masks.shape == (1, 90, 70)
    boxes = predictor.predict_boxes([(10, 5, 70, 60), (0, 0, 30, 30)])
    assert [c.masks.shape for c in boxes] == [(1, 90, 70)] * 2


def test_embedding_with_multi_scale_features_round_trips_through_file_and_cache(model, tmp_path):
    plane = _plane((64, 64), seed=2)
    predictor = Predictor(model)
    embedding = predictor.compute_embedding(plane)
    assert set(embedding.features) == {"image_embed", "high_res_s0", "high_res_s1"}
    embedding.save(tmp_path / "e.pt")
    loaded = Embedding.load(tmp_path / "e.pt")
    for key, value in embedding.features.items():
        assert torch.equal(loaded.features[key], value)

    store = EmbeddingStore(model, cache_dir=tmp_path / "cache")
    first = store.get(plane)
    fresh = EmbeddingStore(model, cache_dir=tmp_path / "cache")
    second = fresh.get(plane)
    assert (store.encoder_calls, fresh.encoder_calls, fresh.disk_hits) == (1, 0, 1)
    for key in first.features:
        assert torch.equal(first.features[key], second.features[key])


def test_tiled_predictor_on_a_plane_larger_than_a_tile(model):
    plane = _plane((300, 260), seed=3)
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(plane)
    candidates = tiled.predict(points=[(150, 130)])
    assert candidates.masks.shape[1:] == (300, 260)
    merged = tiled.predict(box=(10, 10, 290, 250))
    assert merged.masks.shape == (1, 300, 260)
