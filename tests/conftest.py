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


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 (:func:`local_http.serve`), with proxies
    bypassed; yields ``(folder, base_url)``."""
    from local_http import serve

    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve(folder) as base_url:
        yield folder, base_url


@pytest.fixture()
def grey_stack(tmp_path):
    """A TIFF of three grey 60 x 80 uint16 planes (stored as a stack, not as RGB)."""
    import numpy as np
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 3000, (3, 60, 80)).astype(np.uint16),
                     photometric="minisblack")
    return path
