"""Writing accepted masks into a labels plane: the plan, and the edit it makes.

:func:`plan_commit` decides *what* is written (which masks, which label ids, whether other
labels are preserved, which label a refinement replaces); :func:`paint` computes, without
writing anything, the pixels that change and their old and new values (a
:class:`PlaneEdit`), which is also what an undo needs. napari writes an edit through its
undoable ``Labels.data_setitem``; numpy arrays through :meth:`PlaneEdit.apply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..inference.objects import split_objects


@dataclass(frozen=True, eq=False)
class CommitPlan:
    """What an accept writes into one labels plane.

    Attributes
    ----------
    masks : tuple of (H, W) bool
        Written in order; a later mask never takes an earlier one's pixels.
    values : tuple of int
        The label id of each mask.
    preserve : bool
        Pixels of other labels are never changed (only background, the written id itself,
        and ``replace`` are written).
    replace : int or None
        The label being refined: its pixels that no mask covers become background.
    """

    masks: tuple[np.ndarray, ...]
    values: tuple[int, ...]
    preserve: bool = True
    replace: int | None = None

    @property
    def description(self) -> str:
        """``"label 4"``, ``"label 4, 5"`` or ``"labels 1-22"`` for messages."""
        values = self.values
        if len(values) > 3:
            return f"labels {values[0]}-{values[-1]}"
        return "label " + ", ".join(map(str, values))


def plan_commit(
    masks: Sequence[np.ndarray],
    *,
    next_id: int,
    selected_id: int = 0,
    use_selected: bool = False,
    refine_label: int | None = None,
    split: bool = False,
    pieces: np.ndarray | None = None,
    preserve: bool = True,
) -> CommitPlan:
    """The plan for accepting ``masks`` (one per object) into a labels plane.

    Parameters
    ----------
    masks : sequence of (H, W) bool
        The shown masks: one, or one per box.
    next_id : int
        The first unused label id (new labels are ``next_id, next_id + 1, ...``).
    selected_id : int
        The labels layer's selected label.
    use_selected : bool
        Write a single mask as ``selected_id`` (when it is not 0) instead of a new id.
    refine_label : int, optional
        The label a single mask refines (its mask was the prompt): the mask replaces it.
    split : bool
        Write a single mask as one new label per object (``split_objects``); ignored
        when refining.
    pieces : (H, W) int, optional
        ``split_objects`` of the single mask, already computed (e.g. in a worker).
    preserve : bool
        Never change pixels of other labels.

    Returns
    -------
    CommitPlan; its ``masks`` are empty when a split found no object.
    """
    masks = [np.asarray(mask, dtype=bool) for mask in masks]
    single = len(masks) == 1
    if single and refine_label is not None:
        return CommitPlan((masks[0],), (int(refine_label),), preserve, replace=int(refine_label))
    if single and split:
        pieces = split_objects(masks[0]) if pieces is None else pieces
        masks = [pieces == value for value in range(1, int(pieces.max(initial=0)) + 1)]
    elif single and use_selected and selected_id != 0:
        return CommitPlan((masks[0],), (int(selected_id),), preserve)
    values = tuple(range(int(next_id), int(next_id) + len(masks)))
    return CommitPlan(tuple(masks), values, preserve)


@dataclass(frozen=True, eq=False)
class PlaneEdit:
    """The pixels of a labels plane an accept changes, with their values before and after.

    Attributes
    ----------
    rows, cols : (K,) intp
        Plane coordinates of the changed pixels.
    old, new : (K,)
        Their values before and after (``new`` is what to write, ``old`` what an undo
        writes back).
    """

    rows: np.ndarray
    cols: np.ndarray
    old: np.ndarray
    new: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def apply(self, plane: np.ndarray) -> None:
        """Write the edit into ``plane`` (in place)."""
        plane[self.rows, self.cols] = self.new

    def undo(self, plane: np.ndarray) -> None:
        """Take the edit back from ``plane`` (in place)."""
        plane[self.rows, self.cols] = self.old


def paint(current: np.ndarray, plan: CommitPlan) -> PlaneEdit:
    """The edit ``plan`` makes to the labels plane ``current`` ``(H, W)``; writes nothing.

    Only the bounding box of the masks (and of the replaced label) is looked at, so a
    small object on a large plane costs little.
    """
    current = np.asarray(current)
    touched = [mask for mask in plan.masks]
    if plan.replace is not None:
        touched.append(current == plan.replace)
    box = _bounding_box(touched, current.shape)
    if box is None:
        empty = np.zeros(0, np.intp)
        return PlaneEdit(empty, empty, current[:0, 0], current[:0, 0])
    window = (slice(box[0], box[2]), slice(box[1], box[3]))
    before = current[window]
    after = before.copy()
    masks = [mask[window] for mask in plan.masks]
    if plan.replace is not None:
        covered = np.logical_or.reduce(masks) if masks else np.zeros(after.shape, bool)
        after[(after == plan.replace) & ~covered] = 0
    claimed = np.zeros(after.shape, bool)
    for mask, value in zip(masks, plan.values):
        # An earlier object of the same accept keeps its pixels, also when overwriting
        # (overwrite is about labels already there): what the preview shows is written.
        writable = mask & ~claimed
        if plan.preserve:
            free = (after == 0) | (after == value)
            if plan.replace is not None:
                free |= after == plan.replace
            writable &= free
        after[writable] = value
        claimed |= mask
    rows, cols = np.nonzero(after != before)
    return PlaneEdit(rows + box[0], cols + box[1], before[rows, cols], after[rows, cols])


def _bounding_box(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(r0, c0, r1, c1)`` (end exclusive) around every True pixel of ``masks``, or None."""
    rows = np.zeros(shape[0], bool)
    cols = np.zeros(shape[1], bool)
    for mask in masks:
        rows |= mask.any(axis=1)
        cols |= mask.any(axis=0)
    if not rows.any():
        return None
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    return int(r[0]), int(c[0]), int(r[-1]) + 1, int(c[-1]) + 1
