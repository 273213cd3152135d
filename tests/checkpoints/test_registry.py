"""The named models, the cache folder, and the model shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import pooch
import pytest

from napari_sam.checkpoints import CACHE_ENV_VAR, DECODERS, MODELS, cache_dir, load_model, registry, save_model
from napari_sam.model import build_sam
from tiny import TINY, TINY_SAVED, assert_same_state, randomized


def test_registry_entries_are_complete():
    for name, spec in MODELS.items():
        assert spec.name == name
        if spec.bundled:
            continue
        assert spec.url.startswith("https://")
        if spec.hash_algorithm == "sha256":  # SAM's files keep their published names
            assert spec.url.rsplit("/", 1)[-1] == spec.filename
            assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        else:  # micro-sam's are all called vit_b.pt and the like: the cache names them by model
            assert spec.filename == f"{name}.pt" and len(spec.xxh128) == 32 and int(spec.xxh128, 16) >= 0
        assert spec.decoder is None or spec.decoder in DECODERS
    assert {"default", "vit_b", "vit_l", "vit_h", "vit_t", "vit_b_lm"} <= set(MODELS)


def test_cache_dir_follows_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(CACHE_ENV_VAR)
    assert cache_dir() == Path(pooch.os_cache("napari-sam"))


def test_default_model_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match=r"bundled model 'default'.*default\.pt"):
        load_model("default")


def test_default_model_loads_with_its_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "weights")
    model = randomized(build_sam(TINY))
    save_model(model, tmp_path / "weights" / "default.pt", metadata={"description": "test default"})

    loaded = load_model("default")

    assert loaded.metadata["name"] == "default"
    assert loaded.metadata["description"] == "test default"
    assert loaded.metadata["config"] == TINY_SAVED
    assert_same_state(loaded.state_dict(), model.state_dict())
