"""How much an object stands out of its surroundings on a plane: the propagation's image stop rule.

A nucleus fading out at the top of a volume, or a mask that carries on over background
after its object ended, still gets a confident mask from SAM when the previous plane's
mask prompts it (the mask prompt pulls the answer towards the previous shape). The image
says otherwise: the mask no longer differs from the pixels around it. The *contrast* of
a mask is the mean of the plane's pixels inside it minus the mean over a ring ``ring``
pixels wide around it (colour planes: the mean of their channels). Propagation compares
it with the contrast of the object's seed on its own plane, so the rule is free of the
model, of the image's units, and of whether objects are brighter or darker than their
surroundings (measured in docs/benchmarks.md, "Propagation through z and time").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .stack_objects import PlaneMask


def mask_contrast(plane, mask: PlaneMask, ring: int = 3, *, rgb: bool = False) -> float:
    """Mean of ``plane`` inside ``mask`` minus its mean in a ring around it (0.0 when either is empty).

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array-like (numpy, dask, a view)
        Only the window of the mask's box grown by ``ring`` is read.
    mask : PlaneMask
    ring : int
        Width of the ring in pixels (>= 1).
    rgb : bool
        ``plane`` has a trailing channel axis (averaged).
    """
    if not mask.area:
        return 0.0
    ring = max(int(ring), 1)
    height, width = mask.shape
    r0, c0, r1, c1 = mask.box
    window = (max(r0 - ring, 0), max(c0 - ring, 0), min(r1 + ring, height), min(c1 + ring, width))
    pixels = np.asarray(plane[window[0]: window[2], window[1]: window[3]], dtype=np.float64)
    if rgb:
        pixels = pixels.mean(axis=-1)
    inside = mask.window(window)
    around = ndimage.binary_dilation(inside, iterations=ring) & ~inside
    if not around.any():  # the mask fills the plane: nothing to compare with
        return 0.0
    return float(pixels[inside].mean() - pixels[around].mean())


def contrast_ratio(contrast: float, reference: float) -> float | None:
    """``contrast / reference``, or None (no rule) when the reference has no contrast."""
    if not np.isfinite(reference) or reference == 0.0:
        return None
    return contrast / reference
