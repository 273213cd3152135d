"""Link per-plane instance labels across planes (z) or frames (t) by overlap.

Each plane (or frame, which may itself be a 3D volume) holds instance labels whose ids
mean nothing from one plane to the next, e.g. automatic segmentation run plane by plane.
Consecutive planes are matched by the optimal assignment
(``scipy.optimize.linear_sum_assignment``) of their instances' IoU; pairs below
``iou_floor`` are not linked. An instance left unmatched starts a new object / track.

With ``divisions``, an instance of plane ``i`` whose area mostly (``division_cover``)
goes into two instances of plane ``i + 1`` of similar size is a division: its track
ends, both daughters start new tracks, and the parent is recorded (napari Tracks
``graph``: ``{daughter: [parent]}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True, eq=False)
class Linked:
    """Linked labels.

    Attributes
    ----------
    labels : (N, ...) uint32
        The input's shape; one id per object / track through the planes.
    tracks : (K, 2 + D) float
        napari Tracks data ``(id, t, *centroid)``: one row per track and plane, ``D``
        the dimensions of a plane (``y, x``, or ``z, y, x`` for volumes over time).
    parents : dict daughter -> parent
    """

    labels: np.ndarray
    tracks: np.ndarray
    parents: dict[int, int]

    @property
    def graph(self) -> dict[int, list[int]]:
        return {int(d): [int(p)] for d, p in self.parents.items()}


def overlap_table(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Instances of two planes and their overlaps.

    Returns
    -------
    ids_a : (P,) ids present in ``a`` (nonzero, sorted)
    ids_b : (Q,)
    intersection : (P, Q) int, pixels in both
    areas : (area_a (P,), area_b (Q,))
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    ids_a, inv_a = np.unique(a, return_inverse=True)
    ids_b, inv_b = np.unique(b, return_inverse=True)
    table = np.zeros((len(ids_a), len(ids_b)), np.int64)
    np.add.at(table, (inv_a, inv_b), 1)
    keep_a, keep_b = ids_a != 0, ids_b != 0
    area_a = table.sum(axis=1)[keep_a]
    area_b = table.sum(axis=0)[keep_b]
    return ids_a[keep_a], ids_b[keep_b], table[np.ix_(keep_a, keep_b)], (area_a, area_b)


def match(a: np.ndarray, b: np.ndarray, iou_floor: float = 0.3) -> list[tuple[int, int, float]]:
    """Optimal one-to-one pairs ``(id in a, id in b, IoU)`` with IoU >= ``iou_floor``."""
    ids_a, ids_b, inter, (area_a, area_b) = overlap_table(a, b)
    if not len(ids_a) or not len(ids_b):
        return []
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(ids_a[r]), int(ids_b[c]), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= iou_floor]


def link(stack, *, iou_floor: float = 0.3, divisions: bool = False, division_cover: float = 0.4,
         division_balance: float = 0.4) -> Linked:
    """Link the instances of consecutive planes of ``stack`` into objects / tracks.

    Parameters
    ----------
    stack : (N, ...) int array-like
        Per-plane instance labels (0 background), planes along the first axis; read one
        plane at a time (``np.asarray(stack[i])``).
    iou_floor : float
        Pairs of instances with a lower IoU are not linked.
    divisions : bool
        Detect divisions (for time-lapses; see the module docstring).
    division_cover : float
        Share of the parent's area that the two daughters together must cover.
    division_balance : float
        The smaller daughter is at least this share of the larger.

    Returns
    -------
    Linked
    """
    count = len(stack)
    first = np.asarray(stack[0])
    labels = np.zeros((count, *first.shape), np.uint32)
    parents: dict[int, int] = {}
    next_id = 1
    previous, previous_ids = None, {}  # previous plane, its id -> track id
    rows = []
    for index in range(count):
        plane = np.asarray(stack[index])
        ids = np.unique(plane)
        ids = ids[ids != 0]
        assigned: dict[int, int] = {}
        if previous is not None:
            pairs = match(previous, plane, iou_floor)
            for a, b, _ in pairs:
                assigned[int(b)] = previous_ids[a]
            if divisions:
                for parent, daughters in _divisions(previous, plane, pairs, division_cover, division_balance):
                    for daughter in daughters:
                        assigned[daughter] = next_id
                        parents[next_id] = previous_ids[parent]
                        next_id += 1
        for value in ids:
            if int(value) not in assigned:
                assigned[int(value)] = next_id
                next_id += 1
        lookup = np.zeros(int(plane.max(initial=0)) + 1, np.uint32)
        for value, track in assigned.items():
            lookup[value] = track
        labels[index] = lookup[plane]
        rows.extend(_centroids(labels[index], index))
        previous, previous_ids = plane, assigned
    dims = first.ndim
    tracks = np.asarray(rows, float).reshape(-1, 2 + dims)
    if len(tracks):
        tracks = tracks[np.lexsort((tracks[:, 1], tracks[:, 0]))]
    return Linked(labels, tracks, parents)


def _divisions(previous, plane, pairs, cover: float, balance: float):
    """``(parent id, (daughter ids))`` for parents split into two similar instances."""
    ids_a, ids_b, inter, (area_a, area_b) = overlap_table(previous, plane)
    found = []
    for row, parent in enumerate(ids_a):
        # Daughters: instances lying mostly (> half) on the parent.
        inside = np.flatnonzero(inter[row] > 0.5 * area_b)
        if len(inside) < 2:
            continue
        best = inside[np.argsort(area_b[inside])[::-1][:2]]
        small, large = sorted(area_b[best])
        if small >= balance * large and inter[row, best].sum() >= cover * area_a[row]:
            found.append((int(parent), tuple(int(ids_b[c]) for c in best)))
    return found


def _centroids(plane_labels: np.ndarray, index: int) -> list[tuple]:
    ids = np.unique(plane_labels)
    ids = ids[ids != 0]
    if not len(ids):
        return []
    coords = np.indices(plane_labels.shape).reshape(plane_labels.ndim, -1)
    flat = plane_labels.ravel()
    counts = np.bincount(flat, minlength=int(ids.max()) + 1)
    centres = [np.bincount(flat, weights=c, minlength=len(counts)) / np.maximum(counts, 1) for c in coords]
    return [(int(value), index, *(float(c[value]) for c in centres)) for value in ids]
