"""Objects through a stack: per-plane masks of labelled objects, their tracks, and the edit
that writes them into a labels stack.

The planes are those of one axis of an nD image (z of a volume, t of a time-lapse); a
plane is ``(H, W)``. Masks are kept cropped to their bounding box (:class:`PlaneMask`),
so following a small object through a large stack holds little memory. A
:class:`StackObjects` is what :mod:`~napari_sam.annotate.propagate` returns; it paints
itself into labels with the rules of :mod:`~napari_sam.annotate.commit` (earlier objects
and, with ``preserve``, existing labels keep their pixels) and turns into one
:class:`StackEdit` over the whole stack: one undoable ``Labels.data_setitem`` in napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .commit import CommitPlan, paint


@dataclass(frozen=True, eq=False)
class PlaneMask:
    """A boolean mask on an ``(H, W)`` plane, stored as its bounding-box crop.

    Attributes
    ----------
    offset : (row, col)
        Plane pixel of ``crop[0, 0]``.
    crop : (h, w) bool
    shape : (H, W) of the plane.
    """

    offset: tuple[int, int]
    crop: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> PlaneMask:
        """Crop a plane-sized ``(H, W)`` mask to its bounding box (an empty mask keeps a 0x0 crop)."""
        mask = np.asarray(mask, dtype=bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            return cls((0, 0), np.zeros((0, 0), bool), tuple(mask.shape))
        crop = mask[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].copy()
        return cls((int(rows[0]), int(cols[0])), crop, tuple(mask.shape))

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(r0, c0, r1, c1)`` end-exclusive."""
        return (self.offset[0], self.offset[1], self.offset[0] + self.crop.shape[0],
                self.offset[1] + self.crop.shape[1])

    def full(self) -> np.ndarray:
        """The ``(H, W)`` bool mask."""
        mask = np.zeros(self.shape, bool)
        r0, c0, r1, c1 = self.box
        mask[r0:r1, c0:c1] = self.crop
        return mask

    def window(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The mask read in the plane window ``box`` (r0, c0, r1, c1), zeros outside the crop."""
        out = np.zeros((box[2] - box[0], box[3] - box[1]), bool)
        r0, c0, r1, c1 = self.box
        rr0, cc0 = max(r0, box[0]), max(c0, box[1])
        rr1, cc1 = min(r1, box[2]), min(c1, box[3])
        if rr0 < rr1 and cc0 < cc1:
            out[rr0 - box[0]: rr1 - box[0], cc0 - box[1]: cc1 - box[1]] = \
                self.crop[rr0 - r0: rr1 - r0, cc0 - c0: cc1 - c0]
        return out

    def centroid(self) -> tuple[float, float]:
        """``(row, col)`` of the mask's centre of mass (plane pixels)."""
        rows, cols = np.nonzero(self.crop)
        return float(rows.mean() + self.offset[0]), float(cols.mean() + self.offset[1])


def union_box(*masks: PlaneMask) -> tuple[int, int, int, int]:
    boxes = [m.box for m in masks if m.area]
    if not boxes:
        return (0, 0, 0, 0)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def intersection(a: PlaneMask, b: PlaneMask) -> int:
    """Pixels in both masks."""
    box = (max(a.box[0], b.box[0]), max(a.box[1], b.box[1]), min(a.box[2], b.box[2]), min(a.box[3], b.box[3]))
    if box[0] >= box[2] or box[1] >= box[3]:
        return 0
    return int(np.count_nonzero(a.window(box) & b.window(box)))


def mask_iou(a: PlaneMask, b: PlaneMask) -> float:
    inter = intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union else 1.0


def blend(a: PlaneMask, b: PlaneMask, weight_a: float) -> PlaneMask:
    """Shape interpolation: ``weight_a * sdf(a) + (1 - weight_a) * sdf(b) > 0``.

    ``sdf`` is the signed distance to the mask's edge (positive inside), so the result
    moves from ``a`` (weight 1) to ``b`` (weight 0) smoothly, and where ``a`` and ``b``
    agree it is both of them.
    """
    from scipy import ndimage

    box = union_box(a, b)
    pad = 2
    box = (max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, a.shape[0]), min(box[3] + pad, a.shape[1]))
    if box[0] >= box[2] or box[1] >= box[3]:
        return PlaneMask.from_mask(np.zeros(a.shape, bool))

    def sdf(mask: np.ndarray) -> np.ndarray:
        if not mask.any():
            return np.full(mask.shape, -1e3, np.float32)
        return (ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)).astype(np.float32)

    mixed = weight_a * sdf(a.window(box)) + (1 - weight_a) * sdf(b.window(box)) > 0
    full = np.zeros(a.shape, bool)
    full[box[0]: box[2], box[1]: box[3]] = mixed
    return PlaneMask.from_mask(full)


@dataclass(frozen=True)
class Stop:
    """Why and where an object's propagation ended in one direction (+1 or -1)."""

    label: int
    direction: int
    plane: int  # the first plane NOT segmented
    reason: str


@dataclass(frozen=True)
class Division:
    """One object became two (or more) pieces of similar size on ``plane``."""

    parent: int
    plane: int
    daughters: tuple[int, ...]  # new ids ("daughters" mode), empty when the track stopped


