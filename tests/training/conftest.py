"""Shared setup of the training tests: one torch thread, and the sample helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:  # so tests can `import training_samples` under any import mode
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _one_thread():
    # The CPU is shared; one thread also makes float sums reproducible run to run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
