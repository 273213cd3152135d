"""A recording stand-in decoder for the annotation session's tests (no Qt)."""

from __future__ import annotations

import pytest
from disk_predictor import DiskPredictor


@pytest.fixture
def disk_predictor(tiny_model):
    return DiskPredictor(tiny_model)
