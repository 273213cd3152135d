"""Object size for AIS: run the decoder at the scale where objects have the size it knows.

A decoder trained here learnt objects of a typical diameter in model-input pixels (the
generator's nuclei, 12-26 px on a 128-pixel input); on a plane whose objects are much
larger or smaller, it splits, merges or misses them (cells3d's 46-px nuclei at native
resolution: F1 0.30; the same plane shrunk to 0.4x: 0.67). Cellpose asks for a diameter
for the same reason. Here the size is measured, not asked:

1. the plane is segmented as it is (the first pass);
2. the objects' size (:func:`inscribed_diameter` of the decoder's foreground), in
   model-input pixels, is compared with the decoder's preferred size
   (``decoder.object_size``, stored in its file); within a factor :data:`BAND` of it, the first pass is the result;
3. otherwise the plane is resized by ``preferred / measured`` (within :data:`LIMITS`),
   decoded again, and the maps are resized back to the plane, so that the watershed,
   ``min_size`` and the labels stay at the plane's own resolution.

A user who knows the size gives it instead (``object_size=PIXELS``: one pass, no estimate).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BAND", "LIMITS", "inscribed_diameter", "input_scale", "measured_scale", "resize_labels",
    "resize_maps", "resize_plane", "scale_for_size", "upsample_labels",
]

BAND = 1.35
"""Objects within ``preferred / BAND .. preferred * BAND`` keep the first pass."""
LIMITS = (0.25, 2.0)
"""The resize factors allowed: at most 4x smaller, 2x larger (4x the pixels and time)."""


def input_scale(model_input: int, tile_size: int, shape: tuple[int, int]) -> float:
    """Model-input pixels per plane pixel: a window (a tile, or the whole plane when it is
    smaller) has its longest side resized to the model input."""
    return model_input / min(int(tile_size), max(int(shape[0]), int(shape[1])))


def inscribed_diameter(foreground: np.ndarray, min_size: int = 1) -> float | None:
    """Median, over the foreground's pieces of at least ``min_size`` pixels weighted by
    their area (specks do not count), of twice the largest distance to the background
    inside the piece: the diameter of the largest disc it holds. Touching objects merged
    into one piece and objects the watershed cut into fragments both keep their own width, so this measures the objects where the first
    pass's instances would not. None when there is no piece."""
    from scipy import ndimage

    foreground = np.asarray(foreground, bool)
    pieces, count = ndimage.label(foreground)
    if count == 0:
        return None
    index = np.arange(1, count + 1)
    areas = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    index = index[areas >= max(1, int(min_size))]
    if index.size == 0:
        return None
    depth = ndimage.distance_transform_edt(np.pad(foreground, 1))[1:-1, 1:-1]  # the plane's edge is not an outline
    widths = np.asarray(ndimage.maximum(depth, pieces, index), np.float64)
    weights = areas[index - 1].astype(np.float64)
    order = np.argsort(widths)
    middle = np.searchsorted(np.cumsum(weights[order]), 0.5 * weights.sum())
    return 2.0 * float(widths[order][min(middle, len(order) - 1)])


def scale_for_size(diameter: float, preferred: float, pixel_scale: float) -> float:
    """The resize factor that brings objects of ``diameter`` plane pixels to ``preferred``
    model-input pixels (``pixel_scale``: :func:`input_scale`), within :data:`LIMITS`."""
    if not diameter > 0:
        raise ValueError(f"object size must be > 0 pixels, got {diameter!r}")
    return float(np.clip(preferred / (diameter * pixel_scale), *LIMITS))


def measured_scale(foreground: np.ndarray, preferred: float, pixel_scale: float, min_size: int = 1) -> float:
    """1.0 when the objects of a first pass's ``foreground`` (:func:`inscribed_diameter`)
    are near ``preferred`` (or there are none), else :func:`scale_for_size` of their size."""
    diameter = inscribed_diameter(foreground, min_size)
    if diameter is None:
        return 1.0
    size = diameter * pixel_scale
    if preferred / BAND <= size <= preferred * BAND:
        return 1.0
    return scale_for_size(diameter, preferred, pixel_scale)


def resized_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize_plane(plane: np.ndarray, factor: float) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` plane resized by ``factor`` (bilinear, anti-aliased when
    shrinking), as float32."""
    plane = np.asarray(plane)
    grey = plane.ndim == 2
    values = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))
    values = values[None, None] if grey else values.permute(2, 0, 1)[None]
    size = resized_shape(plane.shape[:2], factor)
    out = F.interpolate(values, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    out = out[0, 0] if grey else out[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels resized to ``shape`` (nearest neighbour: ids are not blended)."""
    labels = np.asarray(labels)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])


def upsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels made on a shrunk plane, brought to the larger ``shape`` with smooth
    outlines: each object's indicator is resized bilinearly (``align_corners=False``, as
    :func:`resize_plane`) within its box, and a pixel goes to the object whose resized
    indicator is highest there, if above 0.5. Nearest neighbour would leave steps as wide
    as the factor (2.5 px at 0.4x) on every outline."""
    from scipy import ndimage

    labels = np.asarray(labels)
    h, w = labels.shape
    sy, sx = shape[0] / h, shape[1] / w
    out = np.zeros(shape, labels.dtype)
    best = np.full(shape, 0.5, np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, h)
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, w)
        inside = (labels[r0:r1, c0:c1] == index).astype(np.float32)
        y0, y1 = int(np.floor(r0 * sy)), min(int(np.ceil(r1 * sy)), shape[0])
        x0, x1 = int(np.floor(c0 * sx)), min(int(np.ceil(c1 * sx)), shape[1])
        # source coordinates of the box's pixels, clamped to the crop (its margin is background)
        u = np.clip((np.arange(y0, y1) + 0.5) / sy - 0.5 - r0, 0, r1 - r0 - 1)
        v = np.clip((np.arange(x0, x1) + 0.5) / sx - 0.5 - c0, 0, c1 - c0 - 1)
        i0, j0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        i1, j1 = np.minimum(i0 + 1, r1 - r0 - 1), np.minimum(j0 + 1, c1 - c0 - 1)
        fu, fv = (u - i0).astype(np.float32)[:, None], (v - j0).astype(np.float32)[None, :]
        value = ((1 - fu) * ((1 - fv) * inside[i0][:, j0] + fv * inside[i0][:, j1])
                 + fu * ((1 - fv) * inside[i1][:, j0] + fv * inside[i1][:, j1]))
        window = best[y0:y1, x0:x1]
        wins = value > window
        window[wins] = value[wins]
        out[y0:y1, x0:x1][wins] = index
    return out


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(3, h, w)`` decoder maps resized (bilinear) to ``shape``, float32."""
    values = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    out = F.interpolate(values, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0].numpy())
