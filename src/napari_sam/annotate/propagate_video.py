"""Propagation with a SAM 2.1 model: its memory follows the objects through the planes.

:class:`~napari_sam.annotate.propagate.Propagator` hands the run here when the model
``supports_video`` (a SAM 2.1 file with its memory modules): the planes of the axis are
the frames of a video for :class:`~napari_sam.model.sam2.VideoTracker`, every object is
tracked at once, and each plane is encoded once per sweep (not through the embedding
cache: memory attention needs the raw features, and SAM 2 stretches the whole plane to
its input, so ``tile_size`` does not apply).

Seeds become the tracker's prompts: points / a box as clicks, a mask (a committed label)
as a mask prompt; every seed plane of an object is one of its conditioning frames. Sweeps
(as the official video predictor runs them):

- ``direction="both"``: forward from each object's first seed plane to the last plane, then
  backward from it to plane 0; planes between seeds are reached forward, with the memories
  of the seeds on both sides;
- ``"forward"``: the forward sweep only; ``"backward"``: backward from the last seed plane.

An object stops (:class:`~napari_sam.annotate.stack_objects.Stop`) in a direction when its
predicted IoU is below ``min_score``, when SAM 2's object score says the object is absent
or its mask has fewer than ``min_area`` pixels, or after
``max_planes`` planes; it restarts at its next seed. The SAM 1 rules on area, overlap and
contrast (``max_growth``, ``max_shrink``, ``min_overlap``, ``min_contrast``), the prompt
mode and the conflict rule do not apply: the memory, not the previous mask, says where
the object is, and SAM 2's object score says when it has ended. Along t, ``division`` works as in
the SAM 1 path; a daughter is added to the tracker with its piece as a mask prompt.

Memory stays bounded on long stacks: the tracker keeps the features of the current plane
only and, per object, the memories of its seed planes and of the ``2 * 16`` planes around
the current one (:attr:`MemoryPropagation.peak_stored`); planes are read (and normalised)
``prefetch`` planes ahead in a background thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..imaging import to_rgb_uint8
from ..inference.transforms import boxes_rc_to_model_xyxy, points_rc_to_model_xy
from .stack_objects import Division, PlaneMask, StackObjects, Stop


def uses_memory(predictor) -> bool:
    """Whether propagation with ``predictor`` runs on SAM 2's memory (the model supports video)."""
    return bool(getattr(getattr(predictor, "model", None), "supports_video", False))


class _Frames:
    """``frames(i)``: model input of plane ``i``, read and prepared ``ahead`` planes early."""

    def __init__(self, model, source, normalization, ahead: int) -> None:
        self.model, self.source, self.normalization = model, source, normalization
        self.ahead, self.direction = ahead, 1
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sam2-frames") if ahead else None
        self._pending: dict[int, Future] = {}

    def _read(self, plane: int) -> torch.Tensor:
        rgb = to_rgb_uint8(np.asarray(self.source.plane(plane)), self.normalization)
        with torch.inference_mode():
            return self.model.prepare(rgb)[0]

    def __call__(self, plane: int) -> torch.Tensor:
        future = self._pending.pop(plane, None)
        inputs = future.result() if future is not None else self._read(plane)
        if self._pool is not None:
            for step in range(1, self.ahead + 1):
                target = plane + self.direction * step
                if 0 <= target < len(self.source) and target not in self._pending:
                    self._pending[target] = self._pool.submit(self._read, target)
        for stale in [p for p in self._pending if (p - plane) * self.direction <= 0]:
            self._pending.pop(stale).cancel()  # the sweep turned: planes behind are not needed
        return inputs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


