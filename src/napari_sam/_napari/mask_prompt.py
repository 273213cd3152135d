"""A binary mask as a SAM mask prompt (low-res logits).

Headless (numpy + torch, no napari): it belongs next to the other geometry in
``napari_sam.transforms`` and lives here until the core takes it over.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import transforms

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
    (h, w) float32 logits; ``transforms.upscale_logits`` of them thresholded at 0
    gives back the mask up to a low-res pixel at the edges.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"mask must be a non-empty 2D (H, W) array, got shape {mask.shape}")
    height, width = transforms.resized_shape(mask.shape, image_size)
    values = torch.from_numpy(mask.astype(np.float32, copy=False))[None, None]
    # antialias: planes larger than the model input are averaged, not point-sampled.
    resized = F.interpolate(values, (height, width), mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(resized, (0, image_size - width, 0, image_size - height))
    coverage = F.interpolate(padded, tuple(low_res_size), mode="area")[0, 0].clamp(0.0, 1.0)
    return ((2.0 * coverage - 1.0) * magnitude).numpy().astype(np.float32)
