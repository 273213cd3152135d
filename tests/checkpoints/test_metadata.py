"""The sidecar JSON: written by save_model, deciding the architecture when loading."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sam.checkpoints import CheckpointError, load_model, save_model
from napari_sam.model import build_sam
from tiny import TINY, TINY_SAVED


def test_save_writes_sidecar_json_with_architecture(tmp_path):
    save_model(build_sam(TINY), tmp_path / "compact.pt", metadata={"epochs": 3})

    meta = json.loads((tmp_path / "compact.json").read_text())
    assert meta["model_type"] == "custom"
    assert meta["config"] == TINY_SAVED
    assert meta["epochs"] == 3
    # Only the two files: no temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact.json", "compact.pt"]


def test_save_rejects_metadata_that_contradicts_the_model(tmp_path):
    with pytest.raises(ValueError, match="disagrees"):
        save_model(build_sam("vit_t"), tmp_path / "m.pt", metadata={"model_type": "vit_b"})
    with pytest.raises(ValueError, match="JSON"):
        save_model(build_sam("vit_t"), tmp_path / "m.pt", metadata={"bad": object()})


def test_sidecar_metadata_decides_the_architecture(tmp_path, compact_state):
    path = tmp_path / "model.pt"
    torch.save(compact_state, path)
    (tmp_path / "model.pt.json").write_text(json.dumps({"model_type": "vit_t", "note": "wrong"}))

    with pytest.raises(CheckpointError, match=r"model\.pt\.json"):
        load_model(path)

    sidecar = {"model_type": "custom", "config": TINY_SAVED, "note": "hi"}
    (tmp_path / "model.pt.json").write_text(json.dumps(sidecar))
    assert load_model(path).metadata["note"] == "hi"


def test_invalid_sidecar_json_raises(tmp_path, compact_state):
    path = tmp_path / "model.pt"
    torch.save(compact_state, path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.json.*not valid JSON"):
        load_model(path)
