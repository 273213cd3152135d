"""micro-sam's models by name: xxh128-checked downloads and the decoder paired with each model.

Nothing here reaches the internet: downloads come from an http.server on 127.0.0.1.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import xxhash

from napari_sam.checkpoints import (
    CACHE_ENV_VAR,
    DECODERS,
    MODELS,
    CheckpointError,
    ModelSpec,
    fetch_decoder,
    fetch_weights,
    registry,
)

MICRO_SAM_NAMES = ["vit_t_lm", "vit_b_lm", "vit_l_lm", "vit_t_em_organelles", "vit_b_em_organelles",
                   "vit_l_em_organelles"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def xxh128(data: bytes) -> str:
    return xxhash.xxh128(data).hexdigest()


def register_pair(monkeypatch, base_url: str, model_hash: str, decoder_hash: str) -> ModelSpec:
    """A named model "tiny_lm" served as tiny.pt, paired with the decoder "tiny_lm_decoder"."""
    decoder = ModelSpec(name="tiny_lm_decoder", model_type=None, filename="tiny_lm_decoder.pt",
                        url=base_url + "tiny_decoder.pt", sha256=None, size_bytes=None, description="test decoder",
                        xxh128=decoder_hash)
    model = ModelSpec(name="tiny_lm", model_type=None, filename="tiny_lm.pt", url=base_url + "tiny.pt",
                      sha256=None, size_bytes=None, description="test model", xxh128=model_hash,
                      decoder="tiny_lm_decoder")
    monkeypatch.setitem(registry.DECODERS, decoder.name, decoder)
    monkeypatch.setitem(registry.MODELS, model.name, model)
    return model


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_every_micro_sam_model_is_named_with_its_decoder_and_xxh128():
    for name in MICRO_SAM_NAMES:
        spec = MODELS[name]
        assert spec.model_type == name[:5] and spec.hash_algorithm == "xxh128"
        assert re.fullmatch(r"[0-9a-f]{32}", spec.xxh128) and spec.url.startswith("https://")
        decoder = DECODERS[spec.decoder]
        assert decoder.name == name + "_decoder" and decoder.hash_algorithm == "xxh128"
        assert "micro_sam 1.8.14" in spec.source and "micro_sam 1.8.14" in decoder.source


def test_registry_values_are_micro_sams_own():
    """Each URL and hash is the one micro-sam 1.8.14's util.py publishes, on the line named."""
    import importlib.metadata
    import importlib.util

    found = importlib.util.find_spec("micro_sam")
    if found is None:
        pytest.skip("micro_sam (test-only reference) is not installed")
    assert importlib.metadata.version("micro_sam") == "1.8.14"
    text = (Path(found.origin).parent / "util.py").read_text()
    lines = text.splitlines()
    for name in MICRO_SAM_NAMES:
        for spec in (MODELS[name], DECODERS[name + "_decoder"]):
            hash_line, url_line = map(int, re.findall(r"line (\d+)", spec.source))
            assert f'"{spec.name}": "xxh128:{spec.xxh128}"' in lines[hash_line - 1]
            assert f'"{spec.name}": "{spec.url}"' in lines[url_line - 1]


def test_right_xxh128_is_accepted_and_the_decoder_pair_is_fetched(served, cache, monkeypatch):
    folder, base_url = served
    (folder / "tiny.pt").write_bytes(b"encoder weights")
    (folder / "tiny_decoder.pt").write_bytes(b"decoder weights")
    register_pair(monkeypatch, base_url, xxh128(b"encoder weights"), xxh128(b"decoder weights"))

    model_path = fetch_weights("tiny_lm", progressbar=False)
    decoder_path = fetch_decoder("tiny_lm", progressbar=False)

    assert model_path == cache / "tiny_lm.pt" and model_path.read_bytes() == b"encoder weights"
    assert decoder_path == cache / "tiny_lm_decoder.pt" and decoder_path.read_bytes() == b"decoder weights"
    assert files_in(cache) == ["tiny_lm.pt", "tiny_lm_decoder.pt"]
    # Cached and verified: no server needed any more.
    (folder / "tiny.pt").unlink()
    (folder / "tiny_decoder.pt").unlink()
    assert fetch_decoder("tiny_lm") == decoder_path


def test_wrong_xxh128_is_refused_and_the_partial_file_removed(served, cache, monkeypatch):
    folder, base_url = served
    (folder / "tiny.pt").write_bytes(b"an error page, not weights")
    (folder / "tiny_decoder.pt").write_bytes(b"a changed decoder")
    expected = "0" * 32
    register_pair(monkeypatch, base_url, expected, expected)

    for fetch, served_bytes in ((fetch_weights, b"an error page, not weights"), (fetch_decoder, b"a changed decoder")):
        with pytest.raises(CheckpointError) as info:
            fetch("tiny_lm", progressbar=False)
        message = str(info.value)
        assert "xxh128" in message and expected in message and xxh128(served_bytes) in message
    assert files_in(cache) == []


def test_a_cached_file_with_the_wrong_xxh128_is_downloaded_again(served, cache, monkeypatch):
    folder, base_url = served
    (folder / "tiny.pt").write_bytes(b"encoder weights")
    register_pair(monkeypatch, base_url, xxh128(b"encoder weights"), "0" * 32)
    cache.mkdir()
    (cache / "tiny_lm.pt").write_bytes(b"stale")

    assert fetch_weights("tiny_lm", progressbar=False).read_bytes() == b"encoder weights"


def test_models_without_a_decoder_or_with_a_missing_bundled_one_give_none(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "weights")
    assert fetch_decoder("vit_b") is None
    assert fetch_decoder("default") is None  # no default_decoder.pt in this installation
    (tmp_path / "weights").mkdir()
    torch.save({}, tmp_path / "weights" / "default_decoder.pt")
    assert fetch_decoder("default") == tmp_path / "weights" / "default_decoder.pt"
