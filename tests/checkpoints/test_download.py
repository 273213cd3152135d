"""Download of named models with sha256 checks.

Nothing here reaches the internet: downloads come from an http.server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import torch

from napari_sam.checkpoints import (
    CACHE_ENV_VAR,
    CheckpointError,
    DownloadError,
    ModelSpec,
    fetch_weights,
    load_model,
    registry,
)
from tiny import assert_same_state


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def register(monkeypatch, url: str, sha256: str, filename: str = "tiny.pt") -> ModelSpec:
    spec = ModelSpec(
        name="tiny", model_type=None, filename=filename, url=url, sha256=sha256,
        size_bytes=None, description="test model",
    )
    monkeypatch.setitem(registry.MODELS, "tiny", spec)
    return spec


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_with_correct_hash_lands_in_cache_dir(served, cache, monkeypatch, compact_state):
    folder, base_url = served
    torch.save(compact_state, folder / "tiny.pt")
    digest = hashlib.sha256((folder / "tiny.pt").read_bytes()).hexdigest()
    register(monkeypatch, base_url + "tiny.pt", digest)

    path = fetch_weights("tiny", progressbar=False)

    assert path == cache / "tiny.pt"
    assert path.read_bytes() == (folder / "tiny.pt").read_bytes()
    assert files_in(cache) == ["tiny.pt"]
    # Loading by name uses the cached file and detects the architecture.
    (folder / "tiny.pt").unlink()
    model = load_model("tiny")
    assert model.metadata["name"] == "tiny" and model.metadata["model_type"] == "custom"
    assert_same_state(model.state_dict(), compact_state)


def test_download_with_wrong_hash_raises_and_keeps_nothing(served, cache, monkeypatch):
    folder, base_url = served
    (folder / "tiny.pt").write_bytes(b"an error page, not weights")
    actual = hashlib.sha256(b"an error page, not weights").hexdigest()
    expected = "0" * 64
    register(monkeypatch, base_url + "tiny.pt", expected)

    with pytest.raises(CheckpointError) as info:
        fetch_weights("tiny", progressbar=False)

    message = str(info.value)
    assert "tiny.pt" in message and expected in message and actual in message
    assert files_in(cache) == []


def test_unreachable_server_message_says_what_to_download_and_where(cache, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/weights/tiny.pt"
    spec = register(monkeypatch, url, "1" * 64)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    with pytest.raises(DownloadError) as info:
        load_model("tiny")

    message = str(info.value)
    assert spec.filename in message
    assert url in message
    assert str(cache / spec.filename) in message
    assert "load_model(" in message
    assert files_in(cache) == []


def test_missing_file_on_server_is_a_download_error(served, cache, monkeypatch):
    _, base_url = served
    register(monkeypatch, base_url + "tiny.pt", "1" * 64)
    with pytest.raises(DownloadError, match="tiny.pt"):
        fetch_weights("tiny", progressbar=False)


def test_manually_placed_file_is_used_without_network(cache, monkeypatch, compact_state):
    cache.mkdir()
    torch.save(compact_state, cache / "tiny.pt")
    digest = hashlib.sha256((cache / "tiny.pt").read_bytes()).hexdigest()
    register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/tiny.pt", digest)

    assert fetch_weights("tiny") == cache / "tiny.pt"


def test_cached_file_with_wrong_content_is_reported_when_offline(cache, monkeypatch):
    cache.mkdir()
    (cache / "tiny.pt").write_bytes(b"stale")
    register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/tiny.pt", "2" * 64)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    with pytest.raises(DownloadError, match="already at .*tiny.pt has sha256"):
        fetch_weights("tiny", progressbar=False)
