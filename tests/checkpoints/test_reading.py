"""Reading checkpoint files: accepted layouts, refused pickles, broken files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from napari_sam.checkpoints import CheckpointError, load_model, read_state_dict
from tiny import assert_same_state


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"model_state": sd}, id="model_state"),
        pytest.param(lambda sd: {"sam." + k: v for k, v in sd.items()}, id="sam-prefix"),
        pytest.param(lambda sd: {"model_state": {"module.sam." + k: v for k, v in sd.items()}}, id="ddp"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
    ],
)
def test_wrapped_and_prefixed_state_dicts_load(tmp_path, compact_state, wrap):
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(compact_state), path)

    assert_same_state(read_state_dict(path), compact_state)
    assert_same_state(load_model(path).state_dict(), compact_state)


class CreatesMarkerWhenUnpickled:
    """Unpickling this calls open(marker, "w"): code execution, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, compact_state, writer):
    marker = tmp_path / "marker"
    payload = {**compact_state, "evil": CreatesMarkerWhenUnpickled(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as stream:
            pickle.dump(payload, stream)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as info:
        load_model(path)

    assert str(path) in str(info.value)
    assert not marker.exists()


def test_refusal_message_names_the_blocked_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": CreatesMarkerWhenUnpickled(tmp_path / "marker")}, path)
    with pytest.raises(CheckpointError, match=r"Refused to load .*evil\.pt.*open"):
        read_state_dict(path)
    assert not (tmp_path / "marker").exists()


def test_truncated_file_raises_checkpoint_error(tmp_path, compact_state):
    whole = tmp_path / "whole.pt"
    torch.save(compact_state, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(CheckpointError, match="truncated") as info:
        load_model(truncated)
    assert str(truncated) in str(info.value)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"not a checkpoint\n" * 10])
def test_random_bytes_raise_checkpoint_error(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_file_that_is_not_a_mapping_raises(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model(path)


def test_mapping_without_tensors_raises(tmp_path):
    path = tmp_path / "settings.pt"
    torch.save({"lr": 1e-4, "name": "run1"}, path)
    with pytest.raises(CheckpointError, match="does not hold model weights"):
        load_model(path)


def test_mapping_with_some_non_tensor_values_raises(tmp_path, compact_state):
    path = tmp_path / "mixed.pt"
    torch.save({**compact_state, "image_encoder.note": "hello"}, path)
    with pytest.raises(CheckpointError, match="not a mapping of tensors.*image_encoder.note"):
        load_model(path)