@dataclass(frozen=True, eq=False)
class StackEdit:
    """The pixels of an nD labels array a propagation changes, with old and new values.

    ``indices`` is a tuple of ``(K,)`` index arrays over all of the array's axes, as
    napari's ``Labels.data_setitem(indices, new)`` takes it (one undo step).
    """

    indices: tuple[np.ndarray, ...]
    old: np.ndarray
    new: np.ndarray

    def __len__(self) -> int:
        return len(self.old)

    def apply(self, labels: np.ndarray) -> None:
        labels[self.indices] = self.new

    def undo(self, labels: np.ndarray) -> None:
        labels[self.indices] = self.old


@dataclass(eq=False)
class StackObjects:
    """Labelled objects on the planes of one axis: the result of a propagation.

    Attributes
    ----------
    shape : (N, H, W)
        N planes along the axis, each ``(H, W)``.
    masks : dict label -> dict plane -> PlaneMask
        Every object's mask on every plane it was found on; labels are in writing order.
    scores : dict label -> dict plane -> float
        The model's predicted IoU of each mask (1.0 for given masks).
    stops : list of Stop
    divisions : list of Division
    parents : dict daughter label -> parent label
    """

    shape: tuple[int, int, int]
    masks: dict[int, dict[int, PlaneMask]] = field(default_factory=dict)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)
    stops: list[Stop] = field(default_factory=list)
    divisions: list[Division] = field(default_factory=list)
    parents: dict[int, int] = field(default_factory=dict)

    @property
    def labels_ids(self) -> list[int]:
        return list(self.masks)

    def planes(self, label: int | None = None) -> list[int]:
        """Sorted planes holding ``label`` (any object when None)."""
        if label is not None:
            return sorted(self.masks.get(label, {}))
        return sorted({p for per in self.masks.values() for p in per})

    @property
    def graph(self) -> dict[int, list[int]]:
        """napari Tracks ``graph``: ``{daughter: [parent]}``."""
        return {int(d): [int(p)] for d, p in self.parents.items()}

    def plan(self, plane: int, *, preserve: bool = True) -> CommitPlan:
        """The :class:`CommitPlan` of ``plane``: every object's mask with its id, in order."""
        masks, values = [], []
        for label, per_plane in self.masks.items():
            if plane in per_plane:
                masks.append(per_plane[plane].full())
                values.append(int(label))
        return CommitPlan(tuple(masks), tuple(values), preserve)

    def plane_labels(self, plane: int, current: np.ndarray | None = None, *, preserve: bool = True,
                     dtype=np.uint32) -> np.ndarray:
        """``(H, W)`` labels of ``plane`` painted over ``current`` (default empty)."""
        labels = np.zeros(self.shape[1:], dtype) if current is None else np.array(current, dtype=dtype)
        paint(labels, self.plan(plane, preserve=preserve)).apply(labels)
        return labels

    def labels(self, dtype=np.uint32) -> np.ndarray:
        """``(N, H, W)`` label stack: 0 background, each object its id."""
        out = np.zeros(self.shape, dtype)
        for plane in self.planes():
            out[plane] = self.plane_labels(plane, dtype=dtype)
        return out

    def edit(self, labels, axis: int = 0, position: tuple[int, ...] = (), *, preserve: bool = True) -> StackEdit:
        """The one edit that writes the objects into the nD ``labels`` array (nothing written).

        Parameters
        ----------
        labels : nD array-like (numpy, or a napari Labels layer's data)
            Its last two axes are the planes'; ``axis`` is the propagation axis.
        axis : int
            Axis of ``labels`` along which the planes lie (not one of the last two).
        position : tuple of int
            Indices of the other leading axes, in order, skipping ``axis``.
        preserve : bool
            Never change pixels of labels that are not these objects'.
        """
        ndim = len(labels.shape)
        if not 0 <= axis < ndim - 2:
            raise ValueError(f"axis {axis} is not a leading axis of labels of shape {tuple(labels.shape)}")
        if len(position) != ndim - 3:
            raise ValueError(f"position needs {ndim - 3} indices (the leading axes other than {axis}), "
                             f"got {tuple(position)}")
        parts: list[list[np.ndarray]] = [[] for _ in range(ndim)]
        olds, news = [], []
        for plane in self.planes():
            index = list(position)
            index.insert(axis, plane)
            current = np.asarray(labels[tuple(index)])
            change = paint(current, self.plan(plane, preserve=preserve))
            if not len(change):
                continue
            for dim, value in enumerate(index):
                parts[dim].append(np.full(len(change), value, np.intp))
            parts[ndim - 2].append(change.rows)
            parts[ndim - 1].append(change.cols)
            olds.append(change.old)
            news.append(change.new)
        if not olds:
            empty = np.zeros(0, np.intp)
            return StackEdit(tuple(empty for _ in range(ndim)), np.zeros(0, labels.dtype), np.zeros(0, labels.dtype))
        indices = tuple(np.concatenate(p) for p in parts)
        return StackEdit(indices, np.concatenate(olds), np.concatenate(news).astype(labels.dtype))

    def tracks(self, coordinates: tuple[float, ...] = ()) -> np.ndarray:
        """Centroids as a napari Tracks array ``(K, 4 + len(coordinates))``.

        Rows are ``(id, t, *coordinates, y, x)`` with ``t`` the plane index, sorted by id
        then t; ``coordinates`` (e.g. a fixed z) are inserted before ``y, x``.
        """
        rows = []
        for label, per_plane in sorted(self.masks.items()):
            for plane, mask in sorted(per_plane.items()):
                if mask.area:
                    rows.append((label, plane, *coordinates, *mask.centroid()))
        return np.asarray(rows, dtype=float).reshape(-1, 4 + len(coordinates))
