"""Plane access and the one normaliser that turns any 2D plane into the model's RGB input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """How a plane becomes ``(H, W, 3)`` uint8.

    uint8 planes are passed through unchanged (exactly what the reference model sees);
    every other dtype is mapped linearly so that the ``low`` percentile goes to 0 and
    the ``high`` percentile to 255, then clipped. Percentiles ignore NaNs and are taken
    over all channels together, so colours keep their balance.
    """

    low: float = 0.5
    high: float = 99.5

    def key(self) -> str:
        """A short string that identifies this normalisation in cache signatures."""
        return f"pct{self.low:g}-{self.high:g}"


DEFAULT_NORMALIZATION = Normalization()


def to_rgb_uint8(plane: np.ndarray, normalization: Normalization = DEFAULT_NORMALIZATION) -> np.ndarray:
    """Convert a 2D plane to the ``(H, W, 3)`` uint8 RGB image SAM expects.

    Parameters
    ----------
    plane : array, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Grayscale, RGB or RGBA (alpha is dropped). Any real dtype; bool is treated as 0/1.
    normalization : Normalization
        Percentile window for non-uint8 data.

    Returns
    -------
    (H, W, 3) uint8 array.
    """
    plane = np.asarray(plane)
    if plane.ndim == 3 and plane.shape[2] in (1, 3, 4):
        channels = plane[..., :3] if plane.shape[2] >= 3 else plane
    elif plane.ndim == 2:
        channels = plane[..., None]
    else:
        raise ValueError(
            f"image must be 2D grayscale (H, W) or colour (H, W, 3|4), got shape {plane.shape}; "
            "pick a single plane / channel of a stack first"
        )
    if plane.shape[0] < 1 or plane.shape[1] < 1:
        raise ValueError(f"image is empty: shape {plane.shape}")
    if plane.dtype.kind not in "biuf":
        raise ValueError(f"image dtype {plane.dtype} is not numeric")

    if channels.dtype != np.uint8:
        channels = _rescale(channels, normalization)
    if channels.shape[2] == 1:
        channels = np.repeat(channels, 3, axis=2)
    return np.ascontiguousarray(channels)


def _rescale(values: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Percentile window -> uint8, in row blocks so a 10k x 10k plane never needs a float copy."""
    low, high = _window(values, normalization)
    scale = np.float32(255.0 / (high - low))
    out = np.empty(values.shape, np.uint8)
    rows = max(1, 4_000_000 // max(1, values[0].size))
    for start in range(0, values.shape[0], rows):
        block = values[start : start + rows].astype(np.float32)
        if values.dtype.kind == "f":
            np.nan_to_num(block, copy=False, nan=low, posinf=high, neginf=low)
        block -= np.float32(low)
        block *= scale
        block += np.float32(0.5)
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = block
    return out


def _window(values: np.ndarray, normalization: Normalization) -> tuple[float, float]:
    """(low, high) intensities of the percentile window, from at most ~2M samples."""
    step = max(1, int(np.sqrt(values[..., 0].size / 2_000_000)))
    sample = np.asarray(values[::step, ::step], dtype=np.float32).reshape(-1)
    if values.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, [normalization.low, normalization.high]))
    if not high - low > 0:  # constant, or so large that low + 1.0 == low (float32 near 3e38)
        high = low + max(1.0, abs(low) * 1e-6)
    return low, high
