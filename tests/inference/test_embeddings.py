"""EmbeddingStore: memory LRU, persistent cache with verified signatures, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.inference.embeddings import EmbeddingStore, Signature, content_hash, weights_hash
from napari_sam.inference.encoding import encode_plane, read_embedding
from napari_sam.imaging import Normalization
from napari_sam.model import build_sam
from napari_sam.inference.predictor import Predictor
from tiny import TINY



def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(TINY)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def predictor(model):
    return Predictor(model)


def plane(seed: int = 0, shape=(40, 50), dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def entry_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.pt"))


def test_second_get_of_the_same_plane_does_not_run_the_encoder(predictor):
    store = EmbeddingStore(predictor.model)
    first = store.get(plane())
    second = store.get(plane().copy())
    assert store.encoder_calls == 1 and store.memory_hits == 1
    assert second is first
    expected = predictor.compute_embedding(plane())
    torch.testing.assert_close(first.features, expected.features)
    assert first.original_size == (40, 50)


def test_lookup_never_computes(predictor):
    store = EmbeddingStore(predictor.model)
    assert store.lookup(plane()) is None
    assert store.encoder_calls == 0
    store.get(plane())
    assert store.lookup(plane()) is not None
    assert store.encoder_calls == 1


def test_memory_lru_is_bounded_by_the_feature_bytes(predictor):
    one = predictor.compute_embedding(plane()).features
    size_mb = one.numel() * one.element_size() / 2**20
    store = EmbeddingStore(predictor.model, memory_mb=2.5 * size_mb)
    for seed in range(4):
        store.get(plane(seed))
    assert store.memory_used_mb <= 2.5 * size_mb
    assert store.lookup(plane(3)) is not None  # most recent kept
    assert store.lookup(plane(0)) is None  # oldest evicted (no disk cache)
    store.get(plane(0))
    assert store.encoder_calls == 5


def test_disk_cache_is_shared_between_stores(predictor, tmp_path):
    first = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    computed = first.get(plane())
    assert len(entry_files(tmp_path)) == 1
    second = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    loaded = second.get(plane())
    assert second.encoder_calls == 0 and second.disk_hits == 1
    torch.testing.assert_close(loaded.features, computed.features)
    assert loaded.original_size == computed.original_size and loaded.input_size == computed.input_size


@pytest.mark.parametrize("change", ["image", "weights", "normalisation", "model_id", "tile"])
def test_cache_is_invalidated_when_image_model_or_normalisation_changes(model, tmp_path, change):
    image = plane()
    EmbeddingStore(model, cache_dir=tmp_path).get(image)
    other_model, normalization, tile = model, Normalization(), None
    if change == "image":
        image = image.copy()
        image[3, 4] += 1
    elif change == "weights":
        other_model = tiny_model(seed=1)
    elif change == "normalisation":
        normalization = Normalization(1.0, 99.0)
    elif change == "model_id":
        other_model = tiny_model()
        other_model.config = dict(other_model.config, name="another")
    store = EmbeddingStore(other_model, normalization, cache_dir=tmp_path)
    signature = store.signature(image)
    if change == "tile":
        signature = signature.with_tile((0, 0, 40, 40))
    store.get(image, signature=signature)
    assert store.encoder_calls == 1
    assert len(entry_files(tmp_path)) == 2


def test_weights_hash_notices_in_place_updates():
    model = tiny_model()
    before = weights_hash(model)
    assert weights_hash(model) == before
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert weights_hash(model) != before
    assert weights_hash(tiny_model()) == before  # same values, another object


def test_content_hash_depends_on_values_shape_and_dtype_not_layout():
    image = plane(shape=(30, 20))
    assert content_hash(image) == content_hash(np.asfortranarray(image))
    assert content_hash(image[::2]) == content_hash(image[::2].copy())
    assert content_hash(image) != content_hash(image.astype(np.int32))
    assert content_hash(image) != content_hash(image.reshape(20, 30))


def test_truncated_entry_is_detected_and_recomputed(predictor, tmp_path):
    EmbeddingStore(predictor.model, cache_dir=tmp_path).get(plane())
    (path,) = entry_files(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    assert store.lookup(plane()) is None
    assert store.rejected_entries == 1
    embedding = store.get(plane())
    assert store.encoder_calls == 1
    read_embedding(path, store.signature(plane()).to_dict())  # rewritten, valid again
    torch.testing.assert_close(embedding.features, predictor.compute_embedding(plane()).features)


def test_corrupt_bytes_in_the_features_are_detected(predictor, tmp_path):
    EmbeddingStore(predictor.model, cache_dir=tmp_path).get(plane())
    (path,) = entry_files(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["features"] = payload["features"] + 1  # stale values under the right signature
    torch.save(payload, path)
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    store.get(plane())
    assert store.rejected_entries == 1 and store.encoder_calls == 1


def test_an_entry_with_another_signature_is_never_used(predictor, tmp_path):
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    store.get(plane(0))
    store.get(plane(1))
    path0, path1 = (store.path(store.signature(plane(s))) for s in (0, 1))
    path1.write_bytes(path0.read_bytes())  # e.g. a file copied over by hand
    fresh = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    embedding = fresh.get(plane(1))
    assert fresh.rejected_entries == 1 and fresh.encoder_calls == 1
    torch.testing.assert_close(embedding.features, predictor.compute_embedding(plane(1)).features)


def test_a_killed_write_leaves_no_readable_entry(predictor, tmp_path, monkeypatch):
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_sam.files.os.replace", die)
    with pytest.raises(KeyboardInterrupt):
        store.get(plane())
    monkeypatch.undo()
    assert entry_files(tmp_path) == []
    assert not list(tmp_path.rglob("*.tmp"))
    fresh = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    assert fresh.lookup(plane()) is None


def test_signature_round_trips_and_keys_differ():
    signature = Signature("c", "vit_b", "w" * 32, "pct0.5-99.5", 1024, (0, 0, 1024, 1024))
    assert Signature.from_dict(signature.to_dict()) == signature
    assert signature.key() != signature.with_tile(None).key()


def test_concurrent_gets_compute_once(predictor):
    store = EmbeddingStore(predictor.model)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get(plane()))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.encoder_calls == 1
    assert all(result is results[0] for result in results)


def test_progress_is_reported_for_a_computation_only(predictor):
    calls = []
    store = EmbeddingStore(predictor.model)
    store.get(plane(), progress=lambda done, total: calls.append((done, total)))
    store.get(plane(), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 1), (1, 1)]


def test_ensure_fills_the_disk_but_not_memory(predictor, tmp_path):
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    assert store.ensure(plane()) is True
    assert store.ensure(plane()) is False
    assert store.memory_used_mb == 0 and store.encoder_calls == 1


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"\x00" * 7])
def test_an_empty_or_cut_entry_is_rejected_and_recomputed_not_a_crash(predictor, tmp_path, content, caplog):
    EmbeddingStore(predictor.model, cache_dir=tmp_path).get(plane())
    (path,) = entry_files(tmp_path)
    path.write_bytes(content)  # a disk that filled up, a copy that was cut short
    store = EmbeddingStore(predictor.model, cache_dir=tmp_path)
    with caplog.at_level("WARNING", logger="napari_sam.inference.embeddings"):
        assert store.lookup(plane()) is None
    assert store.rejected_entries == 1 and "unreadable" in caplog.text
    store.get(plane())
    assert store.encoder_calls == 1
    read_embedding(path, store.signature(plane()).to_dict())  # rewritten, valid again


def test_the_store_encodes_with_the_model_or_a_given_function(model):
    calls = []

    def encode(image):
        calls.append(image.shape)
        return encode_plane(model, image)

    store = EmbeddingStore(model, encode=encode)
    store.get(plane())
    assert calls == [(40, 50)] and store.encoder_calls == 1
    torch.testing.assert_close(EmbeddingStore(model).get(plane()).features, store.get(plane()).features)


def test_the_store_takes_the_model_not_a_predictor(predictor):
    with pytest.raises(TypeError, match="EmbeddingStore\\(predictor.model, predictor.normalization"):
        EmbeddingStore(predictor)


def test_memory_budget_can_be_changed_while_in_use(predictor):
    store = EmbeddingStore(predictor.model, memory_mb=0)
    store.get(plane())
    assert store.memory_used_mb == 0
    store.memory_bytes = 2**30
    store.get(plane(1))
    assert store.memory_used_mb > 0 and store.memory_bytes == 2**30


def test_a_tiled_predictor_refuses_a_store_of_another_model_or_normalisation(predictor):
    from napari_sam.inference.tiling import TiledPredictor

    with pytest.raises(ValueError, match="another model or normalisation"):
        TiledPredictor(predictor, EmbeddingStore(tiny_model(seed=1)))
    with pytest.raises(ValueError, match="another model or normalisation"):
        TiledPredictor(predictor, EmbeddingStore(predictor.model, Normalization(1.0, 99.0)))
