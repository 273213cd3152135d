"""The prompts of one plane as the user gave them, and the rules that read them.

A :class:`PromptSet` is what the annotation loop gathers on one plane: points with their
signs, boxes and a text, in plane ``(row, col)`` pixels. It decides which prediction runs
(:attr:`PromptSet.dispatch`) and whether it continues the shown result (:meth:`extends`).
Validation against the plane happens once, later, in ``TiledPredictor.prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Which prediction a prompt set asks for.
ONE = "one"  # points and / or one box (text may say which object): one object
BOXES = "boxes"  # several boxes: one object per box, batched per tile (points ignored)
BOXES_TEXT = "boxes_text"  # several boxes and a text: one object per box, each with the text
TEXT = "text"  # text alone: every object of that kind, as one mask


@dataclass(frozen=True, eq=False)
class PromptSet:
    """Points, boxes and a text on one plane.

    Attributes
    ----------
    points : (N, 2) float
        ``(row, col)`` of each point, in the order they were added.
    labels : (N,) int
        1 for a positive point, 0 for a negative one.
    boxes : (M, 4) float
        ``(r0, c0, r1, c1)`` of each box.
    text : str or None
        The kind of object; None when there is none (blank text counts as none).
    """

    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    text: str | None = None

    @classmethod
    def make(cls, points=None, labels=None, boxes=None, text: str | None = None) -> PromptSet:
        """A prompt set from array-likes (any may be None or empty); labels default to positive."""
        points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != len(points):
            raise ValueError(f"{len(labels)} point labels for {len(points)} points")
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=float).reshape(-1, 4)
        text = text.strip() if text else ""
        return cls(points=points, labels=labels, boxes=boxes, text=text or None)

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and len(self.boxes) == 0 and self.text is None

    @property
    def box(self) -> np.ndarray | None:
        """The box of a one-object prediction (None without a box, or with several)."""
        return self.boxes[0] if len(self.boxes) == 1 else None

    @property
    def dispatch(self) -> str:
        """:data:`ONE`, :data:`BOXES`, :data:`BOXES_TEXT` or :data:`TEXT`."""
        if len(self.boxes) > 1:
            return BOXES_TEXT if self.text else BOXES
        if len(self.points) == 0 and len(self.boxes) == 0:
            return TEXT
        return ONE

    @property
    def points_ignored(self) -> bool:
        """Several boxes mean one object per box: points given with them are not used."""
        return len(self.boxes) > 1 and len(self.points) > 0

    def extends(self, previous: PromptSet) -> bool:
        """Whether this set is ``previous`` plus more points on the same object.

        Then the shown candidate's logits seed the prediction (refinement). Not after text
        alone: the mask of every object of a kind is no starting point for one of them.
        """
        n = len(previous.points)
        return bool(
            len(self.points) > n
            and np.array_equal(self.points[:n], previous.points)
            and np.array_equal(self.labels[:n], previous.labels)
            and np.array_equal(self.boxes, previous.boxes)
            and self.text == previous.text
            and (n or len(previous.boxes))
        )
