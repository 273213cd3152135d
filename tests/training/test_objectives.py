"""Targets at the loss resolution: the low-res grid (inference's mask geometry) or the model input."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from training_samples import recording_trainer

from napari_sam.training import TrainConfig
from napari_sam.training.losses import sam_loss
from napari_sam.training.objectives import loss_targets, low_res_targets


def test_low_res_target_pixels_are_those_at_least_half_covered():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 48, 64)) < 0.5  # a non-square model input: the grid's last rows are padding
    targets, valid = low_res_targets(masks, 64, (32, 32))
    padded = F.pad(torch.from_numpy(masks).float()[:, None], (0, 0, 0, 16))
    coverage = F.avg_pool2d(padded, 2)
    assert torch.equal(targets, (coverage >= 0.5).float())
    assert valid == (24, 32)


def test_loss_at_input_resolution_sees_edges_finer_than_a_low_res_pixel():
    masks = np.zeros((1, 64, 64), bool)
    masks[0, 11:16, 11:16] = True  # 5 px: edges inside low-res pixels (2 px each)
    low = loss_targets(masks, 64, (32, 32), "low", torch.device("cpu"))
    full = loss_targets(masks, 64, (32, 32), "input", torch.device("cpu"))
    assert low.masks.shape[-2:] == (32, 32) and full.masks.shape[-2:] == (64, 64)
    # Logits that reproduce the low-res target exactly: no loss on the low-res grid, but
    # upsampled to the input they miss the 5-px square's true edges.
    logits = (low.masks * 2 - 1) * 20.0
    exact = sam_loss(low.at(logits), torch.ones(1, 1), low.masks).mask
    upsampled = sam_loss(full.at(logits), torch.ones(1, 1), full.masks).mask
    assert float(exact) < 1e-6 < 0.01 < float(upsampled)

    trainer, _ = recording_trainer(TrainConfig.from_options(loss_resolution="input"))
    metrics = trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(0))
    assert np.isfinite(metrics["loss"])
