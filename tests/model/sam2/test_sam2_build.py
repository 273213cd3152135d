"""SAM 2.1: configs, detection from checkpoint tensors, loading, and the model-family members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.model.family import ModelFamily
from napari_sam.model.sam2 import (
    SAM2_CONFIGS,
    VIDEO_PREFIXES,
    build_sam2,
    detect_sam2_config,
    image_state_dict,
    is_sam2_state_dict,
    load_sam2,
)

# A small model for the fast tests: the official structure at 128 pixels and width 32.
SMALL = {
    "embed_dim": 8, "num_heads": 1, "stages": [1, 2, 4, 1], "global_att_blocks": [4, 6],
    "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7], "image_size": 128, "d_model": 32,
    "decoder_mlp_dim": 64, "mem_dim": 16, "memory_mlp_dim": 64,
}

# Sizes in millions of tensors' elements that the SAM 2.1 README publishes: the image
# model and the video modules (memory encoder and attention, object pointers) together.
PUBLISHED_SIZE_M = {
    "sam2.1_hiera_tiny": 38.9, "sam2.1_hiera_small": 46.0, "sam2.1_hiera_base_plus": 80.8, "sam2.1_hiera_large": 224.4,
}


def _synthetic_state(name: str) -> dict[str, torch.Tensor]:
    """A state dict with the official shapes of `name` (image and video tensors) on the
    meta device (no memory): what a checkpoint's ``model`` entry holds, minus the values."""
    with torch.device("meta"):
        return dict(build_sam2(name).state_dict())


@pytest.mark.parametrize("name", sorted(SAM2_CONFIGS))
def test_each_official_size_is_detected_from_its_tensor_shapes(name):
    state = _synthetic_state(name)
    assert is_sam2_state_dict(state)
    config = detect_sam2_config(state)
    assert config["name"] == name
    assert config["family"] == "sam2"
    assert config["image_size"] == 1024
    assert config["video"]
    for key, value in SAM2_CONFIGS[name].items():
        assert config[key] == value


@pytest.mark.parametrize("name", sorted(SAM2_CONFIGS))
def test_official_sizes_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        state = build_sam2(name).state_dict()
    count = sum(tensor.numel() for tensor in state.values()) / 1e6
    assert abs(count - PUBLISHED_SIZE_M[name]) < 0.1


def test_detection_rejects_other_state_dicts():
    assert not is_sam2_state_dict({"image_encoder.patch_embed.proj.weight": torch.empty(1)})
    with pytest.raises(ValueError, match="not a SAM 2 state dict"):
        detect_sam2_config({"image_encoder.patch_embed.proj.weight": torch.empty(1)})
    state = _synthetic_state("sam2.1_hiera_tiny")
    state["image_encoder.trunk.pos_embed"] = torch.empty(1, 96, 9, 9, device="meta")
    with pytest.raises(ValueError, match="match none"):
        detect_sam2_config(state)


