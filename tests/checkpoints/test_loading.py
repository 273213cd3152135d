"""load_model / save_model: round trips, training checkpoints, and weights that do not fit."""

from __future__ import annotations

import pytest
import torch

from napari_sam.checkpoints import CheckpointError, load_model, loading, save_model
from napari_sam.model import build_sam
from tiny import TINY, assert_same_state, randomized


@pytest.mark.parametrize("model_type", ["vit_t", "compact"])
def test_save_then_load_gives_equal_state_dict(tmp_path, model_type):
    model = randomized(build_sam(TINY if model_type == "compact" else model_type))
    path = save_model(model, tmp_path / "model.pt", metadata={"trained_on": "nuclei"})

    loaded = load_model(path, device="cpu")

    assert_same_state(model.state_dict(), loaded.state_dict())
    assert not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded.metadata["trained_on"] == "nuclei"
    assert loaded.metadata["checkpoint"] == str(path)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"

    def broken_save(obj, stream):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(loading.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(build_sam("vit_t"), target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, compact_state):
    target = tmp_path / "model.pt"
    torch.save(compact_state, target)
    before = target.read_bytes()

    def broken_save(obj, stream):
        raise OSError("disk full")

    monkeypatch.setattr(loading.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_model(build_sam("vit_t"), target)
    assert target.read_bytes() == before


def test_micro_sam_training_checkpoint_with_extra_entries_loads(tmp_path, vit_t_state):
    # The layout torch_em's trainer writes (weights-only-safe parts), as micro-sam uses it.
    checkpoint = {
        "iteration": 1000,
        "epoch": 10,
        "best_epoch": 9,
        "best_metric": 0.12,
        "current_metric": 0.13,
        "model_state": {"sam." + k: v for k, v in vit_t_state.items()},
        "optimizer_state": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-5}]},
        "decoder_state": {"decoder.conv.weight": torch.zeros(4, 4, 3, 3)},
        "scheduler_state": {"last_epoch": 10},
        "init": {"model_class": "micro_sam.training.trainable_sam.TrainableSAM"},
        "config": {"model_type": "vit_t", "n_objects_per_batch": 25},
        "train_time": 12.5,
        "timestamp": "01-01-2025 (10:00:00)",
    }
    path = tmp_path / "best.pt"
    torch.save(checkpoint, path)

    model = load_model(path)

    assert model.metadata["model_type"] == "vit_t"
    assert_same_state(model.state_dict(), vit_t_state)


def test_non_persistent_buffers_in_the_file_are_accepted_when_equal(tmp_path, compact_state):
    model = build_sam(TINY)
    path = tmp_path / "with_pixel_stats.pt"
    torch.save({**compact_state, "pixel_mean": model.pixel_mean.clone()}, path)
    load_model(path)

    torch.save({**compact_state, "pixel_mean": model.pixel_mean + 1}, path)
    with pytest.raises(CheckpointError, match="pixel_mean"):
        load_model(path)


@pytest.mark.parametrize("model_type", ["vit_b", "vit_t"])
def test_official_sam_and_mobile_sam_key_layouts_load(tmp_path, model_type):
    reference = pytest.importorskip("reference")
    state = reference.reference_state_dict(model_type, seed=0)
    path = tmp_path / f"official_{model_type}.pth"
    torch.save(state, path)

    model = load_model(path)

    assert model.metadata["model_type"] == model_type
    ours = model.state_dict()
    assert_same_state(ours, {k: v for k, v in state.items() if k in ours})


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="vit_b"):
        load_model("vit_q")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


# -- weights that do not fit the architecture ------------------------------------------


def test_vit_t_weights_as_vit_b_list_missing_and_unexpected_keys(tmp_path, vit_t_state):
    path = tmp_path / "mobile_sam.pt"
    torch.save(vit_t_state, path)

    with pytest.raises(CheckpointError) as info:
        load_model(path, model_type="vit_b")

    message = str(info.value)
    assert str(path) in message
    assert "vit_b" in message
    assert "missing keys" in message and "image_encoder.blocks.0.attn.qkv.weight" in message
    assert "unexpected keys" in message and "image_encoder.layers." in message
    assert "... and" in message  # long lists are cut, with a count
    assert "look like vit_t" in message


def test_shape_mismatch_is_listed(tmp_path, compact_state):
    state = dict(compact_state)
    state["mask_decoder.iou_prediction_head.layers.0.weight"] = torch.zeros(64, 7)
    path = tmp_path / "reshaped.pt"
    torch.save(state, path)

    with pytest.raises(CheckpointError) as info:
        load_model(path)

    message = str(info.value)
    assert "1 mismatched tensors" in message
    assert "mask_decoder.iou_prediction_head.layers.0.weight: file (64, 7) vs model (64, 64)" in message


def test_missing_keys_are_listed(tmp_path, compact_state):
    state = {k: v for k, v in compact_state.items() if not k.startswith("prompt_encoder.")}
    path = tmp_path / "no_prompt_encoder.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="(?s)missing keys.*prompt_encoder"):
        load_model(path)


def test_state_dict_of_another_model_is_not_sam(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a Segment Anything state dict"):
        load_model(path)
