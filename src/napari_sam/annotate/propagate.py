"""Propagation: one object (or several) through the planes of an axis, z or t.

From an object's prompts or mask on one plane (a *seed*), the next plane is segmented
with the previous plane's mask as the prompt, in both directions, until the object ends.
Seeds on two or more planes of one object interpolate: the planes between are segmented
from both sides and the two answers reconciled (a blend of their signed distances,
weighted by the distance to each seed); planes neither side reached are the blend of the
nearest masks on each side.

How the previous mask prompts the next plane (:attr:`PropagationSettings.prompt`):

- ``"points+mask"`` (default for volumes): up to three points well inside the mask
  (maxima of its distance transform, spread out) and the mask as SAM's mask prompt; of
  the three candidates, the one closest to the previous mask.
- ``"box"`` (default along time, :meth:`PropagationSettings.for_axis`): the mask's
  bounding box grown by ``box_margin``: a fresh box prompt on every frame, SAM's
  strongest prompt, follows moving nuclei best; in volumes it leaks at the object's ends.
- ``"points"``: the points alone; ``"box+mask"``: the box and the mask prompt;
  ``"mask"``: the mask prompt alone (SAM is weak with a mask alone).

Measured with the default model on half the objects of each set (docs/benchmarks.md,
"Propagation through z and time"): points+mask is best in the nuclei volumes, box along
the HeLa time-lapse (mean per-frame IoU 0.83 vs 0.24 with points+mask).

An object stops (:class:`~napari_sam.annotate.stack_objects.Stop`) when the mask
vanishes (``min_area``), its area jumps (``max_growth`` / ``max_shrink`` times the
previous), it no longer lies on the previous mask (less than ``min_overlap`` of it
does: so it never jumps to a neighbour where it ends), it no longer stands out of its
surroundings (its contrast below ``min_contrast`` of the seed's,
:mod:`~napari_sam.annotate.contrast`: where a nucleus fades out of focus the mask prompt
keeps SAM answering a confident mask), or the predicted IoU is below ``min_score`` (off
by default: the predicted IoU of propagated planes is low along the whole of some
objects and high past the end of others). Only the connected pieces touching the
previous mask are kept. Two objects claiming the same pixels on a plane: the one that
moved more from its previous mask stops.

Along t a *division* (the mask becomes two pieces of similar size) is reported; with
``division="stop"`` the track ends, with ``"daughters"`` each piece continues with a new
id and the parent recorded (``StackObjects.parents`` / ``.graph``).

Embeddings are computed only for the tiles a prompt needs, shared through the predictor's
``EmbeddingStore`` (cache hits reused), and the next planes are embedded ahead in a
background thread while the current one is decoded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..inference.embeddings import EmbeddingStore
from ..inference.predictor import Predictor
from ..inference.tiling import TiledPredictor
from .propagate_video import MemoryPropagation, uses_memory
from .contrast import contrast_ratio, mask_contrast
from .stack_objects import Division, PlaneMask, StackObjects, Stop, blend, intersection, mask_iou

PROMPT_MODES = ("box", "box+mask", "mask", "points", "points+mask")
DIVISION_MODES = ("ignore", "stop", "daughters")
DIRECTIONS = ("both", "forward", "backward")
TIME_LAPSE = {"prompt": "box", "min_contrast": 0.0}  # PropagationSettings.for_axis("t")


class PropagationCancelled(Exception):
    """The caller's ``cancel()`` said stop; nothing was written anywhere."""


def step_counter(total: int, progress: Callable[[int, int], None] | None,
                 cancel: Callable[[], bool] | None) -> Callable[[], None]:
    """Call once per plane: :class:`PropagationCancelled` if ``cancel()``, else ``progress``."""
    done = 0

    def step() -> None:
        nonlocal done
        if cancel is not None and cancel():
            raise PropagationCancelled("propagation cancelled")
        done += 1
        if progress is not None:
            progress(min(done, total), total)

    return step