def test_video_tensors_load_or_are_left_out_and_unknown_keys_are_refused():
    model = build_sam2(SMALL)
    state = dict(model.state_dict())
    assert any(key.startswith(VIDEO_PREFIXES) for key in state)
    loaded = load_sam2(state, SMALL)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key])
    # An image-only model takes the image tensors of a full file.
    image_only = load_sam2(state, {**SMALL, "video": False})
    assert not image_only.supports_video
    assert set(image_only.state_dict()) == set(image_state_dict(state))
    state["sam_mask_decoder.unknown"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unknown"):
        load_sam2(state, SMALL)


def test_unknown_name_and_incomplete_config_are_refused():
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny"):
        build_sam2("sam2_hiera_tiny")
    with pytest.raises(ValueError, match="lacks"):
        build_sam2({"embed_dim": 8})


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_sam2(SMALL)


def test_is_a_model_family_with_its_geometry(small_model):
    assert isinstance(small_model, ModelFamily)
    assert small_model.image_size == 128
    assert small_model.embedding_size == (8, 8)
    assert small_model.low_res_size == (32, 32)
    assert not small_model.supports_text
    assert small_model.config["family"] == "sam2"


def test_prepare_stretches_the_plane_to_the_square_input(small_model):
    rgb = np.zeros((50, 200, 3), np.uint8)
    rgb[:, :100] = 255
    inputs, frame = small_model.prepare(rgb)
    assert inputs.shape == (1, 3, 128, 128)
    assert frame.original_size == (50, 200) and frame.input_size == (128, 128) and frame.image_size == 128
    # The left half of the plane is the left half of the input: stretched, not padded.
    white = (1.0 - 0.485) / 0.229
    assert torch.allclose(inputs[0, 0, :, :60], torch.full((128, 60), white), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        small_model.prepare(rgb.astype(np.float32))


def test_encode_and_decode_shapes_for_shared_and_batched_features(small_model):
    with torch.inference_mode():
        inputs, _ = small_model.prepare(np.full((64, 64, 3), 128, np.uint8))
        features = small_model.encode(torch.cat([inputs, inputs]))
        assert features["image_embed"].shape == (2, 32, 8, 8)
        assert features["high_res_s0"].shape == (2, 4, 32, 32)
        assert features["high_res_s1"].shape == (2, 8, 16, 16)
        one = {key: value[:1] for key, value in features.items()}
        points = torch.tensor([[[10.0, 20.0]], [[60.0, 70.0]]])
        labels = torch.ones(2, 1, dtype=torch.int64)
        low, iou = small_model.decode(one, points, labels, multimask=True)
        assert low.shape == (2, 3, 32, 32) and iou.shape == (2, 3)
        low_b, iou_b = small_model.decode(features, points, labels, multimask=True)
        torch.testing.assert_close(low_b, low, atol=1e-5, rtol=0)
        boxes = torch.tensor([[5.0, 5.0, 90.0, 100.0], [0.0, 0.0, 40.0, 40.0]])
        low, iou = small_model.decode(one, boxes=boxes, mask_inputs=low[:, :1], multimask=False)
        assert low.shape == (2, 1, 32, 32) and iou.shape == (2, 1)
        assert ((iou >= 0) & (iou <= 1)).all()  # sigmoid IoU head


def test_text_prompts_are_refused(small_model):
    with torch.inference_mode():
        inputs, _ = small_model.prepare(np.zeros((32, 32, 3), np.uint8))
        features = small_model.encode(inputs)
        with pytest.raises(ValueError, match="no text path"):
            small_model.decode(features, text_embeddings=torch.zeros(1, 384))


def test_gradients_reach_every_image_model_parameter(small_model):
    model = build_sam2({**SMALL, "video": False}).train()
    inputs, _ = model.prepare(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    features = model.encode(inputs)
    low, iou = model.decode(features, torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1, dtype=torch.int64),
                            boxes=torch.tensor([[5.0, 5.0, 90.0, 100.0]]), mask_inputs=torch.zeros(1, 1, 32, 32),
                            multimask=True)
    (low.mean() + iou.mean()).backward()
    # The single-mask token's hypernetwork, the object-score head and the no-mask
    # vector (a mask is given) are not on this path; every other tensor is.
    unused = ("output_hypernetworks_mlps.0.", "pred_obj_score_head", "no_mask_embed")
    missing = [name for name, p in model.named_parameters() if p.grad is None and not any(u in name for u in unused)]
    assert not missing, missing


def test_an_official_layout_file_loads_by_path_with_its_size_detected(tmp_path):
    """A file as Meta ships it (``{"model": state}``, the video tensors included) loads
    through ``napari_sam.load_model`` unchanged, as the detected size."""
    from napari_sam import load_model

    torch.manual_seed(0)
    source = build_sam2("sam2.1_hiera_tiny")
    state = dict(source.state_dict())
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    model = load_model(path, device="cpu")
    assert model.config["name"] == "sam2.1_hiera_tiny"
    assert model.metadata["checkpoint"] == str(path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
