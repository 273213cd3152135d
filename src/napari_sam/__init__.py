"""napari-sam: Segment Anything for scientific and microscopy images.

Headless use::

    from napari_sam import load_model, Predictor
    predictor = Predictor(load_model("default"))
    predictor.set_image(plane)
    candidates = predictor.predict(points=[(row, col)])
"""

__version__ = "0.1.0"

from .inference.predictor import Candidates, Embedding, Predictor  # noqa: E402

from .device import select_device  # noqa: E402
from .models import load_model, save_model  # noqa: E402

__all__ = ["Candidates", "Embedding", "Predictor", "__version__", "load_model", "save_model", "select_device"]