@dataclass(frozen=True)
class PropagationSettings:
    """Prompting and stopping rules (see the module docstring).

    Attributes
    ----------
    prompt : one of :data:`PROMPT_MODES`
    direction : "both", "forward" (increasing index) or "backward"
        Where to extend beyond the outermost seeds (between seeds: always both sides).
    min_score : float
        Stop below this predicted IoU (0: never).
    max_growth, max_shrink : float
        Stop when the area is more than ``max_growth`` or less than ``max_shrink`` times
        the previous plane's.
    min_overlap : float
        Stop when less than this fraction of the new mask lies on the previous one.
    min_area : int
        Stop when the mask has fewer pixels (the object ended).
    min_contrast : float
        Stop when the mask's contrast (:func:`~napari_sam.annotate.contrast.mask_contrast`)
        is below this share of its seed's on the seed's plane (0: never).
    contrast_ring : int
        Width in pixels of the ring around a mask that its contrast compares with.
    box_margin : float
        The box prompt is the mask's box grown by this fraction of its size per side (>= 1 px).
    division : one of :data:`DIVISION_MODES`
    division_balance : float
        Two pieces are a division when the smaller of the two largest is at least this
        share of the larger (and each is at least ``min_area``).
    max_planes : int or None
        At most this many planes beyond a seed in each direction.
    prefetch : int
        Planes embedded ahead in a background thread (0: none).
    """

    prompt: str = "points+mask"
    direction: str = "both"
    min_score: float = 0.0
    max_growth: float = 1.8
    max_shrink: float = 0.2
    min_overlap: float = 0.5
    min_area: int = 4
    min_contrast: float = 0.65
    contrast_ring: int = 3
    box_margin: float = 0.05
    division: str = "ignore"
    division_balance: float = 0.4
    max_planes: int | None = None
    prefetch: int = 2

    @classmethod
    def for_axis(cls, axis: str = "z", **overrides) -> PropagationSettings:
        """The measured defaults for a z axis (volumes) or a ``"t"`` axis (time-lapses).

        Along time: ``prompt="box"`` and no contrast rule (nuclei change brightness from
        frame to frame, they do not fade out). ``overrides`` that are not None win.
        """
        base = dict(TIME_LAPSE) if str(axis).lower() in ("t", "time") else {}
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        for name, value, allowed in (("prompt", self.prompt, PROMPT_MODES), ("division", self.division, DIVISION_MODES),
                                     ("direction", self.direction, DIRECTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True, eq=False)
class Seed:
    """One object given on one plane: prompts (``points``/``point_labels``/``box``) or a ``mask``.

    ``points`` ``(N, 2)`` and ``box`` ``(r0, c0, r1, c1)`` are plane ``(row, col)`` pixels;
    ``mask`` is an ``(H, W)`` bool mask (e.g. a committed label), used as is.
    """

    label: int
    plane: int
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


class PlaneSource:
    """The 2D planes of one axis of an nD image, read lazily.

    Parameters
    ----------
    data : numpy array, dask array or :class:`~napari_sam.io.LazyStack`
        ``(..., H, W)`` or ``(..., H, W, C)`` with ``rgb``.
    axis : int
        The propagation axis (a leading axis).
    position : tuple of int, optional
        Indices of the other leading axes (skipping ``axis``), default all 0.
    rgb : bool, optional
        The last axis is colour (default: a LazyStack's own ``rgb``, else False).
    """

    def __init__(self, data, axis: int = 0, position: Sequence[int] | None = None, *, rgb: bool | None = None):
        from ..io import LazyStack

        if isinstance(data, LazyStack):
            rgb = data.rgb if rgb is None else rgb
            data = data.data
        self.data = data
        self.rgb = bool(rgb)
        leading = len(data.shape) - (3 if self.rgb else 2)
        if leading < 1:
            raise ValueError(f"an image of shape {tuple(data.shape)} has no axis to propagate along")
        if not 0 <= axis < leading:
            raise ValueError(f"axis {axis} is not a leading axis of an image of shape {tuple(data.shape)} "
                             f"(choose 0..{leading - 1})")
        position = [0] * (leading - 1) if position is None else [int(i) for i in position]
        if len(position) != leading - 1:
            raise ValueError(f"position needs {leading - 1} indices (the leading axes other than {axis})")
        self.axis = axis
        self.position = tuple(position)
        self.plane_shape = tuple(int(n) for n in data.shape[leading: leading + 2])

    def __len__(self) -> int:
        return int(self.data.shape[self.axis])

    def index(self, plane: int) -> tuple[int, ...]:
        index = list(self.position)
        index.insert(self.axis, int(plane))
        return tuple(index)

    def plane(self, plane: int):
        """Plane ``plane`` as a lazy array (dask) or view: only the tiles a prompt needs are read."""
        return self.data[self.index(plane)]


Progress = Callable[[int, int], None]


class _Track:
    """One object's state while sweeping in one direction."""

    def __init__(self, label: int, mask: PlaneMask, plane: int, contrast: float = 0.0):
        self.label, self.mask, self.plane = label, mask, plane
        self.contrast = contrast  # of the seed on its plane: the reference of the contrast rule


class Propagator:
    """Segment objects through the planes of an axis from seeds on one or more planes.

    Parameters
    ----------
    predictor : Predictor
    store : EmbeddingStore, optional
        Shared embedding cache (default: memory only, the predictor's encoder).
    tile_size : int, optional
        As :class:`~napari_sam.inference.tiling.TiledPredictor` (default the model input).
    settings : PropagationSettings, optional

    With a SAM 2.1 model (``model.supports_video``) the run follows the objects with the
    model's memory instead (:mod:`napari_sam.annotate.propagate_video`).

    Examples
    --------
    >>> result = Propagator(Predictor(load_model("default"))).run(
    ...     PlaneSource(volume), [Seed(label=1, plane=30, box=(40, 50, 70, 85))])
    >>> labels = result.labels()              # (Z, H, W) uint32
    """

    def __init__(self, predictor: Predictor, store: EmbeddingStore | None = None, *, tile_size: int | None = None,
                 settings: PropagationSettings | None = None) -> None:
        if store is None:
            store = EmbeddingStore(predictor.model, predictor.normalization, encode=predictor.compute_embedding)
        self.predictor = predictor
        self.store = store
        self.tile_size = tile_size
        self.settings = settings or PropagationSettings()
        self._tiled: dict[int, TiledPredictor] = {}
        self._lock = threading.Lock()

    # ---- planes and embeddings ----------------------------------------------------------

    def _tiled_for(self, source: PlaneSource, plane: int) -> TiledPredictor:
        with self._lock:
            tiled = self._tiled.get(plane)
            if tiled is None:
                tiled = TiledPredictor(self.predictor, self.store, tile_size=self.tile_size)
                tiled.set_plane(source.plane(plane))
                self._tiled[plane] = tiled
            return tiled

    def _prefetch(self, source: PlaneSource, plane: int, boxes: list[tuple]) -> None:
        """Embed the tiles the boxes need on ``plane`` (runs in the prefetch thread)."""
        if not 0 <= plane < len(source):
            return
        tiled = self._tiled_for(source, plane)
        for box in boxes:
            for tile in tiled.tiles_for(box=np.asarray(box, float)):
                tiled.embedding(tile)

    # ---- one plane ----------------------------------------------------------------------

    def _prompt(self, tiled: TiledPredictor, previous: PlaneMask):
        """The prompts (validated) the previous mask makes on the next plane, and multimask."""
        mode = self.settings.prompt
        use_box, use_points, use_mask = mode.startswith("box"), mode.startswith("points"), mode.endswith("mask")
        r0, c0, r1, c1 = previous.box
        height, width = tiled.shape
        grow_r = max(1.0, self.settings.box_margin * (r1 - r0))
        grow_c = max(1.0, self.settings.box_margin * (c1 - c0))
        box = np.array([max(r0 - grow_r, 0), max(c0 - grow_c, 0), min(r1 - 1 + grow_r, height - 1),
                        min(c1 - 1 + grow_c, width - 1)], float)
        points = interior_points(previous) if use_points else None
        labels = None if points is None else np.ones(len(points), np.int64)
        box_arg = box if use_box else None
        # The box (or points) also choose the tile; "mask" alone falls back to the box
        # when the mask cannot be a prompt (several tiles).
        located = tiled.prompts(points, labels, box_arg) if (use_box or use_points) else tiled.prompts(box=box)
        prompts = located
        if use_mask:
            mask_prompt = tiled.mask_prompt(previous.full(), located)
            if mask_prompt is not None:
                prompts = (tiled.prompts(mask_input=mask_prompt) if mode == "mask"
                           else tiled.prompts(points, labels, box_arg, mask_prompt))
        return prompts, mode.startswith("points")

    def _segment(self, tiled: TiledPredictor, previous: PlaneMask) -> tuple[PlaneMask, float]:
        prompts, multimask = self._prompt(tiled, previous)
        candidates = tiled.predict(prompts=prompts, multimask=multimask)
        choice = 0
        if len(candidates) > 1:  # the candidate that continues the previous mask
            ious = [mask_iou(PlaneMask.from_mask(m), previous) for m in candidates.masks]
            choice = int(np.argmax(ious))
        return PlaneMask.from_mask(candidates.masks[choice]), float(candidates.scores[choice])

    def _check(self, new: PlaneMask, previous: PlaneMask, score: float, image=None,
               reference: float = 0.0) -> tuple[str | None, list[PlaneMask]]:
        """``(stop reason or None, pieces)``: pieces are the connected parts touching ``previous``.

        ``image``: ``(plane pixels, rgb)`` for the contrast rule, against ``reference``.
        """
        s = self.settings
        if score < s.min_score:
            return f"predicted IoU {score:.2f} < {s.min_score}", []
        pieces = [p for p in _pieces(new) if intersection(p, previous) > 0]
        area = sum(p.area for p in pieces)
        if area < s.min_area:
            return "the object vanished", []
        ratio = area / max(previous.area, 1)
        if ratio > s.max_growth or ratio < s.max_shrink:
            return f"area changed {ratio:.2f}x", []
        overlap = sum(intersection(p, previous) for p in pieces) / area
        if overlap < s.min_overlap:
            return f"only {overlap:.0%} of the mask lies on the previous one", []
        if image is not None and s.min_contrast > 0:
            kept = pieces[0] if len(pieces) == 1 else PlaneMask.from_mask(np.logical_or.reduce(
                [p.full() for p in pieces]))
            ratio = contrast_ratio(mask_contrast(image[0], kept, s.contrast_ring, rgb=image[1]), reference)
            if ratio is not None and ratio < s.min_contrast:
                return f"contrast {ratio:.2f} of the seed's < {s.min_contrast}", []
        return None, pieces

    # ---- the run ------------------------------------------------------------------------

    def run(self, source: PlaneSource, seeds: Sequence[Seed], *, progress: Progress | None = None,
            cancel: Callable[[], bool] | None = None, next_id: int | None = None) -> StackObjects:
        """Propagate every seeded object; returns the objects (nothing is written).

        Parameters
        ----------
        source : PlaneSource
        seeds : sequence of Seed
            One or more per object (label); an object's seeds on several planes interpolate.
        progress : callable(done, total), optional
            Planes visited so far / an upper bound (ends with ``(total, total)``).
        cancel : callable() -> bool, optional
            Checked before every plane; True raises :class:`PropagationCancelled`.
        next_id : int, optional
            First id for daughters (default one above the largest seed label).

        Raises
        ------
        PropagationCancelled
        ValueError
            A seed off the stack, or prompts invalid on their plane.
        """
        if not seeds:
            raise ValueError("no object to propagate: give at least one seed")
        if uses_memory(self.predictor):  # SAM 2.1: its memory follows the objects (propagate_video.py)
            return MemoryPropagation(self.predictor, self.settings).run(source, seeds, progress=progress,
                                                                        cancel=cancel, next_id=next_id)
        count = len(source)
        result = StackObjects((count, *source.plane_shape))
        by_label: dict[int, dict[int, PlaneMask]] = {}
        self._contrasts: dict[tuple[int, int], float] = {}
        for seed in seeds:
            if not 0 <= seed.plane < count:
                raise ValueError(f"seed of label {seed.label} on plane {seed.plane}: the axis has {count} planes")
            mask, score = self._seed_mask(source, seed)
            self._contrasts[(int(seed.label), int(seed.plane))] = mask_contrast(
                source.plane(seed.plane), mask, self.settings.contrast_ring, rgb=source.rgb)
            by_label.setdefault(int(seed.label), {})[int(seed.plane)] = mask
            result.masks.setdefault(int(seed.label), {})[int(seed.plane)] = mask
            result.scores.setdefault(int(seed.label), {})[int(seed.plane)] = score
        self._next_id = int(next_id if next_id is not None else max(by_label) + 1)
        total = 2 * count
        step = step_counter(total, progress, cancel)

        executor = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if self.settings.prefetch else None
        try:
            forward = self._sweep(source, by_label, +1, result, step, executor)
            backward = self._sweep(source, by_label, -1, result, step, executor)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        self._reconcile(by_label, forward, backward, result)
        if progress is not None:
            progress(total, total)
        return result

    def _seed_mask(self, source: PlaneSource, seed: Seed) -> tuple[PlaneMask, float]:
        if seed.mask is not None:
            mask = np.asarray(seed.mask, bool)
            if mask.shape != source.plane_shape:
                raise ValueError(f"seed mask of label {seed.label} is {mask.shape}, planes are {source.plane_shape}")
            return PlaneMask.from_mask(mask), 1.0
        tiled = self._tiled_for(source, seed.plane)
        candidates = tiled.predict(seed.points, seed.point_labels, seed.box)
        return PlaneMask.from_mask(candidates.best), float(candidates.scores[0])

    def _sweep(self, source, by_label, direction: int, result: StackObjects, step, executor):
        """Propagate every object from its seeds in ``direction``; returns label -> plane -> mask."""
        s = self.settings
        count = len(source)
        found: dict[int, dict[int, PlaneMask]] = {label: {} for label in by_label}
        extend = s.direction == "both" or (s.direction == "forward") == (direction > 0)
        order = sorted({p for planes in by_label.values() for p in planes}, reverse=direction < 0)
        if not order:
            return found
        active: dict[int, _Track] = {}
        limits: dict[int, int] = {}  # last plane (in direction) an object may reach
        plane = order[0]
        submitted: set[int] = set()
        while 0 <= plane < count:
            # Seeds on this plane (re)start their object.
            for label, planes in by_label.items():
                if plane in planes and not planes[plane].area:  # nothing to follow from an empty seed
                    active.pop(label, None)
                    result.stops.append(Stop(label, direction, plane + direction, "the seed's mask is empty"))
                elif plane in planes:
                    active[label] = _Track(label, planes[plane], plane, self._contrasts.get((label, plane), 0.0))
                    ahead = [p for p in planes if (p - plane) * direction > 0]
                    end = (count - 1 if direction > 0 else 0) if extend else plane
                    limit = min(ahead, key=lambda p: abs(p - plane)) - direction if ahead else end
                    if s.max_planes is not None and not ahead:
                        limit = plane + direction * min(s.max_planes, abs(end - plane))
                    limits[label] = limit
            for label in [k for k, t in active.items() if (plane - limits[k]) * direction > 0]:
                del active[label]
            if not active and not any((p - plane) * direction > 0 for p in order):
                break
            if executor is not None and active:
                # Embed the planes ahead (under the objects' current boxes) while this one decodes.
                boxes = [_grown(t.mask.box) for t in active.values()]
                for ahead in range(1, s.prefetch + 1):
                    target = plane + direction * ahead
                    if 0 <= target < count and target not in submitted:
                        submitted.add(target)
                        executor.submit(self._prefetch, source, target, boxes)
            plane += direction
            movers = [t for t in active.values() if t.plane == plane - direction and
                      (plane - limits[t.label]) * direction <= 0 and plane not in by_label.get(t.label, {})]
            if not movers or not 0 <= plane < count:
                continue
            step()
            tiled = self._tiled_for(source, plane)
            image = (source.plane(plane), source.rgb)
            new: dict[int, tuple[list[PlaneMask], float, float]] = {}
            for track in movers:
                mask, score = self._segment(tiled, track.mask)
                reason, pieces = self._check(mask, track.mask, score, image, track.contrast)
                if reason is not None:
                    result.stops.append(Stop(track.label, direction, plane, reason))
                    del active[track.label]
                    continue
                overlap = sum(intersection(p, track.mask) for p in pieces) / max(sum(p.area for p in pieces), 1)
                new[track.label] = (pieces, score, overlap)
            self._resolve_conflicts(new, plane, direction, result, active)
            for label, (pieces, score, _) in new.items():
                if direction > 0 and s.division != "ignore" and self._divides(pieces):
                    daughters = ()
                    self._contrasts[(label, -1)] = active.pop(label).contrast  # the daughters' reference
                    result.stops.append(Stop(label, direction, plane, "divided"))
                    if s.division == "daughters":
                        daughters = self._start_daughters(pieces, label, plane, score, result, found, active, limits,
                                                          limits[label])
                    result.divisions.append(Division(label, plane, daughters))
                    continue
                merged = PlaneMask.from_mask(np.logical_or.reduce([p.full() for p in pieces]))
                found[label][plane] = merged
                result.scores.setdefault(label, {})[plane] = score
                active[label].mask, active[label].plane = merged, plane
        return found

    def _resolve_conflicts(self, new, plane, direction, result, active) -> None:
        """Two objects whose new masks mostly coincide: the one that moved more stops."""
        labels = list(new)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                if a not in new or b not in new:
                    continue
                ma = PlaneMask.from_mask(np.logical_or.reduce([p.full() for p in new[a][0]]))
                mb = PlaneMask.from_mask(np.logical_or.reduce([p.full() for p in new[b][0]]))
                inter = intersection(ma, mb)
                if inter > 0.5 * min(ma.area, mb.area):
                    loser = a if new[a][2] < new[b][2] else b
                    del new[loser]
                    del active[loser]
                    result.stops.append(Stop(loser, direction, plane, "ran into another object"))

    def _divides(self, pieces: list[PlaneMask]) -> bool:
        if len(pieces) < 2:
            return False
        areas = sorted((p.area for p in pieces), reverse=True)
        return areas[1] >= self.settings.min_area and areas[1] >= self.settings.division_balance * areas[0]

    def _start_daughters(self, pieces, parent, plane, score, result, found, active, limits, limit) -> tuple[int, ...]:
        daughters = []
        for piece in sorted(pieces, key=lambda p: p.centroid()):
            if piece.area < self.settings.min_area:
                continue
            label = self._next_id
            self._next_id += 1
            daughters.append(label)
            result.parents[label] = parent
            found[label] = {plane: piece}
            result.scores.setdefault(label, {})[plane] = score
            active[label] = _Track(label, piece, plane, self._contrasts.get((parent, -1), 0.0))
            limits[label] = limit
        return tuple(daughters)

    def _reconcile(self, by_label, forward, backward, result: StackObjects) -> None:
        """Merge both sweeps: beyond the seeds one side, between seeds a blend of both."""
        for label in list(forward) + [k for k in backward if k not in forward]:
            seeds = sorted(by_label.get(label, {}))
            fwd, bwd = forward.get(label, {}), backward.get(label, {})
            out = result.masks.setdefault(label, {})
            if not seeds:  # a daughter: forward only
                out.update(fwd)
                continue
            first, last = seeds[0], seeds[-1]
            out.update({p: m for p, m in bwd.items() if p < first})
            out.update({p: m for p, m in fwd.items() if p > last})
            for a, b in zip(seeds[:-1], seeds[1:]):
                for plane in range(a + 1, b):
                    weight = (b - plane) / (b - a)  # of the side that started at a
                    f, g = fwd.get(plane), bwd.get(plane)
                    if f is not None and g is not None:
                        out[plane] = blend(f, g, weight)
                    elif f is not None or g is not None:
                        out[plane] = f if f is not None else g
                # Planes neither side reached: the shape blend of the nearest masks each side.
                for plane in range(a + 1, b):
                    if plane in out:
                        continue
                    below = max(p for p in range(a, plane) if p in out)
                    above = min(p for p in range(plane + 1, b + 1) if p in out)
                    out[plane] = blend(out[below], out[above], (above - plane) / (above - below))
                    result.scores.setdefault(label, {})[plane] = 0.0
            result.masks[label] = dict(sorted(out.items()))


def _grown(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    return (box[0], box[1], max(box[2] - 1, box[0]), max(box[3] - 1, box[1]))


def _pieces(mask: PlaneMask) -> list[PlaneMask]:
    """The 8-connected pieces of ``mask``."""
    if not mask.area:
        return []
    labelled, count = ndimage.label(mask.crop, structure=np.ones((3, 3)))
    pieces = []
    for value in range(1, count + 1):
        full = np.zeros(mask.shape, bool)
        r0, c0, r1, c1 = mask.box
        full[r0:r1, c0:c1] = labelled == value
        pieces.append(PlaneMask.from_mask(full))
    return pieces


def interior_points(mask: PlaneMask, count: int = 3) -> np.ndarray:
    """Up to ``count`` points ``(row, col)`` well inside ``mask``, spread apart.

    The first is the deepest pixel (distance transform maximum); each next one is, among
    pixels at least half as deep, the farthest from the points chosen so far.
    """
    if not mask.area:
        return np.zeros((0, 2))
    depth = ndimage.distance_transform_edt(np.pad(mask.crop, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= 0.5 * depth.max())
    chosen = [int(np.argmax(depth[rows, cols]))]
    while len(chosen) < min(count, len(rows)):
        distance = np.min([np.hypot(rows - rows[i], cols - cols[i]) for i in chosen], axis=0)
        best = int(np.argmax(distance))
        if distance[best] < 2:
            break
        chosen.append(best)
    return np.stack([rows[chosen] + mask.offset[0], cols[chosen] + mask.offset[1]], axis=1).astype(float)


def propagate(predictor: Predictor, data, seeds: Sequence[Seed], *, axis: int = 0, position=None, store=None,
              tile_size: int | None = None, settings: PropagationSettings | None = None, progress=None,
              cancel=None) -> StackObjects:
    """One call: propagate ``seeds`` through ``data`` along ``axis`` (see :class:`Propagator`)."""
    return Propagator(predictor, store, tile_size=tile_size, settings=settings).run(
        PlaneSource(data, axis, position), seeds, progress=progress, cancel=cancel)
