"""Predictions that need more than one tile of a :class:`~.tiling.TiledPredictor`.

- :func:`predict_merged`: a prompt no single window holds (a box larger than
  ``tile_size - 2 * halo``, points far apart). Every tile whose core meets the prompt
  decodes the prompt clipped to its window; the logits, brought to plane resolution, are
  blended with the grid's weights (1 in the core, falling to 0 across the halo).
- :func:`predict_everywhere`: text alone, every object of a kind. Every tile decodes the
  text and each tile's core keeps that tile's masks.

See the module docstring of :mod:`.tiling` for why; both take validated plane
:class:`~.prompts.Prompts` and hand each tile ``tile.to_local(prompts)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from . import transforms
from .embeddings import Progress
from .predictor import Candidates
from .prompts import Prompts

if TYPE_CHECKING:
    from .tiling import Tile, TiledPredictor


def predict_merged(tiled: TiledPredictor, tiles: list[Tile], bbox, prompts: Prompts, multimask: bool) -> Candidates:
    """Blend the logits of ``tiles`` for plane ``prompts`` whose bounding box is ``bbox``.

    Tiles that would see only negative points (or nothing) are skipped. Candidates are
    combined rank by rank (each tile's are sorted by predicted IoU), scores weighted by
    the tiles' blending weights; the logits are those of the tile at the prompt's centre
    (its :attr:`Candidates.frame`).
    """
    grid, predictor = tiled.grid, tiled.predictor
    used = [(tile, local) for tile in tiles if (local := tile.to_local(prompts)).has_positive]
    if not used:
        raise ValueError("the prompt has no positive point or box inside the plane")
    region = (min(t.window[0] for t, _ in used), min(t.window[1] for t, _ in used),
              max(t.window[2] for t, _ in used), max(t.window[3] for t, _ in used))
    centre = grid.tile_at((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)

    total = weight_sum = score_sum = None
    tile_weight_sum = 0.0
    central_logits, central_tile = None, None
    for tile, local in used:
        embedding = tiled.embedding(tile)
        predictor.set_embedding(embedding)
        result = predictor.predict(prompts=local, multimask=multimask)
        logits = transforms.upscale_logits(
            torch.from_numpy(result.logits)[None], embedding.input_size, embedding.original_size,
            embedding.image_size,
        )[0].numpy()
        weights = grid.weights(tile)
        if total is None:
            total = np.zeros((len(result), region[2] - region[0], region[3] - region[1]), np.float32)
            weight_sum = np.zeros(total.shape[1:], np.float32)
            score_sum = np.zeros(len(result), np.float64)
        inside = transforms.window_slices(tile.window, region)
        total[(slice(None),) + inside] += logits * weights
        weight_sum[inside] += weights
        # Rank-wise: each tile's candidates are already sorted by predicted IoU.
        score_sum += result.scores * float(weights.sum())
        tile_weight_sum += float(weights.sum())
        if central_tile is None or tile == centre:
            central_logits, central_tile = result.logits, tile

    covered = weight_sum > 0
    blended = np.where(covered, total / np.where(covered, weight_sum, 1.0), -np.inf)
    scores = (score_sum / tile_weight_sum).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    masks = transforms.window_to_plane_masks(blended[order] > predictor.model.mask_threshold, region, grid.shape)
    return Candidates(masks=masks, scores=scores[order], logits=central_logits[order], frame=central_tile)


def predict_everywhere(tiled: TiledPredictor, prompts: Prompts, multimask: bool,
                       progress: Progress | None) -> Candidates:
    """Text alone: every tile decodes the text; each core keeps its own tile's masks.

    Candidates are combined rank by rank, scores weighted by core area; the logits are
    those of the tile at the plane's centre (its :attr:`Candidates.frame`).
    ``progress(done, total)`` counts tiles.
    """
    grid, predictor = tiled.grid, tiled.predictor
    plane = (0, 0) + grid.shape
    centre = grid.tile_at((grid.shape[0] - 1) / 2, (grid.shape[1] - 1) / 2)
    masks = score_sum = central_logits = None
    for done, tile in enumerate(grid.tiles):
        if progress is not None:
            progress(done, len(grid))
        predictor.set_embedding(tiled.embedding(tile))
        result = predictor.predict(prompts=tile.to_local(prompts), multimask=multimask)
        if masks is None:
            masks = np.zeros((len(result),) + grid.shape, dtype=bool)
            score_sum = np.zeros(len(result), np.float64)
        r0, c0, r1, c1 = tile.core
        masks[(slice(None),) + transforms.window_slices(tile.core, plane)] = (
            result.masks[(slice(None),) + transforms.window_slices(tile.core, tile.window)])
        score_sum += result.scores * float((r1 - r0) * (c1 - c0))
        if tile == centre:
            central_logits = result.logits
    if progress is not None:
        progress(len(grid), len(grid))
    scores = (score_sum / float(grid.shape[0] * grid.shape[1])).astype(np.float32)
    return Candidates(masks=masks, scores=scores, logits=central_logits, frame=centre)
