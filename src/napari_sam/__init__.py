"""napari-sam: Segment Anything for scientific and microscopy images.

Headless use::

    from napari_sam import load_model, Predictor
    predictor = Predictor(load_model("default"))
    predictor.set_image(plane)
    candidates = predictor.predict(points=[(row, col)])
"""

from importlib.metadata import PackageNotFoundError, version as _distribution_version

try:
    # The distribution is `napari-samscope` (the PyPI name `napari-sam` is another project's);
    # its version comes from the git tag at build time (setuptools-scm).
    __version__ = _distribution_version("napari-samscope")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

from .inference.predictor import Candidates, Embedding, Predictor  # noqa: E402

from .device import select_device  # noqa: E402
from .checkpoints import load_model, save_model  # noqa: E402

__all__ = ["Candidates", "Embedding", "Predictor", "__version__", "load_model", "save_model", "select_device"]
