"""Model export to formats other tools read.

``export_model(model, "model.zip", format="bioimageio")`` writes a BioImage.IO model
package (:func:`~napari_sam.export.bioimageio.export_bioimageio`); ``napari-sam export``
is the same from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = ("bioimageio",)


def export_model(model: Any, out: str | Path, *, format: str = "bioimageio", **options: Any) -> Path:
    """Write ``model`` (a loaded model, a name or a checkpoint path) to ``out`` in ``format``.

    ``options`` go to the format's writer (for ``"bioimageio"``: name, description,
    authors, license, image, points, point_labels, overwrite). Returns the written path.
    """
    if format == "bioimageio":
        from .bioimageio import export_bioimageio

        return export_bioimageio(model, out, **options)
    raise ValueError(f"unknown export format {format!r}; formats are {list(FORMATS)}")


__all__ = ["FORMATS", "export_model"]
