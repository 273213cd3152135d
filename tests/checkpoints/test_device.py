"""Device choice: the argument, then $NAPARI_SAM_DEVICE, then CUDA / MPS / CPU."""

from __future__ import annotations

import pytest
import torch

from napari_sam.checkpoints import load_model
from napari_sam.device import DEVICE_ENV_VAR, select_device


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
