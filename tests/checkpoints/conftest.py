"""Random state dicts the checkpoint tests read, write and detect (built once per test module)."""

from __future__ import annotations

import pytest
import torch

import tiny
from napari_sam.model import build_sam


@pytest.fixture(scope="module")
def vit_t_state() -> dict[str, torch.Tensor]:
    """A randomized MobileSAM (vit_t) state dict."""
    return dict(tiny.randomized(build_sam("vit_t")).state_dict())


@pytest.fixture(scope="module")
def compact_state() -> dict[str, torch.Tensor]:
    """A randomized :data:`tiny.TINY` state dict: a custom ViT with windowed and global blocks."""
    return dict(tiny.randomized(build_sam(tiny.TINY), seed=1).state_dict())
