"""Prompts in plane coordinates, validated against the plane they refer to."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prompts:
    """What the user asked for, in plane ``(row, col)`` pixels.

    Attributes
    ----------
    points : (N, 2) float or None
        ``(row, col)`` of each point.
    point_labels : (N,) int or None
        1 for a positive (object) point, 0 for a negative (background) point.
    box : (4,) float or None
        ``(r0, c0, r1, c1)``, top-left and bottom-right corners.
    mask_input : (h, w) float or None
        Low-res logits of an earlier candidate (``Candidates.logits[i]``).
    text : str or None
        What kind of object, e.g. ``"nucleus"``; normalised (lower case, single spaces).
    """

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    text: str | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        low_res_size: tuple[int, int],
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        text=None,
    ) -> Prompts:
        """Validate raw user input for a plane of ``shape`` and return :class:`Prompts`.

        Raises ``ValueError`` naming the argument and the problem: empty prompts,
        wrong shapes, labels other than 0/1, NaNs, coordinates outside the plane.
        """
        height, width = shape
        if points is not None:
            points = np.asarray(points, dtype=np.float64)
            if points.ndim == 1 and points.shape == (2,):
                points = points[None]
            if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
                raise ValueError(f"points must have shape (N, 2) as (row, col) with N >= 1, got {points.shape}")
            _check_finite("points", points)
            _check_inside("points", points, height, width)
            if point_labels is None:
                point_labels = np.ones(len(points), dtype=np.int64)
            point_labels = np.asarray(point_labels).reshape(-1)
            if len(point_labels) != len(points):
                raise ValueError(f"point_labels has {len(point_labels)} entries for {len(points)} points")
            if not np.isin(point_labels, (0, 1)).all():
                raise ValueError(
                    f"point_labels must be 1 (positive) or 0 (negative), got {np.unique(point_labels).tolist()}"
                )
            point_labels = point_labels.astype(np.int64)
        elif point_labels is not None:
            raise ValueError("point_labels given without points")

        if box is not None:
            box = np.asarray(box, dtype=np.float64)
            if box.shape != (4,):
                raise ValueError(f"box must be (r0, c0, r1, c1) with shape (4,), got shape {box.shape}")
            _check_finite("box", box)
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box {box.tolist()} has r1 < r0 or c1 < c0; give (r0, c0, r1, c1)")
            _check_inside("box", box.reshape(2, 2), height, width)

        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            mask_input = mask_input.reshape(mask_input.shape[-2:]) if mask_input.ndim > 2 else mask_input
            if mask_input.shape != tuple(low_res_size):
                raise ValueError(
                    f"mask_input must be low-res logits of shape {tuple(low_res_size)} "
                    f"(a Candidates.logits entry), got {np.shape(mask_input)}"
                )
            _check_finite("mask_input", mask_input)

        if text is not None:
            if not isinstance(text, str):
                raise ValueError(f"text must be a string, got {type(text).__name__}")
            text = " ".join(text.lower().split())
            if not text:
                warnings.warn("empty text prompt ignored", UserWarning, stacklevel=3)
                text = None

        if points is None and box is None and mask_input is None and text is None:
            raise ValueError("no prompt given: pass points, a box, a mask_input or text")
        return cls(points=points, point_labels=point_labels, box=box, mask_input=mask_input, text=text)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_inside(name: str, points_rc: np.ndarray, height: int, width: int) -> None:
    # Pixel i spans [i - 0.5, i + 0.5]: anything on the image's area is accepted.
    rows, cols = points_rc[:, 0], points_rc[:, 1]
    outside = (rows < -0.5) | (rows > height - 0.5) | (cols < -0.5) | (cols > width - 0.5)
    if outside.any():
        bad = points_rc[outside][0].tolist()
        raise ValueError(
            f"{name} has coordinates outside the {height}x{width} image, e.g. (row, col) = {bad}; "
            "coordinates are (row, col) pixels of the 2D plane"
        )
