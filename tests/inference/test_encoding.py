"""Embedding files: one verified format for Embedding.save / load and the cache's entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import Embedding
from napari_sam.inference.embeddings import EmbeddingStore
from napari_sam.inference.encoding import (
    FORMAT, EmbeddingFileError, encode_plane, read_embedding, write_embedding,
)


@pytest.fixture(scope="module")
def embedding(tiny_model):
    return encode_plane(tiny_model, np.random.default_rng(0).integers(0, 255, (40, 50)).astype(np.uint8))


def test_a_saved_embedding_is_a_verified_entry_without_a_signature(embedding, tmp_path):
    path = tmp_path / "plane.pt"
    embedding.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["signature"] == "null" and payload["checksum"]
    loaded = read_embedding(path)
    assert torch.equal(loaded.features, embedding.features) and loaded.frame == embedding.frame
    with pytest.raises(EmbeddingFileError, match="signature mismatch"):
        read_embedding(path, {"content": "x"})  # a standalone file is never taken as a cache entry


def test_a_cache_entry_loads_as_an_embedding(tiny_model, tmp_path):
    image = np.random.default_rng(1).integers(0, 4000, (30, 30)).astype(np.uint16)
    store = EmbeddingStore(tiny_model, cache_dir=tmp_path)
    computed = store.get(image)
    loaded = Embedding.load(store.path(store.signature(image)))
    torch.testing.assert_close(loaded.features, computed.features)


def test_corrupt_feature_bytes_in_a_saved_file_are_refused(embedding, tmp_path):
    path = tmp_path / "e.pt"
    embedding.save(path)
    payload = torch.load(path, weights_only=True)
    payload["features"] = payload["features"] + 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a napari-sam embedding file: feature checksum mismatch"):
        Embedding.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage"])
def test_an_empty_or_garbage_file_gives_a_one_line_error(embedding, tmp_path, content):
    path = tmp_path / "e.pt"
    path.write_bytes(content)
    with pytest.raises(EmbeddingFileError, match="not a napari-sam embedding file: unreadable") as error:
        Embedding.load(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("signature", "{not json", "malformed signature"),
    ("signature", '{"image_size": 1024}', "image_size disagrees"),
    ("version", 99, "format version 99"),
    ("original_size", None, "malformed"),
])
def test_a_damaged_field_is_a_file_error(embedding, tmp_path, field, value, message):
    path = tmp_path / "e.pt"
    embedding.save(path)
    payload = torch.load(path, weights_only=True)
    payload[field] = value
    torch.save(payload, path)
    with pytest.raises(EmbeddingFileError, match=message):
        read_embedding(path)


def test_files_of_the_old_unverified_format_still_load(embedding, tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"features": embedding.features, "original_size": [40, 50], "input_size": list(embedding.input_size),
                "image_size": embedding.image_size, "model_id": "vit"}, path)
    loaded = Embedding.load(path)
    assert torch.equal(loaded.features, embedding.features) and loaded.original_size == (40, 50)
    with pytest.raises(EmbeddingFileError, match="not a napari-sam embedding"):
        read_embedding(path, {"content": "x"})  # never as a cache entry


def test_multi_scale_features_round_trip(tmp_path):
    """A family with several feature maps (SAM 2) stores a dict of tensors."""
    features = {"image_embed": torch.randn(1, 8, 4, 4), "high_res": (torch.randn(1, 2, 16, 16), torch.randn(1, 4, 8, 8))}
    embedding = Embedding(features, (60, 60), (32, 32), 32, "sam2-test")
    assert embedding.nbytes == sum(t.numel() * 4 for t in (features["image_embed"], *features["high_res"]))
    write_embedding(tmp_path / "e.pt", embedding, {"content": "c"})
    loaded = read_embedding(tmp_path / "e.pt", {"content": "c"})
    assert torch.equal(loaded.features["image_embed"], features["image_embed"])
    assert all(torch.equal(a, b) for a, b in zip(loaded.features["high_res"], features["high_res"]))
    assert loaded.to("cpu").features["high_res"][1].shape == (1, 4, 8, 8)


def test_saving_never_leaves_a_temporary_file(embedding, tmp_path, monkeypatch):
    def die(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_sam.files.os.replace", die)
    with pytest.raises(KeyboardInterrupt):
        embedding.save(tmp_path / "e.pt")
    assert list(tmp_path.iterdir()) == []
