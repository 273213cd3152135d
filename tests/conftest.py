"""Shared test setup.

The reference SAM packages (used only by parity tests) import torchvision and timm, which
do not import here; the stand-ins must be in sys.modules before any test imports them.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).parent)
if _TESTS not in sys.path:  # so tests can `import reference` under any pytest import mode
    sys.path.insert(0, _TESTS)

import reference_shims  # noqa: E402

reference_shims.import_references()


import pytest  # noqa: E402

import tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model():
    """A random :data:`tiny.TINY` model (seed 0), shared by the tests of one module."""
    return tiny.build_tiny()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """The path of a saved random :data:`tiny.TINY` model (seed 0) with its sidecar JSON."""
    from napari_sam import save_model

    return str(save_model(tiny.build_tiny(), tmp_path_factory.mktemp("model") / "tiny.pt"))
