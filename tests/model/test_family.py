"""The model-family boundary: Sam implements it, and inference uses nothing else of a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.inference.embeddings import EmbeddingStore
from napari_sam.inference.encoding import encode_batch, encode_plane
from napari_sam.inference.predictor import Predictor
from napari_sam.inference.tiling import TiledPredictor
from napari_sam.model.family import InputFrame, ModelFamily, model_id
from tiny import build_tiny

# Every member of the protocol; a family object needs nothing more.
PROTOCOL_MEMBERS = {
    "image_size", "embedding_size", "low_res_size", "supports_text", "device", "mask_threshold", "config",
    "metadata", "prepare", "encode", "decode", "state_dict", "eval",
}


class ProtocolOnly:
    """A model family that exposes exactly the protocol's members of a wrapped model.

    Reaching for anything else (``prompt_encoder``, ``preprocess``, ``image_encoder``...)
    raises, so running inference through it proves that code depends on the protocol only.
    """

    def __init__(self, model) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "used", set())

    def __getattr__(self, name: str):
        if name not in PROTOCOL_MEMBERS:
            raise AttributeError(f"{name!r} is not a member of the ModelFamily protocol")
        self.used.add(name)
        if name == "eval":  # nn.Module.eval returns the module: here, this wrapper
            return lambda: (self._model.eval(), self)[1]
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        raise AttributeError(f"inference must not set {name!r} on a model")


@pytest.fixture(scope="module")
def sam():
    return build_tiny()


def plane(shape=(90, 120), seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def test_embedding_is_one_class_wherever_it_is_imported_from():
    import napari_sam
    from napari_sam.inference import encoding, predictor

    assert napari_sam.Embedding is predictor.Embedding is encoding.Embedding


def test_sam_is_a_model_family(sam):
    assert isinstance(sam, ModelFamily)
    assert not isinstance(object(), ModelFamily)
    assert model_id(sam) == sam.config["name"]


def test_prepare_resizes_the_longest_side_and_records_the_frame(sam):
    inputs, frame = sam.prepare(np.zeros((40, 50, 3), np.uint8))
    assert inputs.shape == (1, 3, sam.image_size, sam.image_size) and inputs.dtype == torch.float32
    assert frame == InputFrame((40, 50), (102, 128), 128)
    padding = inputs[0, :, 102:, :]
    assert torch.count_nonzero(padding) == 0  # zero-padded after normalisation, as SAM


def test_encode_plane_is_what_the_predictor_uses(sam):
    embedding = encode_plane(sam, plane())
    assert embedding.features.shape == (1, sam.prompt_encoder.embed_dim, *sam.embedding_size)
    assert (embedding.original_size, embedding.input_size, embedding.image_size) == ((90, 120), (96, 128), 128)
    assert embedding.frame == InputFrame((90, 120), (96, 128), 128)
    torch.testing.assert_close(Predictor(sam).set_image(plane()).features, embedding.features, rtol=0, atol=0)


def test_encode_plane_reports_progress_and_moves_features(sam):
    calls = []
    embedding = encode_plane(sam, plane(), device="cpu", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 1), (1, 1)] and embedding.features.device.type == "cpu"


def test_encode_batch_matches_one_by_one_and_can_keep_gradients(sam):
    from napari_sam.imaging import to_rgb_uint8

    images = [to_rgb_uint8(plane(seed=s)) for s in (0, 1)]
    features, frames = encode_batch(sam, images)
    assert features.shape[0] == 2 and not features.requires_grad
    assert frames == [InputFrame((90, 120), (96, 128), 128)] * 2
    for i, image in enumerate(images):
        torch.testing.assert_close(features[i : i + 1], encode_plane(sam, image).features, atol=1e-5, rtol=1e-5)
    with_grad, _ = encode_batch(sam, images[:1], grad=True)
    assert with_grad.requires_grad
    with pytest.raises(ValueError, match="at least one"):
        encode_batch(sam, [])


def test_predictor_and_tiled_predictor_use_only_the_protocol(sam):
    family = ProtocolOnly(sam)
    assert isinstance(family, ModelFamily)
    image = plane((300, 260))
    ours, reference = Predictor(family), Predictor(sam)
    ours.set_image(image[:100, :100])
    reference.set_image(image[:100, :100])
    for prompt in ({"points": [(40, 50)]}, {"box": (10, 10, 60, 80)}):
        np.testing.assert_array_equal(ours.predict(**prompt).masks, reference.predict(**prompt).masks)
    first = ours.predict(points=[(40, 50)])
    refine = {"points": [(40, 50), (70, 20)], "point_labels": [1, 0], "mask_input": first.mask_prompt(0)}
    np.testing.assert_array_equal(ours.predict(**refine).masks, reference.predict(**refine).masks)
    np.testing.assert_array_equal(ours.predict_boxes([(5, 5, 50, 50)])[0].masks,
                                  reference.predict_boxes([(5, 5, 50, 50)])[0].masks)

    tiled = TiledPredictor(ours, EmbeddingStore(family, ours.normalization), tile_size=128, halo=16)
    tiled.set_plane(image)
    expected = TiledPredictor(reference, tile_size=128, halo=16)
    expected.set_plane(image)
    for prompt in ({"points": [(150, 130)]}, {"box": (20, 20, 280, 240)}):
        np.testing.assert_array_equal(tiled.predict(**prompt).masks, expected.predict(**prompt).masks)
    refine = {"points": [(150, 130)], "mask_input": tiled.predict(points=[(150, 130)]).mask_prompt(0)}
    np.testing.assert_array_equal(tiled.predict(**refine).masks, expected.predict(**refine).masks)
    assert tiled.store.encoder_calls == expected.store.encoder_calls > 1
    assert {"prepare", "encode", "decode", "state_dict"} <= family.used <= PROTOCOL_MEMBERS
