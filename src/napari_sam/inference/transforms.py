"""Coordinate and image geometry: the one place where coordinates change frame.

Frames
------
plane (``rc``)
    The user's 2D plane in numpy / napari order: a point is ``(row, col)`` and a box is
    ``(r0, c0, r1, c1)``, in pixels, pixel ``i`` centred at ``i``.
model input (``xy``)
    The plane resized so that its longest side equals the model's ``image_size``
    (aspect ratio kept), then zero-padded at the bottom and right to a square. SAM's
    prompt encoder wants ``(x, y)`` in these pixels and adds half a pixel itself.
window / tile (``rc``)
    A rectangle ``(r0, c0, r1, c1)`` of plane pixels (end-exclusive), e.g. a tile's
    window, seen as a plane of its own: ``tile = plane - (r0, c0)``. A prediction in a
    tile is a prediction on that smaller plane.
low-res
    Mask logits of ``low_res_size`` covering the padded square model input of a plane
    (or of a window).

Pixel ``i`` is centred at ``i`` and spans ``[i - 0.5, i + 0.5]`` in every frame: a
coordinate lies on a plane of length ``L`` when it is in ``[-0.5, L - 0.5]``
(:func:`plane_extent_rc`); this rule is written here only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resized_shape(shape: tuple[int, int], target: int) -> tuple[int, int]:
    """Shape ``(h, w)`` of a plane of ``shape`` resized so its longest side is ``target``.

    Rounds as SAM does (``int(x + 0.5)``), so embeddings match the reference; a very thin
    plane keeps at least one pixel on its short side (the reference would make it empty).
    """
    height, width = int(shape[0]), int(shape[1])
    scale = target / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_rgb(image: np.ndarray, target: int) -> np.ndarray:
    """Resize a ``(H, W, 3)`` uint8 image so its longest side is ``target``.

    Uses PIL's bilinear filter, the path the reference predictor takes for uint8 input,
    so the encoder sees identical pixels.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"resize_rgb needs a (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = resized_shape(image.shape[:2], target)
    if (height, width) == image.shape[:2]:
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR)
    return np.array(resized)  # writable: torch.from_numpy warns on read-only arrays


def _scale(
    original_shape: tuple[int, int], target: int, input_size: tuple[int, int] | None = None
) -> tuple[float, float]:
    """Per-axis scale ``(sy, sx)`` from plane pixels to model-input pixels.

    ``input_size``: the resized plane ``(h, w)`` (``InputFrame.input_size``); default the
    aspect-keeping SAM resize. A family that stretches (SAM 2) has ``(target, target)``.
    """
    new_h, new_w = resized_shape(original_shape, target) if input_size is None else input_size
    return new_h / original_shape[0], new_w / original_shape[1]


