"""SAM's training losses: focal + dice on every candidate, MSE on the IoU head.

All functions take low-res mask logits ``(B, K, H, W)`` (``B`` prompts, ``K`` candidates)
and binary targets ``(B, 1, H, W)`` or ``(B, H, W)`` on the same grid, and return one
value per prompt and candidate, ``(B, K)``, so that the candidate with the lowest loss
can be picked per prompt (:func:`sam_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _as_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets as float ``(B, 1, H, W)``, broadcastable against ``(B, K, H, W)`` logits."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if targets.ndim == 3:
        targets = targets[:, None]
    if targets.ndim != 4 or targets.shape[1] != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be (B, H, W) or (B, 1, H, W) with B = {logits.shape[0]}, got {tuple(targets.shape)}"
        )
    if targets.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"targets {tuple(targets.shape[-2:])} and logits {tuple(logits.shape[-2:])} differ in size")
    return targets.to(logits.dtype)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), averaged over pixels: ``(B, K)``.

    ``alpha`` weights positive pixels (``1 - alpha`` negatives); a negative ``alpha``
    disables the weighting. ``gamma`` down-weights pixels that are already right.
    """
    targets = _as_targets(logits, targets).expand_as(logits)
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_true) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss on sigmoid probabilities: ``1 - (2|P.T| + s) / (|P| + |T| + s)``, ``(B, K)``."""
    targets = _as_targets(logits, targets)
    prob = torch.sigmoid(logits)
    intersection = (prob * targets).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (2 * intersection + smooth) / (total + smooth)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each mask thresholded at logit 0 with its target, ``(B, K)``.

    An empty prediction of an empty target counts as IoU 1.
    """
    targets = _as_targets(logits, targets) > 0.5
    masks = logits > 0
    intersection = (masks & targets).sum(dim=(-2, -1)).to(logits.dtype)
    union = (masks | targets).sum(dim=(-2, -1)).to(logits.dtype)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def iou_mse(iou_predictions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error between the IoU head and the actual IoU of each candidate, ``(B, K)``.

    The actual IoU is a constant target: no gradient flows into the mask logits here.
    """
    actual = mask_iou(logits.detach(), targets)
    return (iou_predictions - actual) ** 2


@dataclass
class LossWeights:
    """Relative weights of the terms; SAM uses focal : dice = 20 : 1 and IoU MSE x 1."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class LossResult:
    """One round's loss, reduced over prompts.

    ``total`` is the scalar to back-propagate; ``mask`` / ``iou`` its two parts (for
    logging); ``best`` ``(B,)`` the index of the candidate with the lowest mask loss,
    the one fed back to the next round.
    """

    total: torch.Tensor
    mask: torch.Tensor
    iou: torch.Tensor
    best: torch.Tensor


def sam_loss(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights | None = None,
) -> LossResult:
    """SAM's loss for one decoder call.

    The mask loss ``focal * w_f + dice * w_d`` is computed for every candidate but only
    the lowest one per prompt enters the total, so gradients reach only that candidate
    (ambiguity-aware training). The IoU head is trained on every candidate, since at
    inference it ranks all of them.

    Parameters
    ----------
    logits : (B, K, H, W) float
        Mask logits.
    iou_predictions : (B, K) float
        The IoU head's outputs.
    targets : (B, H, W) or (B, 1, H, W)
        Binary target mask of each prompt's object.
    weights : LossWeights, optional
        Defaults to SAM's.
    """
    weights = weights or LossWeights()
    per_candidate = weights.focal * focal_loss(
        logits, targets, weights.focal_alpha, weights.focal_gamma
    ) + weights.dice * dice_loss(logits, targets)
    best_loss, best = per_candidate.min(dim=1)
    mask = best_loss.mean()
    iou = iou_mse(iou_predictions, logits, targets).mean()
    return LossResult(total=mask + weights.iou * iou, mask=mask, iou=iou, best=best)
