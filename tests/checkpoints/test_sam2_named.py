"""The SAM 2.1 checkpoints by name: official URLs, published sha256 and sizes, download and
load through the registry (from an http.server on 127.0.0.1; nothing reaches the internet)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch

from napari_sam.checkpoints import CACHE_ENV_VAR, CheckpointError, MODELS, fetch_weights, load_model, registry
from napari_sam.model.sam2 import SAM2_CONFIGS
from tiny import assert_same_state, build_tiny_sam2

NAMES = ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")


def test_the_four_sam2_1_models_are_named_with_their_official_urls_and_hashes():
    sizes = []
    for name in NAMES:
        spec = MODELS[name]
        assert spec.model_type == name and name in SAM2_CONFIGS
        assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert spec.filename == f"{name}.pt" and spec.hash_algorithm == "sha256"
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert "micro_sam/v2/util.py" in spec.source
        sizes.append(spec.size_bytes)
    assert sizes == sorted(sizes) and len(set(MODELS[n].sha256 for n in NAMES)) == 4


@pytest.fixture
def served(served, tmp_path, monkeypatch):
    """The shared 127.0.0.1 server (conftest), with the cache in tmp_path/cache."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    return served


def _serve_as(monkeypatch, name, url, data: bytes):
    """The named spec, pointing at ``url`` and expecting ``data``'s sha256 and size."""
    spec = replace(MODELS[name], url=url, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    monkeypatch.setitem(registry.MODELS, name, spec)
    return spec


def test_a_named_sam2_model_downloads_checks_and_loads(served, tmp_path, monkeypatch):
    folder, base_url = served
    model = build_tiny_sam2()
    torch.save({"model": model.state_dict()}, folder / "sam2.1_hiera_tiny.pt")  # the official layout
    _serve_as(monkeypatch, "sam2.1_hiera_tiny", base_url + "sam2.1_hiera_tiny.pt",
              (folder / "sam2.1_hiera_tiny.pt").read_bytes())
    path = fetch_weights("sam2.1_hiera_tiny", progressbar=False)
    assert path == tmp_path / "cache" / "sam2.1_hiera_tiny.pt"
    # The tiny test model's input size is not in its tensors: a sidecar says it (official files need none).
    (tmp_path / "cache" / "sam2.1_hiera_tiny.json").write_text(json.dumps({"config": model.config}))
    loaded = load_model("sam2.1_hiera_tiny", device="cpu")
    assert loaded.metadata["name"] == "sam2.1_hiera_tiny" and loaded.supports_video
    assert_same_state(loaded.state_dict(), model.state_dict())


def test_a_changed_file_on_the_server_is_refused_and_nothing_kept(served, tmp_path, monkeypatch):
    folder, base_url = served
    spec = _serve_as(monkeypatch, "sam2.1_hiera_small", base_url + "sam2.1_hiera_small.pt", b"the published file")
    (folder / "sam2.1_hiera_small.pt").write_bytes(b"another file")
    with pytest.raises(CheckpointError, match=spec.sha256):
        fetch_weights("sam2.1_hiera_small", progressbar=False)
    assert not (tmp_path / "cache" / "sam2.1_hiera_small.pt").exists()
