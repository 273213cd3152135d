"""Architecture detection from a state dict's keys and tensor shapes.

vit_b is built once per module; vit_l / vit_h only on the meta device (shapes, no memory).
"""

from __future__ import annotations

import pytest
import torch

from napari_sam.checkpoints import detect_architecture, load_model, save_model
from napari_sam.model import build_sam
from tiny import TINY, TINY_SAVED, assert_same_state, randomized


@pytest.fixture(scope="module")
def vit_b_state() -> dict[str, torch.Tensor]:
    return dict(build_sam("vit_b").state_dict())


def meta_state(model_type) -> dict[str, torch.Tensor]:
    """State dict of tensors without storage: shapes only, any size."""
    with torch.device("meta"):
        return dict(build_sam(model_type).state_dict())


def test_detects_vit_b(vit_b_state):
    assert detect_architecture(vit_b_state).model_type == "vit_b"


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_detects_vit_l_and_vit_h_from_shapes(model_type):
    assert detect_architecture(meta_state(model_type)).model_type == model_type


def test_detects_vit_t(vit_t_state):
    architecture = detect_architecture(vit_t_state)
    assert architecture.model_type == "vit_t"
    assert architecture.config["encoder"] == "tiny_vit"


def test_detects_compact_custom_vit_config(compact_state):
    architecture = detect_architecture(compact_state)
    assert architecture.model_type == "custom"
    assert architecture.config == TINY_SAVED


def test_detects_all_global_vit():
    config = dict(TINY, global_attn_indexes=[0, 1])
    architecture = detect_architecture(meta_state(config))
    # The window size is not visible in the weights, and does not matter: all blocks are global.
    assert architecture.config["global_attn_indexes"] == [0, 1]
    assert build_sam(architecture.config).state_dict().keys() == meta_state(config).keys()


def test_convolutional_stem_is_detected_and_loads_without_metadata(tmp_path):
    config = dict(TINY_SAVED, stem_channels=[8, 16, 32])
    model = randomized(build_sam(config))
    assert detect_architecture(model.state_dict()).config == config
    save_model(model, tmp_path / "stem.pt")
    (tmp_path / "stem.json").unlink()
    loaded = load_model(tmp_path / "stem.pt")
    assert_same_state(loaded.state_dict(), model.state_dict())
    pixels = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert loaded.image_encoder(pixels).shape == (1, 64, 16, 16)
        torch.testing.assert_close(loaded.image_encoder(pixels), model.image_encoder(pixels))


def test_a_stem_that_does_not_make_the_patch_size_is_refused():
    with pytest.raises(ValueError, match="not patch_size=8"):
        build_sam(dict(TINY, stem_channels=[8, 16]))


def test_an_empty_stem_is_the_linear_patch_embedding():
    assert detect_architecture(build_sam(dict(TINY, stem_channels=[])).state_dict()).config == TINY_SAVED