class MemoryPropagation:
    """One propagation run on SAM 2's memory (built by ``Propagator.run``).

    Parameters
    ----------
    predictor : Predictor
        Of a SAM 2.1 model with its memory modules; its ``normalization`` is used.
    settings : PropagationSettings

    Attributes
    ----------
    peak_stored : int
        The most frame outputs (memories, pointers, low-res logits) the tracker held at
        once, all objects together: bounded, whatever the number of planes.
    """

    def __init__(self, predictor, settings) -> None:
        from ..model.sam2 import VideoTracker

        if not uses_memory(predictor):
            raise ValueError("memory-based propagation needs a SAM 2.1 model with its memory modules")
        self.predictor, self.settings = predictor, settings
        self.model = predictor.model
        self._tracker_type = VideoTracker
        self.peak_stored = 0

    def run(self, source, seeds: Sequence, *, progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None, next_id: int | None = None) -> StackObjects:
        """As :meth:`Propagator.run <napari_sam.annotate.propagate.Propagator.run>`."""
        from .propagate import step_counter

        if not seeds:
            raise ValueError("no object to propagate: give at least one seed")
        count = len(source)
        self.shape = tuple(source.plane_shape)
        for seed in seeds:
            if not 0 <= seed.plane < count:
                raise ValueError(f"seed of label {seed.label} on plane {seed.plane}: the axis has {count} planes")
            if seed.mask is not None and np.shape(seed.mask) != self.shape:
                raise ValueError(f"seed mask of label {seed.label} is {np.shape(seed.mask)}, planes are {self.shape}")
        self.result = StackObjects((count, *self.shape))
        self.next_id = int(next_id if next_id is not None else max(int(seed.label) for seed in seeds) + 1)
        self.seed_planes: dict[int, list[int]] = {}
        followed = []
        for seed in seeds:
            label, plane = int(seed.label), int(seed.plane)
            if seed.mask is not None and not np.any(seed.mask):  # nothing to follow (as the SAM 1 path)
                self._record(label, plane, PlaneMask.from_mask(np.asarray(seed.mask, bool)), 1.0)
                self.result.stops.extend(Stop(label, d, plane + d, "the seed's mask is empty") for d in (1, -1))
                continue
            self.seed_planes.setdefault(label, []).append(plane)
            followed.append(seed)
        if not followed:
            return self.result
        self.frames = _Frames(self.model, source, self.predictor.normalization, self.settings.prefetch)
        self.tracker = self._tracker_type(self.model, self.frames, num_frames=count)
        sweeps = self._sweeps(count)
        total = max(sum(len(order) for order, _ in sweeps), 1)
        step = step_counter(total, progress, cancel)

        try:
            for seed in sorted(followed, key=lambda s: s.plane):
                self._add_seed(seed)
            for order, starts in sweeps:
                self._sweep(order, starts, step)
        finally:
            self.frames.close()
        for label, planes in self.result.masks.items():
            self.result.masks[label] = dict(sorted(planes.items()))
        if progress is not None:
            progress(total, total)
        return self.result

    # ---- seeds ----------------------------------------------------------------------------

    def _add_seed(self, seed) -> None:
        """The seed as the tracker's prompt; its mask (the tracker's output) goes to the result."""
        label, plane, size = int(seed.label), int(seed.plane), self.model.image_size
        if seed.mask is not None:
            mask = np.asarray(seed.mask, bool)
            self.tracker.add_mask(plane, label, mask)
            output = self.tracker.objects[label].conditioning[plane]
            self._record(label, plane, PlaneMask.from_mask(mask), output.score)
            return
        stretched = (size, size)  # SAM 2 stretches the plane to its square input
        points_xy = labels = box_xyxy = None
        if seed.points is not None and len(seed.points):
            points_xy = points_rc_to_model_xy(np.asarray(seed.points, float), self.shape, size, stretched)
            labels = (np.ones(len(points_xy), np.int64) if seed.point_labels is None
                      else np.asarray(seed.point_labels, np.int64))
        if seed.box is not None:
            box_xyxy = boxes_rc_to_model_xyxy(np.asarray(seed.box, float), self.shape, size, stretched)
        if points_xy is None and box_xyxy is None:
            raise ValueError(f"seed of label {label} on plane {plane} has no points, box or mask")
        logits = self.tracker.add_points(plane, label, points_xy=points_xy, labels=labels, box_xyxy=box_xyxy)
        output = self.tracker.objects[label].conditioning[plane]
        self._record(label, plane, self.plane_mask(logits), output.score)

    def plane_mask(self, logits: torch.Tensor) -> PlaneMask:
        """Low-res logits ``(1, 1, 4h, 4w)`` -> the mask on the plane (one bilinear resize)."""
        full = F.interpolate(logits.float(), self.shape, mode="bilinear", align_corners=False)
        return PlaneMask.from_mask(full[0, 0].gt(0).cpu().numpy())

    def _record(self, label: int, plane: int, mask: PlaneMask, score: float) -> None:
        self.result.masks.setdefault(label, {})[plane] = mask
        self.result.scores.setdefault(label, {})[plane] = float(score)

    # ---- sweeps ---------------------------------------------------------------------------

    def _sweeps(self, count: int) -> list[tuple[range, dict[int, tuple[int, int]]]]:
        """``(planes in order, {label: (start, end)})`` per sweep: forward, then backward."""
        s = self.settings
        sweeps = []
        for direction in (1, -1):
            if s.direction == ("backward" if direction > 0 else "forward"):
                continue
            starts = {}
            for label, planes in self.seed_planes.items():
                start = min(planes) if direction > 0 or s.direction == "both" else max(planes)
                end = count - 1 if direction > 0 else 0
                if s.max_planes is not None:
                    outer = max(planes) if direction > 0 else min(planes)
                    end = outer + direction * min(s.max_planes, abs(end - outer))
                starts[label] = (start, end)
            first = min(a for a, _ in starts.values()) if direction > 0 else max(a for a, _ in starts.values())
            last = max(b for _, b in starts.values()) if direction > 0 else min(b for _, b in starts.values())
            sweeps.append((range(first, last + direction, direction), starts))
        return sweeps

    def _sweep(self, order: range, spans: dict[int, tuple[int, int]], step) -> None:
        direction = order.step
        reverse = direction < 0
        self.frames.direction = direction
        spans = dict(spans)
        stopped: set[int] = set()
        for plane in order:
            for label in list(spans):  # a seed plane restarts a stopped object
                if plane in self.seed_planes.get(label, ()):
                    stopped.discard(label)
            active = [label for label, (start, end) in spans.items() if label not in stopped
                      and (plane - start) * direction >= 0 and (end - plane) * direction >= 0]
            tracked = [label for label in active if plane not in self.tracker.objects[label].conditioning]
            if not tracked:
                continue
            step()
            outputs = self.tracker.track(plane, reverse, tracked)
            self.peak_stored = max(self.peak_stored, self.tracker.stored_frames)
            for label, output in outputs.items():
                mask = self.plane_mask(output.logits)
                reason = self._stop_reason(mask, output)
                if reason is not None:
                    self.result.stops.append(Stop(label, direction, plane, reason))
                    stopped.add(label)
                    continue
                pieces = _pieces(mask) if direction > 0 and self.settings.division != "ignore" else []
                if len(pieces) > 1 and self._divides(pieces):
                    self._divide(label, plane, pieces, output.score, spans, stopped)
                    continue
                if mask.area:  # (an empty mask goes on only with min_area 0)
                    self._record(label, plane, mask, output.score)

    def _stop_reason(self, mask: PlaneMask, output) -> str | None:
        s = self.settings
        if output.score < s.min_score:
            return f"predicted IoU {output.score:.2f} < {s.min_score}"
        if float(output.object_score) <= 0 or mask.area < s.min_area:
            return "the object vanished"
        return None

    def _divides(self, pieces: list[PlaneMask]) -> bool:
        areas = sorted((p.area for p in pieces), reverse=True)
        return areas[1] >= self.settings.min_area and areas[1] >= self.settings.division_balance * areas[0]

    def _divide(self, label: int, plane: int, pieces, score: float, spans, stopped: set[int]) -> None:
        """The track of ``label`` ends on ``plane``; with ``"daughters"`` each piece goes on."""
        self.result.stops.append(Stop(label, 1, plane, "divided"))
        stopped.add(label)
        daughters = []
        if self.settings.division == "daughters":
            for piece in sorted(pieces, key=lambda p: p.centroid()):
                if piece.area < self.settings.min_area:
                    continue
                daughter = self.next_id
                self.next_id += 1
                daughters.append(daughter)
                self.result.parents[daughter] = label
                self.tracker.add_mask(plane, daughter, piece.full())
                self._record(daughter, plane, piece, score)
                spans[daughter] = (plane, spans[label][1])
        self.result.divisions.append(Division(label, plane, tuple(daughters)))


def _pieces(mask: PlaneMask) -> list[PlaneMask]:
    """The 8-connected pieces of ``mask``."""
    labelled, count = ndimage.label(mask.crop, structure=np.ones((3, 3)))
    r0, c0, r1, c1 = mask.box
    pieces = []
    for value in range(1, count + 1):
        full = np.zeros(mask.shape, bool)
        full[r0:r1, c0:c1] = labelled == value
        pieces.append(PlaneMask.from_mask(full))
    return pieces