def points_rc_to_model_xy(
    points_rc: np.ndarray, original_shape: tuple[int, int], target: int, input_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Map ``(..., 2)`` plane ``(row, col)`` points to model-input ``(x, y)`` (``input_size``: see ``_scale``)."""
    points_rc = np.asarray(points_rc, dtype=np.float64)
    sy, sx = _scale(original_shape, target, input_size)
    return np.stack([points_rc[..., 1] * sx, points_rc[..., 0] * sy], axis=-1)


def boxes_rc_to_model_xyxy(
    boxes_rc: np.ndarray, original_shape: tuple[int, int], target: int, input_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Map ``(..., 4)`` plane boxes ``(r0, c0, r1, c1)`` to model-input ``(x0, y0, x1, y1)``."""
    boxes_rc = np.asarray(boxes_rc, dtype=np.float64)
    corners = points_rc_to_model_xy(
        boxes_rc.reshape(*boxes_rc.shape[:-1], 2, 2), original_shape, target, input_size
    )
    return corners.reshape(*boxes_rc.shape[:-1], 4)


def points_model_xy_to_rc(
    points_xy: np.ndarray, original_shape: tuple[int, int], target: int, input_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Inverse of :func:`points_rc_to_model_xy`."""
    points_xy = np.asarray(points_xy, dtype=np.float64)
    sy, sx = _scale(original_shape, target, input_size)
    return np.stack([points_xy[..., 1] / sy, points_xy[..., 0] / sx], axis=-1)


def upscale_logits(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Bring low-res logits ``(B, K, h, w)`` back to the plane: ``(B, K, H, W)``.

    Same sequence as SAM: bilinear to the padded model input, crop the padding,
    bilinear to the original size. Thresholding at 0 gives the masks
    (:func:`upscale_masks` does both at once).

    Only the low-res rows and columns under the crop are upsampled, with the scale
    factor of the full square, so every kept pixel gets the same value as in the full
    upsampling; the second step is skipped when it would not change the size (bilinear
    at scale 1 is the identity).
    """
    return _upscale(low_res, input_size, original_size, image_size, threshold=None)


def upscale_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    threshold: float = 0.0,
) -> torch.Tensor:
    """``upscale_logits(...) > threshold`` as a bool tensor ``(B, K, H, W)``, exactly.

    When the plane is the model input (no second resize) and the factor is an integer,
    the comparison is made as the last interpolation pass writes, so the plane-sized
    float logits are never stored.
    """
    return _upscale(low_res, input_size, original_size, image_size, threshold=threshold)


def _upscale(low_res, input_size, original_size, image_size, threshold: float | None) -> torch.Tensor:
    low_h, low_w = low_res.shape[-2:]
    # Output pixel i of the first step reads low-res pixels floor((i + 0.5) * s - 0.5)
    # and the next one, s = low / image; one more keeps the border clamp out of the crop.
    rows = min(low_h, math.ceil(input_size[0] * low_h / image_size) + 2)
    cols = min(low_w, math.ceil(input_size[1] * low_w / image_size) + 2)
    shape = low_res.shape[:-2]
    crop = low_res[..., :rows, :cols].reshape(-1, rows, cols)
    resize_again = tuple(input_size) != tuple(original_size)
    integer_factors = image_size % low_h == 0 and image_size % low_w == 0 and not crop.requires_grad
    if integer_factors:
        fused = None if resize_again else threshold
        logits = _upsample_by_integers(crop, image_size // low_h, image_size // low_w, fused)[:, None]
        if fused is not None:
            return logits[..., : input_size[0], : input_size[1]].reshape(*shape, *input_size)
    else:  # one channel per image: torch's CPU kernel takes a faster path (no layout copies)
        logits = F.interpolate(
            crop[:, None], scale_factor=(image_size / low_h, image_size / low_w), mode="bilinear", align_corners=False
        )
    logits = logits[..., : input_size[0], : input_size[1]]
    if resize_again:
        logits = F.interpolate(logits, tuple(original_size), mode="bilinear", align_corners=False)
    logits = logits.view(*shape, *logits.shape[-2:])
    return logits if threshold is None else logits > threshold


def _upsample_by_integers(
    x: torch.Tensor, factor_h: int, factor_w: int, threshold: float | None = None
) -> torch.Tensor:
    """``(N, h, w) -> (N, factor_h * h, factor_w * w)``: bilinear, ``align_corners=False``.

    What ``F.interpolate`` computes, up to rounding, about twice as fast on a CPU: with an
    integer factor, output pixel ``factor * i + r`` lies a fixed fraction of the way from
    input pixel ``i + floor(offset_r)`` to the next, so each axis is ``factor``
    interpolations between shifted copies. Clamping at the border equals padding by
    replication. With a ``threshold``, returns ``result > threshold`` (bool), compared
    column phase by column phase.
    """
    count, height, width = x.shape
    padded = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = x.new_empty(count, factor_h * height, width + 2)
    dtype = torch.bool if threshold is not None else x.dtype
    out = torch.empty(count, factor_h * height, factor_w * width, dtype=dtype, device=x.device)
    for phase in range(factor_h):
        start, weight = _phase(phase, factor_h)
        below, above = padded[:, start : start + height], padded[:, start + 1 : start + 1 + height]
        torch.lerp(below, above, weight, out=rows[:, phase::factor_h])
    column = rows.new_empty(count, factor_h * height, width) if threshold is not None else None
    for phase in range(factor_w):
        start, weight = _phase(phase, factor_w)
        left, right = rows[:, :, start : start + width], rows[:, :, start + 1 : start + 1 + width]
        if column is None:
            torch.lerp(left, right, weight, out=out[:, :, phase::factor_w])
        else:
            torch.gt(torch.lerp(left, right, weight, out=column), threshold, out=out[:, :, phase::factor_w])
    return out


def _phase(phase: int, factor: int) -> tuple[int, float]:
    """Where output pixel ``factor * i + phase`` reads the padded input: from index
    ``i + start`` towards the next by ``weight`` (half-pixel centres, as align_corners=False)."""
    source = (phase + 0.5) / factor - 0.5  # relative to input pixel i
    below = math.floor(source)
    return below + 1, source - below  # + 1 for the replicated border row


# The mask prompt passes a conv and a per-pixel LayerNorm, so its scale barely matters;
# it must only be well away from 0 (the decision threshold). SAM's own confident
# logits are of this order.
LOGIT_MAGNITUDE = 10.0


def mask_to_low_res_logits(
    mask: np.ndarray, image_size: int, low_res_size: tuple[int, int], magnitude: float = LOGIT_MAGNITUDE
) -> np.ndarray:
    """Turn a plane-sized binary mask into the low-res logits SAM takes as ``mask_input``.

    The mask goes through the same frames as the image: resized so its longest side is
    ``image_size`` (aspect ratio kept), zero-padded at the bottom and right to a square,
    then reduced to ``low_res_size`` by area averaging. The coverage ``p`` of each low-res
    pixel becomes the logit ``(2 p - 1) * magnitude``: inside +magnitude, outside and in
    the padding -magnitude, soft at the edges.

    Parameters
    ----------
    mask : (H, W) bool or 0/1 array
        The object in plane pixels.
    image_size : int
        The model's input side (``model.image_size``).
    low_res_size : (h, w)
        The model's low-res mask size (``model.low_res_size``).
    magnitude : float
        Logit of a pixel fully inside (outside: minus this).

    Returns
    -------
    (h, w) float32 logits; ``upscale_logits`` of them thresholded at 0
    gives back the mask up to a low-res pixel at the edges.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"mask must be a non-empty 2D (H, W) array, got shape {mask.shape}")
    height, width = resized_shape(mask.shape, image_size)
    values = torch.from_numpy(mask.astype(np.float32, copy=False))[None, None]
    # antialias: planes larger than the model input are averaged, not point-sampled.
    resized = F.interpolate(values, (height, width), mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(resized, (0, image_size - width, 0, image_size - height))
    coverage = F.interpolate(padded, tuple(low_res_size), mode="area")[0, 0].clamp(0.0, 1.0)
    return ((2.0 * coverage - 1.0) * magnitude).numpy().astype(np.float32)


# ---- plane <-> window (tile) ----------------------------------------------------------

# Pixel i spans [i - PIXEL_RADIUS, i + PIXEL_RADIUS] around its centre i.
PIXEL_RADIUS = 0.5

Window = tuple[int, int, int, int]


def plane_extent_rc(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``, each ``(2,)`` float: the ``(row, col)`` range covered by the pixels
    of a plane of ``shape``, i.e. ``-0.5`` and ``shape - 0.5``."""
    high = np.asarray(shape, dtype=np.float64) - PIXEL_RADIUS
    return np.full(2, -PIXEL_RADIUS), high


def inside_plane_rc(points_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(N,)`` bool: whether each ``(row, col)`` of ``points_rc (N, 2)`` lies on the plane's pixels."""
    points_rc = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    low, high = plane_extent_rc(shape)
    return ((points_rc >= low) & (points_rc <= high)).all(axis=1)


def clip_to_plane_rc(coords_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip ``(..., 2)`` points or ``(..., 4)`` boxes ``(r0, c0, r1, c1)`` onto the plane's pixels."""
    coords_rc = np.asarray(coords_rc, dtype=np.float64)
    low, high = plane_extent_rc(shape)
    repeat = coords_rc.shape[-1] // 2
    return np.clip(coords_rc, np.tile(low, repeat), np.tile(high, repeat))


def box_meets_plane_rc(box_rc: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether the box ``(r0, c0, r1, c1)`` shares any area with the plane's pixels."""
    low, high = plane_extent_rc(shape)
    box_rc = np.asarray(box_rc, dtype=np.float64)
    return bool((box_rc[:2] <= high).all() and (box_rc[2:] >= low).all())


def nearest_pixel(coordinate: float) -> int:
    """Index of the pixel whose area holds ``coordinate`` (halves round up)."""
    return int(math.floor(coordinate + PIXEL_RADIUS))


def window_extent(start: int, end: int) -> tuple[float, float]:
    """``(low, high)`` coordinates of the area of pixels ``start .. end - 1`` on one axis."""
    return start - PIXEL_RADIUS, end - PIXEL_RADIUS


def plane_to_window_rc(coords_rc: np.ndarray, window: Window) -> np.ndarray:
    """``(..., 2)`` points or ``(..., 4)`` boxes from plane ``(row, col)`` to the window's frame."""
    coords_rc = np.asarray(coords_rc, dtype=np.float64)
    return coords_rc - np.tile(window[:2], coords_rc.shape[-1] // 2)


def window_to_plane_rc(coords_rc: np.ndarray, window: Window) -> np.ndarray:
    """Inverse of :func:`plane_to_window_rc`."""
    coords_rc = np.asarray(coords_rc, dtype=np.float64)
    return coords_rc + np.tile(window[:2], coords_rc.shape[-1] // 2)


def window_slices(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Index the pixels of ``inner`` out of an array covering ``outer`` (``inner`` inside it)."""
    return (slice(inner[0] - outer[0], inner[2] - outer[0]), slice(inner[1] - outer[1], inner[3] - outer[1]))


def window_to_plane_masks(masks: np.ndarray, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` masks of a window -> ``(N, H, W)`` masks of the plane, False outside it
    (``masks`` themselves when the window is the whole plane)."""
    if tuple(window) == (0, 0) + tuple(shape):
        return masks
    out = np.zeros((len(masks),) + tuple(shape), dtype=masks.dtype)
    out[(slice(None),) + window_slices(window, (0, 0) + tuple(shape))] = masks
    return out


def resample_low_res(logits: np.ndarray, source: Window, target: Window) -> np.ndarray:
    """Low-res logits ``(..., h, w)`` of window ``source`` re-read in window ``target``'s frame.

    Both windows are in one plane's pixels. Low-res pixel ``u`` of a window of longest side
    ``n`` covers plane rows ``r0 + (n / h) * (u + 0.5) - 0.5`` (the model input keeps the
    aspect ratio; the short side's rounding is ignored). Bilinear, edges extended.
    Windows of one shape (one tile grid) differ by a shift only, the same for a family
    that stretches its input (SAM 2); between windows of different shapes, the short
    side of a stretched frame is only approximated.
    """
    if tuple(source) == tuple(target):
        return logits
    from scipy import ndimage

    logits = np.asarray(logits, dtype=np.float32)
    size = logits.shape[-2:]
    lead = (0,) * (logits.ndim - 2)
    source_scale = np.array([max(source[2] - source[0], source[3] - source[1]) / n for n in size])
    target_scale = np.array([max(target[2] - target[0], target[3] - target[1]) / n for n in size])
    shift = (np.asarray(source[:2], np.float64) - np.asarray(target[:2], np.float64)) / source_scale
    if np.array_equal(source_scale, target_scale):
        return ndimage.shift(logits, lead + tuple(shift), order=1, mode="nearest").astype(np.float32)
    zoom = target_scale / source_scale
    # target u' -> plane -> source u = zoom * u' + (0.5 * zoom - 0.5) - shift
    offset = 0.5 * zoom - 0.5 - shift
    return ndimage.affine_transform(
        logits, np.concatenate([np.ones(len(lead)), zoom]), offset=np.concatenate([np.zeros(len(lead)), offset]),
        order=1, mode="nearest",
    ).astype(np.float32)
