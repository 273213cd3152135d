"""Segment everything ("AMG"): a grid of point prompts, filtered, de-duplicated, painted.

Works with any :class:`~napari_sam.model.family.ModelFamily` (official SAM included): it
needs only ``prepare`` / ``encode`` / ``decode``.

Per tile (the plane is cut by :func:`~napari_sam.automatic.ais.tile_grid` as for AIS):

1. the points of a regular plane-wide grid (``points_per_side`` per tile side, SAM's
   spacing: the k-th point at ``(k + 0.5) * size / n`` in continuous coordinates) that lie
   in the tile's *core* are decoded in batches, one positive point each, three candidates
   per point;
2. candidates with predicted IoU below ``pred_iou_thresh`` are dropped before upsampling
   (cheap); the rest are upsampled to the window and kept when their stability score (IoU
   of the masks thresholded at ``mask_threshold +- stability_score_offset``) reaches
   ``stability_score_thresh``;
3. a mask touching an edge of the window that is not the plane's border is dropped: the
   object was cut by the window, and the tile whose core holds its other points sees it
   whole (when it reaches at most ``halo`` beyond that core);
4. each mask is cleaned: holes and islands smaller than ``min_area`` pixels are filled /
   removed.

All kept masks (plane coordinates, stored as a box and a cropped bool array) then go
through one mask NMS (greedy by score; a mask is dropped when its IoU with a kept one
exceeds ``nms_iou_thresh``), which removes the same object found from several points or
from two tiles. They are painted largest first, so a small object inside a larger one
stays visible, and numbered 1..n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from ..imaging import DEFAULT_NORMALIZATION, Normalization
from ..inference import transforms
from ..inference.encoding import encode_plane
from ..inference.predictor import stability_scores
from ..inference.tiling import Tile
from ..model.family import ModelFamily
from .ais import Progress, SegmentationCancelled, TileEmbedder, _Pixels, tile_grid

__all__ = [
    "AMG_PRESETS", "SAM_AMG_DEFAULTS", "AmgOptions", "MaskCandidate", "amg_defaults", "generate_masks", "mask_nms", "paint",
    "point_grid", "segment_everything",
]


#: segment-anything's defaults: every model's, unless :data:`AMG_PRESETS` or its sidecar say otherwise.
SAM_AMG_DEFAULTS = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88, stability_score_thresh=0.95,
                        stability_score_offset=1.0, nms_iou_thresh=0.7, min_area=0)

#: Per-model defaults, by ``model.metadata["name"]`` (the sidecar's name for the bundled model).
#: "default": tuned on 3 of BBBC007's 17P1 plates (benchmarks/tune_amg.py; docs/benchmarks.md):
#: its 128-px tiles want a sparser grid (12 points a side: one per ~8 px), its predicted IoUs
#: run lower than SAM's, and its duplicates overlap less, so a stricter NMS removes them.
AMG_PRESETS: dict[str, dict] = {
    "default": dict(points_per_side=12, pred_iou_thresh=0.7, nms_iou_thresh=0.2, min_area=30),
}
# default-broad is the default model fine-tuned further: the default's settings, not SAM's (untuned)
AMG_PRESETS["default-broad"] = AMG_PRESETS["default"]


@dataclass(frozen=True)
class AmgOptions:
    """Settings of :func:`segment_everything`. A field left None takes the model's default
    (:func:`amg_defaults`: its sidecar's ``"amg"`` entry, else :data:`AMG_PRESETS`, else
    segment-anything's :data:`SAM_AMG_DEFAULTS`); :meth:`resolved` fills them in.

    Attributes
    ----------
    points_per_side : int
        Grid points along each side of a tile (32 -> 1024 prompts per full tile).
    points_per_batch : int
        Prompts decoded together (memory: 3 low-res masks each).
    pred_iou_thresh : float
        Keep candidates whose predicted IoU is at least this.
    stability_score_thresh : float
        Keep candidates whose stability score is at least this.
    stability_score_offset : float
        Logit offset of the stability score.
    nms_iou_thresh : float
        Drop a mask whose IoU with a better one is above this.
    min_area : int
        Holes and islands below this many pixels are filled / removed, and masks left
        smaller are dropped (0: no cleaning).
    """

    points_per_side: int | None = None
    points_per_batch: int | None = None
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_score_offset: float | None = None
    nms_iou_thresh: float | None = None
    min_area: int | None = None

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.min_area is not None and self.min_area < 0:
            raise ValueError(f"min_area must be >= 0 pixels, got {self.min_area}")

    def resolved(self, model=None) -> AmgOptions:
        """These options with every None replaced by ``model``'s default (:func:`amg_defaults`)."""
        defaults = amg_defaults(model)
        return AmgOptions(**{name: defaults[name] if value is None else value for name, value in asdict(self).items()})

    def to_dict(self) -> dict:
        return asdict(self)


def amg_defaults(model=None) -> dict:
    """The AMG settings a model runs with by default: segment-anything's, updated by
    :data:`AMG_PRESETS` for the model's name, then by an ``"amg"`` entry of its sidecar metadata."""
    metadata = getattr(model, "metadata", None) or {}
    defaults = dict(SAM_AMG_DEFAULTS)
    defaults.update(AMG_PRESETS.get(metadata.get("name"), {}))
    sidecar = metadata.get("amg")
    if isinstance(sidecar, dict):
        defaults.update({k: v for k, v in sidecar.items() if k in SAM_AMG_DEFAULTS})
    return defaults


@dataclass
class MaskCandidate:
    """One mask on the plane: ``mask`` covers ``box`` = (r0, c0, r1, c1), end-exclusive."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    stability: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def point_grid(shape: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Plane ``(row, col)`` pixel coordinates of the AMG grid, ``(N, 2)`` float.

    Point k of an axis sits at continuous coordinate ``(k + 0.5) * spacing``, i.e. pixel
    coordinate ``(k + 0.5) * spacing - 0.5``, for every k that stays inside the plane.
    """
    axes = []
    for length, step in zip(shape, spacing):
        count = max(1, int(round(length / step)))
        axes.append((np.arange(count) + 0.5) * (length / count) - 0.5)
    rows, cols = np.meshgrid(*axes, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def _in_core(points: np.ndarray, tile: Tile) -> np.ndarray:
    r0, c0, r1, c1 = tile.core
    nearest = np.floor(points + 0.5)
    return (nearest[:, 0] >= r0) & (nearest[:, 0] < r1) & (nearest[:, 1] >= c0) & (nearest[:, 1] < c1)


def _clean(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Fill holes and remove islands smaller than ``min_area`` pixels (8-connected islands,
    4-connected holes, as the complement of an 8-connected mask)."""
    if min_area <= 0 or not mask.any():
        return mask
    holes, count = ndimage.label(~mask)
    if count:
        sizes = np.bincount(holes.ravel())
        # Background touching the crop's border is outside the object, not a hole.
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < min_area
        small[0] = False
        small[border] = False
        mask = mask | small[holes]
    islands, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count > 1:
        sizes = np.bincount(islands.ravel())
        keep = sizes >= min_area
        keep[0] = False
        if not keep.any():  # all small: keep the largest piece, as segment-anything does
            keep[int(np.argmax(sizes[1:])) + 1] = True
        mask = keep[islands]
    return mask


def _crop(mask: np.ndarray, offset: tuple[int, int]) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = (int(r0 + offset[0]), int(c0 + offset[1]), int(r1 + offset[0]), int(c1 + offset[1]))
    return box, mask[r0:r1, c0:c1]


def _touches_inner_edge(box_in_window: tuple[int, int, int, int], tile: Tile) -> bool:
    r0, c0, r1, c1 = box_in_window
    height, width = tile.shape
    w0, v0, w1, v1 = tile.window
    plane_h, plane_w = tile.plane_shape
    return ((r0 == 0 and w0 > 0) or (c0 == 0 and v0 > 0)
            or (r1 == height and w1 < plane_h) or (c1 == width and v1 < plane_w))


@torch.inference_mode()
def generate_masks(
    model: ModelFamily,
    plane: np.ndarray,
    options: AmgOptions = AmgOptions(),
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    conventions: str = "napari_sam",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    embed: TileEmbedder | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[MaskCandidate]:
    """All masks of a plane after filtering, cleaning and NMS, best score first.

    Parameters
    ----------
    model : ModelFamily
    plane : (H, W) or (H, W, C) array
    options : AmgOptions
        None fields take the model's defaults (:meth:`AmgOptions.resolved`).
    tile_size, halo : int, optional
        See :func:`~napari_sam.automatic.ais.tile_grid`.
    conventions : {"napari_sam", "micro_sam"}
        How pixels become uint8 RGB: the project's normaliser, or micro-sam's min-max.
    normalization, embed, progress, cancel
        As :func:`~napari_sam.automatic.ais.decoder_maps`.

    Returns
    -------
    list of MaskCandidate in plane coordinates.
    """
    plane = np.asarray(plane)
    if plane.ndim not in (2, 3):
        raise ValueError(f"plane must be (H, W) or (H, W, C), got shape {plane.shape}")
    options = options.resolved(model)
    grid = tile_grid(model, plane.shape, tile_size, halo)
    pixels = _Pixels(conventions, normalization)
    if embed is None:
        def embed(tile, rgb):
            return encode_plane(model, rgb)
    spacing = tuple(min(length, grid.tile_size) / options.points_per_side for length in grid.shape)
    points = point_grid(grid.shape, spacing)
    candidates: list[MaskCandidate] = []
    for done, tile in enumerate(grid):
        if cancel is not None and cancel():
            raise SegmentationCancelled()
        mine = points[_in_core(points, tile)]
        if len(mine):
            embedding = embed(tile, pixels(plane[tile.slices()]))
            local = transforms.plane_to_window_rc(mine, tile.window)
            candidates += _tile_candidates(model, embedding, local, tile, options)
        if progress is not None:
            progress(done + 1, len(grid))
    return mask_nms(candidates, options.nms_iou_thresh)


def _tile_candidates(model, embedding, points_rc: np.ndarray, tile: Tile, options: AmgOptions) -> list[MaskCandidate]:
    frame = embedding.frame
    threshold = float(getattr(model, "mask_threshold", 0.0))
    offset = options.stability_score_offset
    found = []
    for start in range(0, len(points_rc), options.points_per_batch):
        batch = points_rc[start : start + options.points_per_batch]
        xy = transforms.points_rc_to_model_xy(batch, frame.original_size, frame.image_size, frame.input_size)
        coords = torch.as_tensor(xy, dtype=torch.float32, device=model.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=model.device)
        low_res, iou = model.decode(embedding.features, coords, labels, multimask=True)
        low_res, iou = low_res.flatten(0, 1), iou.flatten()
        keep = iou >= options.pred_iou_thresh
        if not bool(keep.any()):
            continue
        logits = transforms.upscale_logits(low_res[keep][None], frame.input_size, frame.original_size,
                                           frame.image_size)[0]
        stability = stability_scores(logits, threshold, offset)
        masks = (logits > threshold).cpu().numpy()
        for mask, score, stable in zip(masks, iou[keep].tolist(), stability.tolist()):
            if stable < options.stability_score_thresh:
                continue
            cropped = _crop(mask, (0, 0))
            if cropped is None or _touches_inner_edge(cropped[0], tile):
                continue
            (r0, c0, r1, c1), _ = cropped
            # Clean with a margin of background so islands and holes are judged in context.
            cleaned = _clean(mask[r0:r1, c0:c1], options.min_area)
            cropped = _crop(cleaned, (tile.offset[0] + r0, tile.offset[1] + c0))
            if cropped is None or (options.min_area and cropped[1].sum() < options.min_area):
                continue
            found.append(MaskCandidate(cropped[0], cropped[1], float(score), float(stable)))
    return found


def _overlap(a: MaskCandidate, b: MaskCandidate) -> int:
    r0, c0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    r1, c1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if r0 >= r1 or c0 >= c1:
        return 0
    sa = a.mask[r0 - a.box[0] : r1 - a.box[0], c0 - a.box[1] : c1 - a.box[1]]
    sb = b.mask[r0 - b.box[0] : r1 - b.box[0], c0 - b.box[1] : c1 - b.box[1]]
    return int(np.count_nonzero(sa & sb))


def mask_nms(candidates: list[MaskCandidate], iou_threshold: float) -> list[MaskCandidate]:
    """Greedy non-maximum suppression on mask IoU: best score first (ties: larger first);
    a mask is dropped when its IoU with a kept mask exceeds ``iou_threshold``."""
    order = sorted(candidates, key=lambda c: (-c.score, -c.area))
    kept: list[MaskCandidate] = []
    areas: list[int] = []
    for candidate in order:
        area = candidate.area
        duplicate = False
        for other, other_area in zip(kept, areas):
            inter = _overlap(candidate, other)
            if inter and inter / (area + other_area - inter) > iou_threshold:
                duplicate = True
                break
        if not duplicate:
            kept.append(candidate)
            areas.append(area)
    return kept


def paint(candidates: list[MaskCandidate], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels ``(H, W)`` uint32: largest mask first, so smaller ones stay on top;
    objects left without pixels are dropped and the rest numbered 1..n (largest first)."""
    labels = np.zeros(shape, np.uint32)
    ordered = sorted(candidates, key=lambda c: -c.area)
    for index, candidate in enumerate(ordered, start=1):
        r0, c0, r1, c1 = candidate.box
        labels[r0:r1, c0:c1][candidate.mask] = index
    present = np.zeros(len(ordered) + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lookup = np.zeros(len(ordered) + 1, np.uint32)
    lookup[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return lookup[labels]


def segment_everything(model: ModelFamily, plane: np.ndarray, options: AmgOptions = AmgOptions(),
                       **kwargs) -> np.ndarray:
    """Instance labels of a plane from :func:`generate_masks` (keywords as there), painted
    with :func:`paint`: ``(H, W)`` uint32, 0 background."""
    plane = np.asarray(plane)
    return paint(generate_masks(model, plane, options, **kwargs), plane.shape[:2])
