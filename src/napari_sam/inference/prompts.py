"""Prompts in plane coordinates, validated once against the plane they refer to.

:meth:`Prompts.build` is the one validation, at the public boundary (``Predictor.predict``,
``TiledPredictor.predict``, or a caller building ``Prompts`` itself); everything below it
passes the :class:`Prompts` object on and trusts it. A tile turns plane prompts into its
own frame with ``Tile.to_local`` (no second validation).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import transforms

if TYPE_CHECKING:
    from .tiling import Tile


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """Low-res logits of an earlier candidate, with the frame they were made in.

    Attributes
    ----------
    logits : (1, h, w) float32
        Low-res logits (``model.low_res_size``) over the padded model input of the frame.
    frame : Tile or None
        The tile whose model input the logits cover, or None for the whole plane of the
        prompts they go with. ``Candidates.mask_prompt(i)`` fills it in; a prediction in
        another tile re-samples the logits into that tile's frame.
    """

    logits: np.ndarray
    frame: Tile | None = None

    def window(self, shape: tuple[int, int]) -> transforms.Window:
        """The frame as a window ``(r0, c0, r1, c1)`` of a plane of ``shape``."""
        return (0, 0, int(shape[0]), int(shape[1])) if self.frame is None else tuple(self.frame.window)

    def logits_in(self, window: transforms.Window, shape: tuple[int, int]) -> np.ndarray:
        """``(1, h, w)`` logits re-sampled into ``window`` of a plane of ``shape``."""
        return transforms.resample_low_res(self.logits, self.window(shape), window)


@dataclass(frozen=True)
class Prompts:
    """What the user asked for, in ``(row, col)`` pixels of a plane of :attr:`shape`.

    Build it with :meth:`build` (validates); code that receives a ``Prompts`` trusts it.

    Attributes
    ----------
    points : (N, 2) float or None
        ``(row, col)`` of each point.
    point_labels : (N,) int or None
        1 for a positive (object) point, 0 for a negative (background) point.
    box : (4,) float or None
        ``(r0, c0, r1, c1)``, top-left and bottom-right corners.
    mask_input : MaskPrompt or None
        Low-res logits of an earlier candidate (``Candidates.mask_prompt(i)``) and their frame.
    text : str or None
        What kind of object, e.g. ``"nucleus"``; normalised (lower case, single spaces).
    shape : (H, W) or None
        The plane the prompts were validated against.
    """

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: MaskPrompt | None = None
    text: str | None = None
    shape: tuple[int, int] | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    @property
    def has_positive(self) -> bool:
        """A box or at least one positive point: something that says where the object is."""
        return self.box is not None or (self.points is not None and bool(self.point_labels.any()))

    @property
    def located(self) -> bool:
        """Points, a box or a mask prompt (text alone is not located)."""
        return self.points is not None or self.box is not None or self.mask_input is not None

    def default_multimask(self) -> bool:
        """SAM's default: three candidates for a single point and no other prompt."""
        return self.num_points == 1 and self.box is None and self.mask_input is None and self.text is None

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

        ``mask_input`` is a :class:`MaskPrompt` or ``(h, w)`` / ``(1, h, w)`` low-res
        logits, read in the whole plane's frame. Raises ``ValueError`` naming the argument
        and the problem: empty prompts, wrong shapes, labels other than 0/1, NaNs,
        coordinates outside the plane.
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
            frame = None
            if isinstance(mask_input, MaskPrompt):
                mask_input, frame = mask_input.logits, mask_input.frame
            if np.asarray(mask_input).dtype == bool:  # a mask is not logits: True would read as 1.0
                raise TypeError("mask_input must be low-res float logits, not a bool mask; for a mask "
                                "use TiledPredictor.mask_prompt(mask, prompts) or mask_to_low_res_logits")
            logits = np.asarray(mask_input, dtype=np.float32)
            logits = logits.reshape(logits.shape[-2:]) if logits.ndim > 2 else logits
            if logits.shape != tuple(low_res_size):
                raise ValueError(
                    f"mask_input must be low-res logits of shape {tuple(low_res_size)} "
                    f"(Candidates.mask_prompt(i) or a Candidates.logits entry), got {np.shape(mask_input)}"
                )
            _check_finite("mask_input", logits)
            mask_input = MaskPrompt(logits[None], frame)

        if text is not None:
            if not isinstance(text, str):
                raise ValueError(f"text must be a string, got {type(text).__name__}")
            text = " ".join(text.lower().split())
            if not text:
                warnings.warn("empty text prompt ignored", UserWarning, stacklevel=3)
                text = None

        if points is None and box is None and mask_input is None and text is None:
            raise ValueError("no prompt given: pass points, a box, a mask_input or text")
        return cls(points=points, point_labels=point_labels, box=box, mask_input=mask_input, text=text,
                   shape=(int(height), int(width)))


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_inside(name: str, points_rc: np.ndarray, height: int, width: int) -> None:
    outside = ~transforms.inside_plane_rc(points_rc, (height, width))
    if outside.any():
        bad = points_rc[outside][0].tolist()
        raise ValueError(
            f"{name} has coordinates outside the {height}x{width} image, e.g. (row, col) = {bad}; "
            "coordinates are (row, col) pixels of the 2D plane"
        )
