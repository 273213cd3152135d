"""Planes larger than the model input: a tile grid with halo, and a predictor over it.

Geometry (:class:`TileGrid`)
----------------------------
Along each axis of length ``L`` with tile size ``T`` and halo ``h``:

- ``L <= T``: one tile, the whole axis;
- otherwise the axis is cut into ``n = ceil((L - 2h) / (T - 2h))`` *cores* that partition
  ``[0, L)`` (the interior ``[h, L - h)`` in ``n`` nearly equal parts, the first and last
  core reaching out to the plane's border), and each core gets a *window* of exactly
  ``T`` pixels centred on it and shifted back inside the plane where needed.

So every window is ``T`` long (or ``L``), windows stay inside the plane, cores
partition it, and every core has at least ``h`` pixels of context on each side that is
not the plane's border. A tile is a pair of row and column intervals.

Prompts (:class:`TiledPredictor`)
---------------------------------
Prompt-centred: a prediction uses the single tile whose window contains all the prompt's
points and its box with the widest margin (plane borders count as infinite margin).
The tile whose core contains the prompt's centre is always a candidate, so the margin
is at least ``h``: an object that extends at most ``h`` pixels beyond the prompt lies
entirely inside the tile, and comes out as one mask even when it straddles a core
border. Tiles are on a fixed grid, so their embeddings are cached and reused.

Each tile is read, normalised and hashed on its own, when first needed: nothing of the
plane outside the tiles a prompt needs is read, and a tile's cache key depends only on
its pixels and window. The price is that tiles do not share one intensity window; with
prompt-centred tiles the model sees the object in the context of the tile around it,
which is what it would see in any crop of that size.

Only when no window holds the whole prompt (a box larger than ``T - 2h``, or points far
apart) are several tiles used: every tile whose core meets the prompt's bounding box
decodes the prompt clipped to its window, the logits are brought to plane resolution,
and blended with weights that are 1 inside the core and fall linearly to 0 across the
halo (never at the plane border), so neighbours agree where they overlap and there is
no seam at core borders.

Text alone (``predict(text="nucleus")``: every object of that kind) is the one prompt
that needs the whole plane: every tile decodes the text and each tile's core takes that
tile's mask. A core pixel thus comes from the tile that sees it with at least ``h``
pixels of context, so an object reaching at most ``h`` beyond a core border is whole on
both sides of it; no plane-sized float buffer is needed, only the masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from . import merging, transforms
from .embeddings import EmbeddingStore, Progress, Signature
from .predictor import Candidates, Embedding, Predictor
from .prompts import MaskPrompt, Prompts

__all__ = ["Tile", "TileGrid", "TiledPredictor", "axis_split"]

Box = tuple[int, int, int, int]


def axis_split(length: int, tile_size: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Cut one axis into ``(core_start, core_end, window_start, window_end)`` intervals.

    End-exclusive. See the module docstring for the rules.
    """
    if tile_size < 1 or halo < 0 or tile_size - 2 * halo < 1:
        raise ValueError(f"need tile_size - 2 * halo >= 1, got tile_size={tile_size}, halo={halo}")
    if length < 1:
        raise ValueError(f"axis length must be >= 1, got {length}")
    if length <= tile_size:
        return [(0, length, 0, length)]
    core = tile_size - 2 * halo
    count = math.ceil((length - 2 * halo) / core)
    bounds = [0] + [halo + round(k * (length - 2 * halo) / count) for k in range(1, count)] + [length]
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        window = min(max(start - (tile_size - (end - start)) // 2, 0), length - tile_size)
        parts.append((start, end, window, window + tile_size))
    return parts


@dataclass(frozen=True)
class Tile:
    """One tile of a plane.

    Attributes
    ----------
    index : (i, j) position in the grid.
    window : (r0, c0, r1, c1)
        Plane pixels the encoder sees, end-exclusive.
    core : (r0, c0, r1, c1)
        Pixels this tile owns; the cores of a grid partition the plane.
    plane_shape : (H, W)
        The whole plane.

    A prediction in the tile is a prediction on the plane ``plane[tile.slices()]``:
    :meth:`to_local` brings prompts into it, :meth:`to_plane` brings candidates back.
    """

    index: tuple[int, int]
    window: Box
    core: Box
    plane_shape: tuple[int, int]

    @property
    def offset(self) -> tuple[int, int]:
        """Plane ``(row, col)`` of the window's first pixel: plane = tile + offset."""
        return self.window[0], self.window[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.window[2] - self.window[0], self.window[3] - self.window[1]

    def slices(self) -> tuple[slice, slice]:
        """Index the window out of a plane: ``plane[tile.slices()]``."""
        return slice(self.window[0], self.window[2]), slice(self.window[1], self.window[3])

    def to_local(self, prompts: Prompts) -> Prompts:
        """Plane prompts in this tile's frame: points off the tile dropped, the box clipped
        to it (dropped when it misses the tile), a mask prompt re-sampled into the tile.

        The result may hold no point or box (see ``Prompts.located`` / ``has_positive``);
        it is not validated again.
        """
        shape = self.shape
        points = labels = box = mask = None
        if prompts.points is not None:
            local = transforms.plane_to_window_rc(prompts.points, self.window)
            inside = transforms.inside_plane_rc(local, shape)
            if inside.any():
                points, labels = local[inside], prompts.point_labels[inside]
        if prompts.box is not None:
            local = transforms.plane_to_window_rc(prompts.box, self.window)
            if transforms.box_meets_plane_rc(local, shape):
                box = transforms.clip_to_plane_rc(local, shape)
        if prompts.mask_input is not None:
            plane_shape = prompts.shape or self.plane_shape
            mask = MaskPrompt(prompts.mask_input.logits_in(self.window, plane_shape), None)
        return Prompts(points=points, point_labels=labels, box=box, mask_input=mask, text=prompts.text, shape=shape)

    def to_plane(self, candidates: Candidates) -> Candidates:
        """Candidates predicted in this tile, with masks over the whole plane and this tile
        as the frame of their logits."""
        masks = transforms.window_to_plane_masks(candidates.masks, self.window, self.plane_shape)
        return replace(candidates, masks=masks, frame=self)


class TileGrid:
    """The tiles of an ``(H, W)`` plane for ``tile_size`` and ``halo`` (see module docs)."""

    def __init__(self, shape: tuple[int, int], tile_size: int, halo: int) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile_size = int(tile_size)
        self.halo = int(halo)
        self._rows = axis_split(self.shape[0], self.tile_size, self.halo)
        self._cols = axis_split(self.shape[1], self.tile_size, self.halo)
        self.tiles = [
            Tile((i, j), (rw0, cw0, rw1, cw1), (r0, c0, r1, c1), self.shape)
            for i, (r0, r1, rw0, rw1) in enumerate(self._rows)
            for j, (c0, c1, cw0, cw1) in enumerate(self._cols)
        ]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __repr__(self) -> str:
        return (f"TileGrid({self.shape}, tile_size={self.tile_size}, halo={self.halo}: "
                f"{len(self._rows)}x{len(self._cols)} tiles)")

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self._rows), len(self._cols)

    def tile(self, i: int, j: int) -> Tile:
        return self.tiles[i * len(self._cols) + j]

    def tile_at(self, row: float, col: float) -> Tile:
        """The tile whose core contains plane pixel ``(row, col)`` (rounded to the nearest pixel)."""
        r = min(max(transforms.nearest_pixel(row), 0), self.shape[0] - 1)
        c = min(max(transforms.nearest_pixel(col), 0), self.shape[1] - 1)
        i = next(k for k, part in enumerate(self._rows) if part[0] <= r < part[1])
        j = next(k for k, part in enumerate(self._cols) if part[0] <= c < part[1])
        return self.tile(i, j)

    def margin(self, tile: Tile, bbox: tuple[float, float, float, float]) -> float:
        """Smallest distance (pixels) from ``bbox`` (r0, c0, r1, c1 pixel centres) to an
        edge of the tile's window that is not the plane's border; negative when outside."""
        r0, c0, r1, c1 = bbox
        w0, v0, w1, v1 = tile.window
        height, width = self.shape
        low, high = transforms.plane_extent_rc(self.shape)
        sides = (
            r0 - w0 if w0 > 0 else math.inf if r0 >= low[0] else -1.0,
            c0 - v0 if v0 > 0 else math.inf if c0 >= low[1] else -1.0,
            (w1 - 1) - r1 if w1 < height else math.inf if r1 <= high[0] else -1.0,
            (v1 - 1) - c1 if v1 < width else math.inf if c1 <= high[1] else -1.0,
        )
        return min(sides)

    def choose(self, bbox: tuple[float, float, float, float]) -> Tile | None:
        """The one tile whose window holds ``bbox`` with the widest margin, or None.

        Ties go to the tile whose core contains the bbox centre. The margin is at least
        ``halo`` for any bbox whose centre's tile holds it (always for a single point).
        """
        centre = self.tile_at((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
        best, best_margin = centre, self.margin(centre, bbox)
        for tile in self.tiles:
            margin = self.margin(tile, bbox)
            if margin > best_margin:
                best, best_margin = tile, margin
        # Prompts may reach half a pixel beyond the outermost pixel centres.
        return best if best_margin >= -transforms.PIXEL_RADIUS else None

    def overlapping(self, bbox: tuple[float, float, float, float]) -> list[Tile]:
        """Tiles whose core meets ``bbox`` (pixel centres, rounded outwards)."""
        r0, c0 = transforms.nearest_pixel(bbox[0]), transforms.nearest_pixel(bbox[1])
        r1, c1 = transforms.nearest_pixel(bbox[2]) + 1, transforms.nearest_pixel(bbox[3]) + 1
        return [t for t in self.tiles if t.core[0] < r1 and r0 < t.core[2] and t.core[1] < c1 and c0 < t.core[3]]

    def weights(self, tile: Tile) -> np.ndarray:
        """Blending weights over the tile's window, ``(h, w)`` float32 in (0, 1].

        1 in the core, falling linearly to ~0 at a window edge inside the plane; plane
        borders do not fall off.
        """
        def ramp(start: int, end: int, length: int) -> np.ndarray:
            position = np.arange(start, end, dtype=np.float32)
            low, high = transforms.window_extent(start, end)  # the window's edges
            left = position - low if start > 0 else np.full_like(position, np.inf)
            right = high - position if end < length else np.full_like(position, np.inf)
            return np.clip(np.minimum(left, right) / max(self.halo, 1), 1e-3, 1.0)

        rows = ramp(tile.window[0], tile.window[2], self.shape[0])
        cols = ramp(tile.window[1], tile.window[3], self.shape[1])
        return rows[:, None] * cols[None, :]


def prompt_bbox(prompts: Prompts) -> tuple[float, float, float, float] | None:
    """``(r0, c0, r1, c1)`` around all points and the box (None for a mask_input alone)."""
    corners = []
    if prompts.points is not None:
        corners.append(prompts.points)
    if prompts.box is not None:
        corners.append(prompts.box.reshape(2, 2))
    if not corners:
        return None
    stacked = np.concatenate(corners)
    return (float(stacked[:, 0].min()), float(stacked[:, 1].min()),
            float(stacked[:, 0].max()), float(stacked[:, 1].max()))


class TiledPredictor:
    """Segment planes of any size; large ones tile by tile, embedding only what a prompt needs.

    For planes no larger than ``tile_size`` it is exactly :class:`Predictor` on the whole
    plane (same embedding, same masks, same cache entry). Larger planes are split into a
    :class:`TileGrid`; a tile is read, normalised (on its own intensity percentiles) and
    embedded only when a prompt needs it, so a click on a 10k x 10k plane, even a lazy
    one on disk, touches one tile.

    Parameters
    ----------
    predictor : Predictor
    store : EmbeddingStore, optional
        Cache of the tiles' embeddings, of the predictor's model and normalisation; by
        default a memory-only store that embeds with ``predictor.compute_embedding``.
    tile_size : int, optional
        Side of a tile in plane pixels, default the model's input size (no resizing).
    halo : int, optional
        Context around each core, default ``tile_size // 8``. Objects reaching up to
        ``halo`` pixels beyond a prompt are segmented whole.

    Attributes
    ----------
    grid : TileGrid of the current plane.

    Examples
    --------
    >>> tiled = TiledPredictor(Predictor(load_model("default")), tile_size=1024, halo=128)
    >>> tiled.set_plane(huge_plane)                    # no encoder call yet
    >>> mask = tiled.predict(points=[(5200, 7300)]).best   # embeds one tile, (H, W) bool
    """

    def __init__(self, predictor: Predictor, store: EmbeddingStore | None = None, *,
                 tile_size: int | None = None, halo: int | None = None) -> None:
        if store is None:
            store = EmbeddingStore(predictor.model, predictor.normalization, encode=predictor.compute_embedding)
        if store.model is not predictor.model or store.normalization != predictor.normalization:
            raise ValueError("the store is for another model or normalisation: build it as "
                             "EmbeddingStore(predictor.model, predictor.normalization, ...)")
        self.predictor = predictor
        self.store = store
        self.tile_size = int(tile_size if tile_size is not None else predictor.model.image_size)
        self.halo = int(halo if halo is not None else self.tile_size // 8)
        axis_split(self.tile_size + 1, self.tile_size, self.halo)  # validate now, not at set_plane
        self.grid: TileGrid | None = None
        self._plane = None
        self._signatures: dict[tuple[int, int], Signature] = {}

    # ---- the plane ------------------------------------------------------------------

    def set_plane(self, plane) -> None:
        """Make ``plane`` current: ``(H, W[, C])``, numpy or lazy (dask, zarr, memmap).

        Runs no encoder and reads nothing yet: each tile's pixels are read (and hashed)
        the first time a prompt needs that tile. The plane must not change while it is
        current; call ``set_plane`` again when it does.
        """
        if not hasattr(plane, "shape") or not hasattr(plane, "__getitem__"):
            plane = np.asarray(plane)
        if len(plane.shape) not in (2, 3):
            raise ValueError(f"set_plane needs a 2D plane (H, W) or (H, W, C), got shape {tuple(plane.shape)}")
        self.grid = TileGrid(tuple(plane.shape[:2]), self.tile_size, self.halo)
        self._plane = plane
        self._signatures = {}

    @property
    def shape(self) -> tuple[int, int]:
        self._require_plane()
        return self.grid.shape

    def _require_plane(self) -> None:
        if self.grid is None:
            raise RuntimeError("no plane set: call set_plane(plane) first")

    # ---- embeddings -------------------------------------------------------------------

    def _pixels(self, tile: Tile) -> np.ndarray:
        """The tile's pixels, read now (the whole plane when there is one tile)."""
        if len(self.grid) == 1:
            return np.asarray(self._plane)
        return np.asarray(self._plane[tile.slices()])

    def _signature(self, tile: Tile, pixels: np.ndarray | None = None) -> Signature:
        """The tile's cache key: its own pixels' hash plus its window (remembered per tile).

        A plane of one tile has the key of the whole plane (no tile geometry), the same
        as ``EmbeddingStore.get(plane)``.
        """
        signature = self._signatures.get(tile.index)
        if signature is None:
            pixels = self._pixels(tile) if pixels is None else pixels
            signature = self.store.signature(pixels, tile=None if len(self.grid) == 1 else tile.window)
            self._signatures[tile.index] = signature
        return signature

    def embedding(self, tile: Tile, *, progress: Progress | None = None) -> Embedding:
        """The tile's embedding (cached, else computed). Each tile is normalised on its own."""
        self._require_plane()
        if tile.index in self._signatures:  # known key: a cache hit reads no pixels
            found = self.store.lookup(signature=self._signatures[tile.index])
            if found is not None:
                return found
        pixels = self._pixels(tile)
        return self.store.get(pixels, signature=self._signature(tile, pixels), progress=progress)

    def cached(self, tile: Tile) -> bool:
        """Whether the tile's embedding is available without running the encoder."""
        self._require_plane()
        return self.store.lookup(signature=self._signature(tile)) is not None

    def precompute(self, tiles: Iterable[Tile] | None = None, *, progress: Progress | None = None,
                   keep_in_memory: bool = True) -> int:
        """Embed ``tiles`` (default all) into the store; returns how many ran the encoder.

        ``keep_in_memory=False`` only makes sure valid disk entries exist (for batch
        precomputation; needs a store with a ``cache_dir``): entries already on disk are
        verified and skipped, so an interrupted run resumes where it stopped.
        """
        self._require_plane()
        tiles = list(self.grid.tiles if tiles is None else tiles)
        computed = 0
        for done, tile in enumerate(tiles):
            if progress is not None:
                progress(done, len(tiles))
            if keep_in_memory:
                before = self.store.encoder_calls
                self.embedding(tile)
                computed += self.store.encoder_calls > before
            else:
                pixels = self._pixels(tile)
                computed += self.store.ensure(pixels, signature=self._signature(tile, pixels))
        if progress is not None:
            progress(len(tiles), len(tiles))
        return computed

    # ---- prediction -------------------------------------------------------------------

    def prompts(self, points=None, point_labels=None, box=None, mask_input=None, text: str | None = None) -> Prompts:
        """Validate raw prompts in whole-plane ``(row, col)`` once (``Prompts.build``)."""
        self._require_plane()
        return Prompts.build(self.grid.shape, self.predictor.model.low_res_size,
                             points, point_labels, box, mask_input, text)

    def predict(self, points=None, point_labels=None, box=None, mask_input=None,
                multimask: bool | None = None, text: str | None = None, *,
                prompts: Prompts | None = None, progress: Progress | None = None) -> Candidates:
        """Segment one object (or, for text alone, every object of a kind); same arguments
        and result as :meth:`Predictor.predict`.

        Coordinates are ``(row, col)`` of the whole plane; masks are ``(N, H, W)`` over
        the whole plane. ``Candidates.logits`` are low-res logits of the tile
        ``Candidates.frame``; ``mask_input=candidates.mask_prompt(i)`` refines in that
        tile (re-sampled into another tile when the new prompt needs one). Text with
        points or a box is decoded in the tile(s) the points and box choose; text alone is
        decoded in every tile (each embedded if needed, ``progress(done, total)`` counting
        tiles) and each tile's core keeps its mask. ``prompts``: already validated
        :class:`Prompts` of this plane, instead of the raw arguments.
        """
        if prompts is None:
            prompts = self.prompts(points, point_labels, box, mask_input, text)
        else:
            self._require_plane()
            if any(value is not None for value in (points, point_labels, box, mask_input, text)):
                raise ValueError("give either prompts=Prompts(...) or points / box / mask_input / text, not both")
            if prompts.shape is not None and tuple(prompts.shape) != self.grid.shape:
                raise ValueError(f"prompts were built for a {prompts.shape} plane, the current plane is "
                                 f"{self.grid.shape}")
        if multimask is None:
            multimask = prompts.default_multimask()
        how, tiles, bbox = self._plan(prompts)
        if how == "everywhere":
            return merging.predict_everywhere(self, prompts, multimask, progress)
        if how == "merged":
            return merging.predict_merged(self, tiles, bbox, prompts, multimask)
        return self._predict_in_tile(tiles[0], prompts, multimask, progress)

    def tiles_for(self, points=None, box=None, text: str | None = None, *,
                  prompts: Prompts | None = None) -> list[Tile]:
        """The tiles :meth:`predict` would embed for these points / box / text (or ``prompts``).

        Text alone needs every tile; with points or a box, text changes nothing here.
        """
        if prompts is None:
            prompts = self.prompts(points, None, box, None, text)
        self._require_plane()
        return self._plan(prompts)[1]

    def _plan(self, prompts: Prompts) -> tuple[str, list[Tile], tuple | None]:
        """How to predict ``prompts``: ``("tile", [tile], bbox)`` in one tile, ``("merged",
        tiles, bbox)`` blended over several, or ``("everywhere", all tiles, None)``."""
        if len(self.grid) == 1:
            return "tile", [self.grid.tiles[0]], None
        bbox = prompt_bbox(prompts)
        frame = prompts.mask_input.frame if prompts.mask_input is not None else None
        if frame is not None and frame not in self.grid.tiles:
            frame = None  # a tile of another grid: its logits are re-sampled like a plane's
        if bbox is None:
            if prompts.mask_input is None:  # text alone: the whole plane
                return "everywhere", list(self.grid.tiles), None
            if frame is None:
                raise ValueError("a mask_input alone on a tiled plane needs the tile it came from: "
                                 "pass candidates.mask_prompt(i) of a prediction on this plane")
            return "tile", [frame], None  # refine the previous result in its tile
        if frame is not None and self.grid.margin(frame, bbox) >= 0:
            return "tile", [frame], bbox  # refine where the previous logits came from
        tile = self.grid.choose(bbox)
        if tile is not None:
            return "tile", [tile], bbox
        return "merged", self.grid.overlapping(bbox), bbox

    def mask_prompt(self, mask: np.ndarray, prompts: Prompts) -> MaskPrompt | None:
        """A plane-sized mask ``(H, W)`` (e.g. an existing label) as the mask prompt of
        ``prompts``: low-res logits of the tile :meth:`predict` will use. None when the
        mask is empty or the prompt needs several tiles."""
        self._require_plane()
        how, tiles, _ = self._plan(prompts)
        mask = np.asarray(mask)
        if how != "tile" or not mask.any():
            return None
        model = self.predictor.model
        logits = transforms.mask_to_low_res_logits(mask[tiles[0].slices()], model.image_size, model.low_res_size)
        return MaskPrompt(logits[None], tiles[0])

    def predict_boxes(self, boxes) -> list[Candidates]:
        """Segment one object per box, like :meth:`Predictor.predict_boxes`.

        Parameters
        ----------
        boxes : (N, 4) array-like of (r0, c0, r1, c1) in whole-plane pixels

        Returns
        -------
        list of N Candidates (one mask each, ``(1, H, W)``), in the order of ``boxes``.
        Boxes that one tile holds are decoded in one batch per tile; a larger box takes
        the blended path of :meth:`predict`. Each result's ``frame`` is the tile its box used.
        """
        self._require_plane()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        # The one validation; a bad box is refused before any encoder runs.
        prompts = [self.prompts(box=box) for box in boxes]
        if not prompts:
            return []
        by_tile: dict[Tile, list[int]] = {}
        results: list[Candidates | None] = [None] * len(boxes)
        for i, box_prompts in enumerate(prompts):
            how, tiles, _ = self._plan(box_prompts)
            if how == "tile":
                by_tile.setdefault(tiles[0], []).append(i)
            else:
                results[i] = self.predict(prompts=box_prompts)
        for tile, members in by_tile.items():
            self.predictor.set_embedding(self.embedding(tile))
            local = [tile.to_local(prompts[i]) for i in members]
            for i, result in zip(members, self.predictor.predict_boxes(local)):
                results[i] = tile.to_plane(result)
        return results

    def _predict_in_tile(self, tile: Tile, prompts: Prompts, multimask: bool,
                         progress: Progress | None = None) -> Candidates:
        local = tile.to_local(prompts)
        if not local.located and local.text is None:  # cannot happen: the tile holds the prompt
            raise ValueError(f"the prompt is not inside tile {tile.index}")
        self.predictor.set_embedding(self.embedding(tile, progress=progress))
        return tile.to_plane(self.predictor.predict(prompts=local, multimask=multimask))
