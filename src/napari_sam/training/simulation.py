"""Simulated interactive segmentation, as SAM was trained (SAM paper, appendix A).

Every object is segmented in a sequence of rounds. Round 1 is one point drawn uniformly
inside the object or its bounding box with noise. Each later round adds one point drawn
uniformly from the error region of the previous round's mask (a missed object pixel
becomes a positive point, a wrongly included pixel a negative one) and feeds the previous
round's low-res logits back as the mask prompt. Two later rounds add no point: one at
random in between and the last one, so the model learns to refine from the mask alone.

Everything here works in model-input pixels: a point is ``(x, y)`` with pixel centres at
integers, a box ``(x0, y0, x1, y1)`` from the first to the last pixel of the object.
Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PADDING_LABEL = -1


@dataclass(frozen=True)
class Round:
    """One decoder call of the simulation.

    ``new_point``: a point is sampled from the error region before the call (rounds
    after the first); ``multimask``: three candidates are decoded and the lowest-loss
    one is kept (only round 1 with a single point, which is ambiguous).
    """

    index: int
    new_point: bool
    multimask: bool


def make_schedule(rng: np.random.Generator, rounds: int = 11, first_is_box: bool = False) -> list[Round]:
    """The rounds for one batch of objects.

    Round 0 (the first) carries the initial point or box. Of the later rounds, the last
    and one drawn uniformly from those in between add no point; the rest add one.

    Parameters
    ----------
    rng : numpy Generator
    rounds : int
        Total decoder calls, >= 1; SAM uses 11.
    first_is_box : bool
        The initial prompt is a box (single-mask output) rather than a point (multimask).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    no_point = set()
    if rounds >= 2:
        no_point.add(rounds - 1)
    if rounds >= 4:
        # An intermediate round strictly between round 1 and the last one; with 3
        # rounds only the last can go without a point, as round 2 must correct round 1.
        no_point.add(int(rng.integers(2, rounds - 1)))
    schedule = [Round(index=0, new_point=False, multimask=not first_is_box)]
    schedule += [Round(index=i, new_point=i not in no_point, multimask=False) for i in range(1, rounds)]
    return schedule


def object_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``(B, 4)`` xyxy of ``(B, H, W)`` boolean masks (first to last pixel)."""
    boxes = np.zeros((masks.shape[0], 4), np.float64)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise ValueError(f"mask {i} is empty; objects need at least one pixel")
        boxes[i] = cols[0], rows[0], cols[-1], rows[-1]
    return boxes


def jitter_boxes(
    boxes: np.ndarray,
    rng: np.random.Generator,
    shape: tuple[int, int],
    noise: float = 0.1,
    max_noise: float = 20.0,
) -> np.ndarray:
    """Add SAM's box noise: per coordinate, Gaussian with std ``noise`` x the box side,
    clipped to ``max_noise`` pixels; the result stays inside the ``shape = (H, W)`` image
    and keeps ``x0 <= x1``, ``y0 <= y1``."""
    boxes = np.asarray(boxes, np.float64)
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) + 1
    std = noise * np.concatenate([sides, sides], axis=1)
    offsets = np.clip(rng.normal(size=boxes.shape) * std, -max_noise, max_noise)
    jittered = boxes + offsets
    jittered[:, [0, 2]] = np.clip(jittered[:, [0, 2]], 0, shape[1] - 1)
    jittered[:, [1, 3]] = np.clip(jittered[:, [1, 3]], 0, shape[0] - 1)
    x0, x1 = np.minimum(jittered[:, 0], jittered[:, 2]), np.maximum(jittered[:, 0], jittered[:, 2])
    y0, y1 = np.minimum(jittered[:, 1], jittered[:, 3]), np.maximum(jittered[:, 1], jittered[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1)


def sample_points_inside(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One point ``(x, y)`` drawn uniformly from the pixels of each ``(B, H, W)`` mask: ``(B, 2)``."""
    points = np.zeros((masks.shape[0], 2), np.float64)
    for i, mask in enumerate(masks):
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            raise ValueError(f"mask {i} is empty; objects need at least one pixel")
        row, col = divmod(int(flat[rng.integers(flat.size)]), mask.shape[1])
        points[i] = col, row
    return points


def sample_correction_points(
    predictions: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One corrective click per object, drawn uniformly from its error region.

    The error region is the union of false negatives (target but not predicted) and
    false positives (predicted but not target); a click on a false negative is positive
    (label 1), on a false positive negative (label 0). Sampling the union uniformly
    makes the larger kind of error the more likely one to be corrected. A perfect mask
    gets a padding point (label -1), which the prompt encoder ignores.

    Parameters
    ----------
    predictions, targets : (B, H, W) bool

    Returns
    -------
    points : (B, 2) float xy; labels : (B,) int64 in {1, 0, -1}.
    """
    predictions = np.asarray(predictions, bool)
    targets = np.asarray(targets, bool)
    if predictions.shape != targets.shape or predictions.ndim != 3:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} must be equal (B, H, W)")
    points = np.zeros((targets.shape[0], 2), np.float64)
    labels = np.full(targets.shape[0], PADDING_LABEL, np.int64)
    for i in range(targets.shape[0]):
        flat = np.flatnonzero(predictions[i] != targets[i])
        if flat.size == 0:
            continue
        index = int(flat[rng.integers(flat.size)])
        row, col = divmod(index, targets.shape[2])
        points[i] = col, row
        labels[i] = int(targets[i].reshape(-1)[index])
    return points, labels
