"""Optional napari reader: open TIFF stacks lazily (one plane read at a time).

Registered in napari.yaml for ``*.tif`` / ``*.tiff``; napari asks it only when the user
picks it (or when it is the preferred reader). The layer's data is the dask array of
:func:`napari_sam.io.open_stack`, so browsing a 100 GB BigTIFF reads only the planes shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import TIFF_SUFFIXES, open_stack


def napari_get_reader(path):
    """Return :func:`read_tiff` for one TIFF path, else None (npe2 ``get_reader`` contract)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, Path)) or not str(path).lower().endswith(TIFF_SUFFIXES):
        return None
    return read_tiff


def read_tiff(path) -> list[tuple]:
    """``[(data, metadata, "image")]`` with ``data`` a lazy dask array."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    stack = open_stack(path)
    name = Path(path).name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    meta: dict = {"name": name, "rgb": stack.rgb, "metadata": {"axes": stack.axes, "path": str(path)}}
    if not stack.rgb:
        # napari would otherwise read several planes to guess contrast limits.
        first = stack.plane(0)
        finite = first[np.isfinite(first)] if first.dtype.kind == "f" else first
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        meta["contrast_limits"] = (low, high if high > low else low + 1)
    return [(stack.data, meta, "image")]
