"""SAM's losses checked by hand: focal, dice, the IoU head's MSE, the ambiguity-aware minimum."""

from __future__ import annotations

import math

import pytest
import torch

from napari_sam.training.losses import LossWeights, dice_loss, focal_loss, iou_mse, mask_iou, sam_loss

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75

# A 2 x 2 map with logits [[0, 0], [ln 3, ln 3]] -> probabilities [[.5, .5], [.75, .75]]
# against the target [[1, 0], [1, 0]].
LOGITS = torch.tensor([[0.0, 0.0], [LN3, LN3]]).reshape(1, 1, 2, 2)
TARGET = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)


def test_focal_loss_matches_hand_computation():
    # pixel (p, t): bce * (1 - p_t)^2 * alpha_t, alpha = 0.25 for t = 1, 0.75 for t = 0
    # (.5, 1): ln 2 * .25 * .25            = 0.0433217
    # (.5, 0): ln 2 * .25 * .75            = 0.1299651
    # (.75, 1): -ln .75 * .0625 * .25      = 0.0044950
    # (.75, 0): -ln .25 * .5625 * .75      = 0.5848430
    # mean                                  = 0.1906562
    assert focal_loss(LOGITS, TARGET).item() == pytest.approx(0.1906562, abs=1e-6)
    # gamma 0 and no alpha is plain binary cross-entropy: (ln2 + ln2 - ln.75 - ln.25) / 4
    bce = (2 * math.log(2) - math.log(0.75) - math.log(0.25)) / 4
    assert focal_loss(LOGITS, TARGET, alpha=-1, gamma=0).item() == pytest.approx(bce, abs=1e-6)


def test_dice_loss_matches_hand_computation():
    # sum(p t) = .5 + .75 = 1.25; sum(p) = 2.5; sum(t) = 2
    # 1 - (2 * 1.25 + 1) / (2.5 + 2 + 1) = 1 - 3.5 / 5.5 = 0.3636364
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(0.3636364, abs=1e-6)


def test_iou_mse_uses_the_thresholded_mask():
    # mask (logit > 0) {(0,0), (1,0), (1,1)}; target {(0,0), (0,1), (1,1)}: IoU 2 / 4 = 0.5
    logits = torch.tensor([[1.0, -1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    assert mask_iou(logits, target).item() == pytest.approx(0.5)
    # predicted 0.8 -> (0.8 - 0.5)^2 = 0.09
    assert iou_mse(torch.tensor([[0.8]]), logits, target).item() == pytest.approx(0.09)


def test_min_loss_candidate_is_selected_and_alone_gets_mask_gradients():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, 1:3, 1:3] = 1
    good = (target * 2 - 1) * 5  # right everywhere, confidently
    logits = torch.stack([-good[:, 0], torch.zeros(2, 4, 4), good[:, 0]], dim=1)  # (2, 3, 4, 4)
    logits[1] = logits[1][[2, 0, 1]]  # second prompt: the right candidate is at index 0
    logits.requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5)
    result = sam_loss(logits, iou_pred, target)
    assert result.best.tolist() == [2, 0]
    expected_mask = 20 * focal_loss(good, target) + dice_loss(good, target)
    assert result.mask.item() == pytest.approx(expected_mask.mean().item(), rel=1e-5)
    # actual IoUs: wrong = 0, undecided (logit 0, not > 0) = 0, right = 1 -> mean of
    # (0.5 - 0)^2, (0.5 - 0)^2, (0.5 - 1)^2 = 0.25
    assert result.iou.item() == pytest.approx(0.25)
    result.mask.backward()
    grad_norm = logits.grad.abs().sum(dim=(-2, -1))
    assert grad_norm[0, 2] > 0 and grad_norm[0, :2].sum() == 0
    assert grad_norm[1, 0] > 0 and grad_norm[1, 1:].sum() == 0


def test_focal_term_keeps_a_gradient_where_dice_alone_has_none():
    """A text path that says "nothing" with saturated logits: dice's gradient vanishes,
    the focal term's does not; text-only rounds therefore get their own focal weight."""
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    gradients = {}
    for focal in (0.0, 20.0):
        logits = torch.full((1, 1, 16, 16), -60.0, requires_grad=True)
        sam_loss(logits, torch.zeros(1, 1), target, LossWeights(focal=focal)).total.backward()
        gradients[focal] = float(logits.grad.abs().max())
    assert gradients[0.0] < 1e-12 < 1e-4 < gradients[20.0]
