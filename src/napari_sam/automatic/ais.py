"""Automatic instance segmentation with the learned decoder ("AIS"), on planes of any size.

A plane no larger than one tile is embedded whole. A larger plane is cut by
:class:`~napari_sam.inference.tiling.TileGrid` (tile = the model input, halo = 1/8 of it
by default); every tile's window is embedded and decoded, and each tile writes its three
maps into the plane only over its *core*. The cores partition the plane and every core
pixel was seen with at least ``halo`` pixels of context, so the stitched maps are those of
a whole-plane decoder wherever an object reaches at most ``halo`` beyond a core border.
The seeded watershed (:mod:`.watershed`) then runs once on the stitched maps: instances are
found on the plane, not per tile, so an object crossing a core border comes out whole and
once, with no seam and nothing to merge.

Memory: the plane's three float32 maps plus the labels (about 20 bytes per pixel: 80 MB
for 2048 x 2048), and one tile's embedding at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..imaging import DEFAULT_NORMALIZATION, Normalization, to_rgb_uint8
from ..inference.encoding import Embedding, encode_plane
from ..inference.tiling import Tile, TileGrid
from ..model.family import ModelFamily
from .watershed import WatershedOptions, instances_from_maps

__all__ = [
    "SegmentationCancelled", "TileEmbedder", "decoder_maps", "minmax_uint8", "segment_instances",
    "tile_grid",
]

Progress = Callable[[int, int], None]
"""``progress(done, total)`` in tiles."""

TileEmbedder = Callable[[Tile, np.ndarray], Embedding]
"""``embed(tile, rgb_uint8_window) -> Embedding``: how a tile's window becomes an embedding
(default: :func:`~napari_sam.inference.encoding.encode_plane`); pass one that reads a
cache to reuse precomputed embeddings."""


class SegmentationCancelled(Exception):
    """Raised between tiles when the ``cancel`` callable returns True."""


def minmax_uint8(plane: np.ndarray) -> np.ndarray:
    """micro-sam's input scaling: each channel min-max to 0..255, truncated to uint8.

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array of any real dtype
        Grey (and ``C == 1``) is repeated to three channels, two channels get a zero third,
        more than three keep the first three (micro-sam's rules).

    Returns
    -------
    (H, W, 3) uint8: ``uint8(255 * (x - min) / (max - min + 1e-7))`` per channel, computed
    in float32 in that order (so it equals micro-sam's bit for bit).
    """
    plane = np.asarray(plane)
    if plane.ndim == 2:
        plane = plane[..., None]
    if plane.ndim != 3 or plane.shape[0] < 1 or plane.shape[1] < 1:
        raise ValueError(f"plane must be (H, W) or (H, W, C), got shape {plane.shape}")
    if plane.dtype.kind not in "biuf":
        raise ValueError(f"plane dtype {plane.dtype} is not numeric")
    channels = plane.shape[2]
    if channels == 1:
        plane = np.repeat(plane, 3, axis=2)
    elif channels == 2:
        plane = np.concatenate([plane, np.zeros(plane.shape[:2] + (1,), plane.dtype)], axis=2)
    elif channels > 3:
        plane = plane[..., :3]
    values = plane.astype(np.float32)
    values -= values.min(axis=(0, 1))[None, None]
    values /= values.max(axis=(0, 1))[None, None] + np.float32(1e-7)
    values *= np.float32(255)
    return values.astype(np.uint8)


def tile_grid(model: ModelFamily, shape: tuple[int, int], tile_size: int | None = None,
              halo: int | None = None) -> TileGrid:
    """The tiles AIS and AMG use: ``tile_size`` defaults to the model input, ``halo`` to 1/8 of it."""
    size = int(tile_size or model.image_size)
    return TileGrid(tuple(shape[:2]), size, size // 8 if halo is None else int(halo))


@dataclass(frozen=True)
class _Pixels:
    """How a window's pixels become the model's uint8 RGB."""

    conventions: str
    normalization: Normalization

    def __call__(self, window: np.ndarray) -> np.ndarray:
        if self.conventions == "micro_sam":
            return minmax_uint8(window)
        return to_rgb_uint8(window, self.normalization)


@torch.inference_mode()
def decoder_maps(
    model: ModelFamily,
    decoder,
    plane: np.ndarray,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    embed: TileEmbedder | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """The decoder's foreground, centre-distance and boundary-distance maps of a plane.

    Parameters
    ----------
    model : ModelFamily
        The SAM whose image encoder feeds ``decoder``.
    decoder : InstanceDecoder (or any object with ``conventions`` and
        ``predict(features, frame) -> (3, h, w) tensor``)
    plane : (H, W) or (H, W, C) array
    tile_size, halo : int, optional
        See :func:`tile_grid`.
    normalization : Normalization
        For ``decoder.conventions == "napari_sam"``; micro-sam decoders always scale min-max
        (:func:`minmax_uint8`, on each tile's window, as micro-sam's tiling does).
    embed : TileEmbedder, optional
        Default: :func:`encode_plane` on the window's RGB.
    progress : callable(done, total), optional
        Called after each tile (``total`` tiles).
    cancel : callable() -> bool, optional
        Checked before each tile; True raises :class:`SegmentationCancelled`.

    Returns
    -------
    (3, H, W) float32 array: the channels of :data:`~napari_sam.automatic.decoder.MAP_NAMES`.
    """
    plane = np.asarray(plane)
    if plane.ndim not in (2, 3):
        raise ValueError(f"plane must be (H, W) or (H, W, C), got shape {plane.shape}")
    grid = tile_grid(model, plane.shape, tile_size, halo)
    pixels = _Pixels(getattr(decoder, "conventions", "napari_sam"), normalization)
    if embed is None:
        def embed(tile: Tile, rgb: np.ndarray) -> Embedding:
            return encode_plane(model, rgb)
    maps = np.empty((3,) + grid.shape, np.float32)
    for done, tile in enumerate(grid):
        if cancel is not None and cancel():
            raise SegmentationCancelled()
        embedding = embed(tile, pixels(plane[tile.slices()]))
        tile_maps = decoder.predict(embedding.features, embedding.frame)
        r0, c0, r1, c1 = tile.core
        w0, v0 = tile.offset
        maps[:, r0:r1, c0:c1] = tile_maps[:, r0 - w0 : r1 - w0, c0 - v0 : c1 - v0].float().cpu().numpy()
        if progress is not None:
            progress(done + 1, len(grid))
    return maps


def segment_instances(
    model: ModelFamily,
    decoder,
    plane: np.ndarray,
    options: WatershedOptions = WatershedOptions(),
    **kwargs,
) -> np.ndarray:
    """Instance labels of a plane with the learned decoder and the seeded watershed.

    Parameters
    ----------
    model, decoder, plane, tile_size, halo, normalization, embed, progress, cancel
        As :func:`decoder_maps` (keywords after ``options``).
    options : WatershedOptions
        Thresholds, smoothing and minimum size.

    Returns
    -------
    (H, W) uint32 labels, 0 background, objects 1..n.
    """
    maps = decoder_maps(model, decoder, plane, **kwargs)
    return instances_from_maps(maps[0], maps[1], maps[2], options)
