"""One step's simulated interaction: 11 rounds of clicks, the mask fed back, text rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_samples import recording_trainer, tiny_sam, two_kind_samples

from napari_sam.training import TrainConfig


@pytest.mark.parametrize("box_first", [False, True])
def test_training_step_runs_the_11_round_interaction(box_first):
    config = TrainConfig.from_options(box_probability=1.0 if box_first else 0.0, objects_per_step=3)
    trainer, calls = recording_trainer(config)
    step = trainer.train_set.epoch_plan(0, 3, 0)[0]
    trainer.train_step(step, np.random.default_rng(0))
    assert len(calls) == 11
    points = [c["points"] for c in calls]
    first = 0 if box_first else 1
    assert points[0] == first and points[-1] == points[-2] == first + 8  # 8 corrective points
    assert sum(b == a for a, b in zip(points, points[1:])) == 2  # two rounds add no point
    assert all(c["box"] == box_first for c in calls)
    assert calls[0]["multimask"] == (not box_first) and not any(c["multimask"] for c in calls[1:])
    assert calls[0]["mask"] is None
    for call in calls[1:]:
        # the previous round's logits come back as the mask prompt, without a graph
        assert call["mask"].shape == (len(step.object_ids), 1, 32, 32) and not call["mask"].requires_grad


def test_a_step_is_a_function_of_its_generator():
    config = TrainConfig.from_options(rounds=4, objects_per_step=2, lr=1e-3)
    results = []
    for _ in range(2):
        trainer, calls = recording_trainer(config)
        metrics = trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(5))
        results.append((metrics, [c["points"] for c in calls], [c["labels"] for c in calls]))
    (a, points_a, labels_a), (b, points_b, labels_b) = results
    assert a["loss"] == b["loss"] and a["last_round_mask_loss"] == b["last_round_mask_loss"]
    assert points_a == points_b
    assert all(torch.equal(x, y) for x, y in zip(labels_a, labels_b) if x is not None)


def test_text_training_has_text_rounds_and_learns_the_projection():
    from napari_sam.inference.text import TEXT_DIM

    sam = tiny_sam(text_dim=TEXT_DIM)
    config = TrainConfig.from_options(train="decoder+prompt", text_probability=1.0, rounds=2, objects_per_step=2,
                                      lr=1e-3, text_focal_weight=5.0, text_focal_alpha=0.5, text_focal_gamma=0.0)
    trainer, calls = recording_trainer(config, sam=sam, samples=two_kind_samples())
    assert (trainer.text_weights.focal, trainer.text_weights.focal_alpha, trainer.text_weights.focal_gamma) == (
        5.0, 0.5, 0.0)
    assert (trainer.weights.focal_alpha, trainer.weights.focal_gamma) == (0.25, 2.0)  # mask rounds keep SAM's
    projection = sam.prompt_encoder.text_projection[0].weight.detach().clone()
    metrics = trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(0))
    prompted = [(c["points"] > 0 or c["box"], c["text"]) for c in calls]
    assert (True, True) in prompted  # text beside points / a box
    assert prompted.count((False, True)) == 2  # text alone, then refined with its own mask
    assert np.isfinite(metrics["text_only_loss"])
    assert not torch.equal(projection, sam.prompt_encoder.text_projection[0].weight)


def test_text_needs_a_model_with_a_text_path():
    with pytest.raises(ValueError, match="text_probability > 0 needs a model with a text path"):
        recording_trainer(TrainConfig.from_options(text_probability=0.5))
