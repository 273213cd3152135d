"""Instance-segmentation scores: F1 at an IoU threshold and the DSB-style mean average precision.

Both compare a predicted label image with a ground-truth one through the IoU of every
overlapping (predicted, true) pair. At an IoU threshold ``t >= 0.5`` two objects of one
image can match at most one object of the other (IoU > 0.5 needs more than half of each),
so matching is a plain threshold, no assignment problem:

- true positives ``TP(t)`` = pairs with IoU > ``t``; ``FP`` = predicted objects left;
  ``FN`` = true objects left;
- ``F1(t) = 2 TP / (2 TP + FP + FN)``;
- the 2018 Data Science Bowl's precision ``AP(t) = TP / (TP + FP + FN)``, and its mean over
  ``t = 0.5, 0.55, ..., 0.95`` (:data:`AP_THRESHOLDS`).

Scores are per image; pool counts over images (:class:`Counts`) rather than averaging ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AP_THRESHOLDS", "Counts", "counts", "f1_score", "mean_average_precision", "pair_ious"]

AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def pair_ious(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every overlapping pair of objects.

    Parameters
    ----------
    predicted, truth : (H, W) integer label images of one shape, 0 = background

    Returns
    -------
    (K,) float64 IoUs of the K (predicted, true) pairs that share at least one pixel.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} must have one shape")
    if predicted.dtype.kind not in "iub" or truth.dtype.kind not in "iub":
        raise ValueError(f"label images must be integer, got {predicted.dtype} and {truth.dtype}")
    p = predicted.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    p_sizes = np.bincount(p)
    t_sizes = np.bincount(t)
    both = (p > 0) & (t > 0)
    pairs, overlap = np.unique(p[both] * (t_sizes.size) + t[both], return_counts=True)
    pi, ti = pairs // t_sizes.size, pairs % t_sizes.size
    return overlap / (p_sizes[pi] + t_sizes[ti] - overlap)


@dataclass(frozen=True)
class Counts:
    """Objects and matches at each threshold of :data:`AP_THRESHOLDS` (add them over images)."""

    predicted: int
    true: int
    matched: tuple[int, ...]  # TP per threshold

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.predicted + other.predicted, self.true + other.true,
                      tuple(a + b for a, b in zip(self.matched, other.matched)))

    def f1(self, threshold: float = 0.5) -> float:
        """``2 TP / (2 TP + FP + FN)`` at ``threshold`` (one of :data:`AP_THRESHOLDS`); 1 when both are empty."""
        tp = self.matched[AP_THRESHOLDS.index(round(threshold, 2))]
        total = self.predicted + self.true
        return 2 * tp / total if total else 1.0

    def mean_ap(self) -> float:
        """The DSB precision ``TP / (TP + FP + FN)`` averaged over :data:`AP_THRESHOLDS`."""
        union = [self.predicted + self.true - tp for tp in self.matched]
        return float(np.mean([tp / u if u else 1.0 for tp, u in zip(self.matched, union)]))


def counts(predicted: np.ndarray, truth: np.ndarray) -> Counts:
    """:class:`Counts` of one image (see the module docstring)."""
    ious = pair_ious(predicted, truth)
    n_pred = int(np.unique(predicted[predicted > 0]).size)
    n_true = int(np.unique(truth[truth > 0]).size)
    return Counts(n_pred, n_true, tuple(int((ious > t).sum()) for t in AP_THRESHOLDS))


def f1_score(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of one image at an IoU ``threshold`` in :data:`AP_THRESHOLDS`."""
    return counts(predicted, truth).f1(threshold)


def mean_average_precision(predicted: np.ndarray, truth: np.ndarray) -> float:
    """DSB-style mean AP of one image over IoU 0.5..0.95."""
    return counts(predicted, truth).mean_ap()
