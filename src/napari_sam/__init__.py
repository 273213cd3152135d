"""napari-sam: Segment Anything for scientific and microscopy images.

Headless use::

    from napari_sam import load_model, Predictor
    predictor = Predictor(load_model("default"))
    predictor.set_image(plane)
    candidates = predictor.predict(points=[(row, col)])
"""

__version__ = "0.1.0"

from .predictor import Candidates, Embedding, Predictor  # noqa: E402

__all__ = ["Candidates", "Embedding", "Predictor", "__version__", "load_model"]


def __getattr__(name):
    # load_model pulls in pooch; import it on first use so `import napari_sam` stays light.
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
