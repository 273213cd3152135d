"""Instances from the decoder's maps: a seeded watershed on the boundary distances.

The post-processing of micro-sam's instance decoder, written on scipy / scikit-image:

1. smooth the foreground map (Gaussian, ``foreground_smoothing``) and both distance maps
   (``distance_smoothing``); Gaussians are truncated at 3 sigma with mirrored borders
   (``scipy.ndimage`` mode ``"mirror"``), the kernel micro-sam's filters use;
2. foreground = smoothed foreground > ``foreground_threshold``;
3. seeds = connected components (8-connected) of pixels where the centre distance is below
   ``center_distance_threshold`` and the boundary distance below
   ``boundary_distance_threshold``, inside the foreground; numbered in raster order;
4. seeded watershed (4-connected flooding) of the boundary distances inside the foreground;
5. objects smaller than ``min_size`` pixels become background and the rest are renumbered
   1..n in the order of their old ids (only when ``min_size > 0``).

Using both distances keeps narrow touching objects apart (the centre distance alone
merges them) and gives one seed per non-convex object (the boundary distance alone
splits them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

__all__ = ["WatershedOptions", "instances_from_maps", "remove_small", "smooth"]

# A Gaussian kernel reaches 3 sigma to each side (radius int(3 sigma + 0.5)).
_TRUNCATE = 3.0


@dataclass(frozen=True)
class WatershedOptions:
    """Thresholds and sizes of :func:`instances_from_maps`; the defaults are micro-sam's.

    Attributes
    ----------
    center_distance_threshold : float
        Seeds where the (smoothed) centre distance is below this (0..1).
    boundary_distance_threshold : float
        ... and the (smoothed) boundary distance is below this (0..1).
    foreground_threshold : float
        Foreground where the (smoothed) foreground probability is above this (0..1).
    foreground_smoothing : float
        Gaussian sigma (pixels) for the foreground map; 0 for none.
    distance_smoothing : float
        Gaussian sigma (pixels) for both distance maps; 0 for none.
    min_size : int
        Objects with fewer pixels are removed (0 keeps all).
    """

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0

    def __post_init__(self) -> None:
        for name in ("foreground_smoothing", "distance_smoothing"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (pixels), got {getattr(self, name)}")
        if int(self.min_size) != self.min_size or self.min_size < 0:
            raise ValueError(f"min_size must be a whole number of pixels >= 0, got {self.min_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2D map, float32; identity for ``sigma == 0``."""
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode="mirror", truncate=_TRUNCATE)


def instances_from_maps(
    foreground: np.ndarray,
    center_distances: np.ndarray,
    boundary_distances: np.ndarray,
    options: WatershedOptions = WatershedOptions(),
) -> np.ndarray:
    """Instance labels from the decoder's three maps (see the module docstring).

    Parameters
    ----------
    foreground, center_distances, boundary_distances : (H, W) float arrays in 0..1
        The channels of :class:`~napari_sam.automatic.decoder.InstanceDecoder`, at the
        plane's resolution.
    options : WatershedOptions

    Returns
    -------
    (H, W) uint32 labels, 0 background, objects 1..n.
    """
    shapes = {np.shape(foreground), np.shape(center_distances), np.shape(boundary_distances)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the three maps must be 2D and of one shape, got {sorted(shapes)}")
    fg = smooth(foreground, options.foreground_smoothing) > options.foreground_threshold
    center = smooth(center_distances, options.distance_smoothing)
    boundary = smooth(boundary_distances, options.distance_smoothing)
    seeds = (center < options.center_distance_threshold) & (boundary < options.boundary_distance_threshold) & fg
    markers, _ = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    labels = watershed(boundary, markers, mask=fg, connectivity=1).astype(np.uint32, copy=False)
    return remove_small(labels, int(options.min_size))


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects of fewer than ``min_size`` pixels to 0 and renumber the rest 1..n
    (in the order of their ids); ``labels`` unchanged when ``min_size == 0``. In place."""
    if min_size <= 0:
        return labels
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    lookup = np.zeros(len(sizes), labels.dtype)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    labels[...] = lookup[labels]
    return labels
