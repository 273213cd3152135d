"""TinyViT (MobileSAM's encoder) matches mobile_sam's on perturbed weights."""

import pytest
import torch

from napari_sam.model.tiny_vit import build_tiny_vit_encoder
from reference import build_reference


@pytest.fixture(scope="module")
def reference_encoders():
    """Perturbed reference encoders by seed, built once: building costs more than a test."""
    return {seed: build_reference("vit_t", seed=seed).image_encoder for seed in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_embeddings_match_mobile_sam_encoder(reference_encoders, seed):
    reference = reference_encoders[seed]
    encoder = build_tiny_vit_encoder(img_size=1024).eval()
    encoder.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(seed))

    expected = reference(images)
    actual = encoder(images)

    assert actual.shape == (1, 256, 64, 64)
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= 1e-4 * scale


def test_state_dict_has_exactly_the_reference_keys(reference_encoders):
    encoder = build_tiny_vit_encoder()
    reference_keys = set(reference_encoders[0].state_dict())
    assert set(encoder.state_dict()) == reference_keys
    # The classification head is unused but must load from MobileSAM checkpoints.
    assert {"norm_head.weight", "head.weight"} <= reference_keys


def test_strict_loading_fails_on_a_missing_key(reference_encoders):
    state = dict(reference_encoders[0].state_dict())
    del state["layers.2.blocks.3.attn.attention_biases"]
    with pytest.raises(RuntimeError, match="layers.2.blocks.3.attn.attention_biases"):
        build_tiny_vit_encoder().load_state_dict(state, strict=True)


@torch.no_grad()
def test_other_input_sizes_give_a_sixteenth_size_grid():
    encoder = build_tiny_vit_encoder(img_size=256).eval()
    embeddings = encoder(torch.randn(2, 3, 256, 256))
    assert embeddings.shape == (2, 256, 16, 16)
