"""Hostile checkpoint files (issue 21, items 6 and 9): checked before building, NaN weights refused."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

import napari_sam.model as model_module
from napari_sam import load_model, save_model
from napari_sam.checkpoints import CheckpointError, metadata_path
from tiny import build_tiny


@pytest.fixture()
def copy(model_file, tmp_path):
    """A private copy of the tiny model file and its sidecar (the fixture's is shared)."""
    target = tmp_path / "tiny.pt"
    shutil.copy(model_file, target)
    shutil.copy(metadata_path(model_file), metadata_path(target))
    return target


@pytest.fixture()
def real_builds(monkeypatch):
    """Record every ``build_sam`` call that is not on the meta device (one that allocates)."""
    calls = []
    original = model_module.build_sam

    def spy(*args, **kwargs):
        if torch.empty(0).device.type != "meta":
            calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module, "build_sam", spy)
    return calls


def edit_sidecar(path, **changes):
    sidecar = metadata_path(path)
    content = json.loads(sidecar.read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    sidecar.write_text(json.dumps(content))


def test_a_sidecar_naming_another_architecture_fails_before_building_it(copy, real_builds):
    edit_sidecar(copy, model_type="vit_h", config=None)
    with pytest.raises(CheckpointError, match="vit_h") as caught:
        load_model(copy)
    assert str(copy) in str(caught.value)
    assert real_builds == []


def test_an_absurd_image_size_in_the_sidecar_allocates_nothing(copy, real_builds):
    config = json.loads(metadata_path(copy).read_text())["config"]
    edit_sidecar(copy, config={**config, "img_size": 320000})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(copy)
    assert time.perf_counter() - start < 20
    assert real_builds == []


def test_a_fitting_sidecar_still_loads(copy):
    model = load_model(copy)
    assert model.metadata["checkpoint"] == str(copy)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, value):
    model = build_tiny()
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[3] = value
    path = save_model(model, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    message = str(caught.value)
    assert str(path) in message and "NaN or infinite" in message
    assert len(message.splitlines()) == 1
