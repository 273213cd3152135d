"""Named models, checkpoint reading and validation, download with sha256, device choice.

Nothing here reaches the internet: downloads come from an http.server on 127.0.0.1.
The models are small (vit_t, a compact custom ViT); vit_b is built once per module, and
vit_l / vit_h only on the meta device (shapes, no memory).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pickle
import socket
import threading
from pathlib import Path

import pooch
import pytest
import torch

from napari_sam.checkpoints import loading, registry
from napari_sam.device import DEVICE_ENV_VAR, select_device
from napari_sam.model import build_sam
from napari_sam.checkpoints import (
    CheckpointError,
    DownloadError,
    ModelSpec,
    cache_dir,
    detect_architecture,
    fetch_weights,
    load_model,
    read_state_dict,
    save_model,
)

COMPACT = {
    "encoder": "vit",
    "img_size": 128,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 4,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "window_size": 4,
    "global_attn_indexes": [1, 3],
    "prompt_embed_dim": 64,
    "decoder_mlp_dim": 128,
    "text_dim": 0,
}


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every floating-point tensor off its initial value, so loading is observable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
    return model


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def vit_t_state() -> dict[str, torch.Tensor]:
    return dict(randomized(build_sam("vit_t")).state_dict())


@pytest.fixture(scope="module")
def compact_state() -> dict[str, torch.Tensor]:
    return dict(randomized(build_sam(COMPACT), seed=1).state_dict())


@pytest.fixture(scope="module")
def vit_b_state() -> dict[str, torch.Tensor]:
    return dict(build_sam("vit_b").state_dict())


def meta_state(model_type: str) -> dict[str, torch.Tensor]:
    """State dict of tensors without storage: shapes only, any size."""
    with torch.device("meta"):
        return dict(build_sam(model_type).state_dict())


# --------------------------------------------------------------------------------------
# Round trips and accepted formats
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["vit_t", "compact"])
def test_save_then_load_gives_equal_state_dict(tmp_path, model_type):
    model = randomized(build_sam(COMPACT if model_type == "compact" else model_type))
    path = save_model(model, tmp_path / "model.pt", metadata={"trained_on": "nuclei"})

    loaded = load_model(path, device="cpu")

    assert_same_state(model.state_dict(), loaded.state_dict())
    assert not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded.metadata["trained_on"] == "nuclei"
    assert loaded.metadata["checkpoint"] == str(path)


def test_save_writes_sidecar_json_with_architecture(tmp_path, compact_state):
    model = build_sam(COMPACT)
    save_model(model, tmp_path / "compact.pt", metadata={"epochs": 3})

    meta = json.loads((tmp_path / "compact.json").read_text())
    assert meta["model_type"] == "custom"
    assert meta["config"] == COMPACT
    assert meta["epochs"] == 3
    # Only the two files: no temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact.json", "compact.pt"]


def test_save_rejects_metadata_that_contradicts_the_model(tmp_path):
    with pytest.raises(ValueError, match="disagrees"):
        save_model(build_sam("vit_t"), tmp_path / "m.pt", metadata={"model_type": "vit_b"})
    with pytest.raises(ValueError, match="JSON"):
        save_model(build_sam("vit_t"), tmp_path / "m.pt", metadata={"bad": object()})


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
    model = build_sam(COMPACT)
    path = tmp_path / "with_pixel_stats.pt"
    torch.save({**compact_state, "pixel_mean": model.pixel_mean.clone()}, path)
    load_model(path)

    torch.save({**compact_state, "pixel_mean": model.pixel_mean + 1}, path)
    with pytest.raises(CheckpointError, match="pixel_mean"):
        load_model(path)


# --------------------------------------------------------------------------------------
# Refused and broken files
# --------------------------------------------------------------------------------------


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


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="vit_b"):
        load_model("vit_q")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


# --------------------------------------------------------------------------------------
# Wrong architecture
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Architecture detection
# --------------------------------------------------------------------------------------


def test_detects_vit_b(vit_b_state):
    assert detect_architecture(vit_b_state).model_type == "vit_b"


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_detects_vit_l_and_vit_h_from_shapes(model_type):
    assert detect_architecture(meta_state(model_type)).model_type == model_type


def test_detects_vit_t(vit_t_state):
    architecture = detect_architecture(vit_t_state)
    assert architecture.model_type == "vit_t"
    assert architecture.config["encoder"] == "tiny_vit"


def test_detects_compact_custom_vit_config(compact_state):
    architecture = detect_architecture(compact_state)
    assert architecture.model_type == "custom"
    assert architecture.config == COMPACT


def test_detects_all_global_vit():
    config = dict(COMPACT, global_attn_indexes=[0, 1, 2, 3])
    architecture = detect_architecture(meta_state(config))
    # The window size is not visible in the weights, and does not matter: all blocks are global.
    assert architecture.config["global_attn_indexes"] == [0, 1, 2, 3]
    assert build_sam(architecture.config).state_dict().keys() == meta_state(config).keys()


def test_convolutional_stem_is_detected_and_loads_without_metadata(tmp_path):
    config = dict(COMPACT, stem_channels=[8, 16, 32])
    model = randomized(build_sam(config))
    assert detect_architecture(model.state_dict()).config == config
    save_model(model, tmp_path / "stem.pt")
    (tmp_path / "stem.json").unlink()
    loaded = load_model(tmp_path / "stem.pt")
    assert_same_state(loaded.state_dict(), model.state_dict())
    pixels = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert loaded.image_encoder(pixels).shape == (1, 64, 16, 16)
        torch.testing.assert_close(loaded.image_encoder(pixels), model.image_encoder(pixels))


def test_a_stem_that_does_not_make_the_patch_size_is_refused():
    with pytest.raises(ValueError, match="not patch_size=8"):
        build_sam(dict(COMPACT, stem_channels=[8, 16]))


def test_an_empty_stem_is_the_linear_patch_embedding():
    assert detect_architecture(build_sam(dict(COMPACT, stem_channels=[])).state_dict()).config == COMPACT


def test_official_vit_b_key_layout_loads(tmp_path):
    reference = pytest.importorskip("reference")
    state = reference.reference_state_dict("vit_b", seed=0)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)

    model = load_model(path)

    assert model.metadata["model_type"] == "vit_b"
    assert_same_state(model.state_dict(), {k: v for k, v in state.items() if k in model.state_dict()})


def test_official_mobile_sam_key_layout_loads(tmp_path):
    reference = pytest.importorskip("reference")
    state = reference.reference_state_dict("vit_t", seed=0)
    path = tmp_path / "mobile_sam.pt"
    torch.save(state, path)

    model = load_model(path)

    assert model.metadata["model_type"] == "vit_t"
    ours = model.state_dict()
    for key in ours:
        assert torch.equal(ours[key], state[key]), key


def test_sidecar_metadata_decides_the_architecture(tmp_path, compact_state):
    path = tmp_path / "model.pt"
    torch.save(compact_state, path)
    (tmp_path / "model.pt.json").write_text(json.dumps({"model_type": "vit_t", "note": "wrong"}))

    with pytest.raises(CheckpointError, match=r"model\.pt\.json"):
        load_model(path)

    sidecar = {"model_type": "custom", "config": COMPACT, "note": "hi"}
    (tmp_path / "model.pt.json").write_text(json.dumps(sidecar))
    assert load_model(path).metadata["note"] == "hi"


def test_invalid_sidecar_json_raises(tmp_path, compact_state):
    path = tmp_path / "model.pt"
    torch.save(compact_state, path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.json.*not valid JSON"):
        load_model(path)


# --------------------------------------------------------------------------------------
# Registry, cache folder, download
# --------------------------------------------------------------------------------------


def test_registry_entries_are_complete():
    for name, spec in registry.MODELS.items():
        assert spec.name == name
        if spec.bundled:
            continue
        assert spec.url.startswith("https://")
        assert spec.url.rsplit("/", 1)[-1] == spec.filename
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    assert {"default", "vit_b", "vit_l", "vit_h", "vit_t"} <= set(registry.MODELS)


def test_cache_dir_follows_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(registry.CACHE_ENV_VAR)
    assert cache_dir() == Path(pooch.os_cache("napari-sam"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base_url)."""
    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV_VAR, str(folder))
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


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def test_default_model_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match=r"bundled model 'default'.*default\.pt"):
        load_model("default")


def test_default_model_loads_with_its_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "weights")
    model = randomized(build_sam(COMPACT))
    save_model(model, tmp_path / "weights" / "default.pt", metadata={"description": "test default"})

    loaded = load_model("default")

    assert loaded.metadata["name"] == "default"
    assert loaded.metadata["description"] == "test default"
    assert loaded.metadata["config"] == COMPACT
    assert_same_state(loaded.state_dict(), model.state_dict())


# --------------------------------------------------------------------------------------
# Device selection
# --------------------------------------------------------------------------------------


def test_explicit_device_beats_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda")
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_environment_beats_automatic_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert select_device() == torch.device("cpu")


def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV_VAR, "auto")
    assert select_device() == torch.device("cpu")


def test_unavailable_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device argument.*'cuda'"):
        select_device("cuda")
    with pytest.raises(ValueError, match="mps"):
        select_device("mps")
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda:0")
    with pytest.raises(ValueError, match=DEVICE_ENV_VAR):
        select_device()


def test_unknown_device_string_is_a_clear_error():
    with pytest.raises(ValueError, match="not a torch device"):
        select_device("gpu please")


def test_load_model_validates_the_device_first(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="cuda"):
        load_model(tmp_path / "never_read.pt", device="cuda")
