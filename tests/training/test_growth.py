"""Growing an encoder by identity blocks, and the anchor loss that keeps a model's answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny import TINY, build_tiny, randomized
from training_samples import disc_images, tiny_sam

from napari_sam.checkpoints import load_model, save_model
from napari_sam.training import TrainConfig, Trainer
from napari_sam.training.data import SampleSet, Step, samples_from_arrays
from napari_sam.training.growth import grow_encoder


def test_a_grown_encoder_computes_exactly_what_the_trained_one_did():
    sam = randomized(build_tiny(TINY), seed=3).eval()
    grown = grow_encoder(sam, 2).eval()
    assert grown.config["depth"] == TINY["depth"] + 2
    assert grown.config["global_attn_indexes"] == [1, 3]
    assert len(grown.image_encoder.blocks) == 4 and grown.image_encoder.blocks[3].window_size == 0
    images = torch.rand(2, 3, 128, 128) * 255
    points, labels = torch.tensor([[[40.0, 70.0]], [[90.0, 20.0]]]), torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        before, after = sam.encode(sam.preprocess(images)), grown.encode(grown.preprocess(images))
        assert torch.equal(before, after)
        assert all(torch.equal(a, b) for a, b in zip(sam.decode(before, points, labels), grown.decode(after, points, labels)))
    # the new blocks are real blocks: their zeroed layers take gradients
    grown.encode(grown.preprocess(images)).sum().backward()
    assert grown.image_encoder.blocks[2].mlp.lin2.weight.grad.abs().sum() > 0


def test_a_grown_model_saves_and_loads_with_its_new_depth(tmp_path):
    sam = randomized(build_tiny(TINY), seed=1)
    sam.metadata = {"config": dict(sam.config), "name": "mine"}
    grown = grow_encoder(sam, 1, global_attention=False)
    assert grown.config["global_attn_indexes"] == [1] and grown.metadata == {"name": "mine"}
    save_model(grown, tmp_path / "grown.pt")
    loaded = load_model(tmp_path / "grown.pt", device="cpu")
    assert loaded.config["depth"] == 3
    for name, tensor in grown.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_growing_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        grow_encoder(build_tiny(TINY), 0)
    sam = build_tiny(TINY)
    sam.config = {**sam.config, "encoder": "tiny_vit"}
    with pytest.raises(ValueError, match="needs a ViT encoder"):
        grow_encoder(sam, 1)


def test_anchor_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="anchor_weight must be >= 0"):
        TrainConfig.from_options(anchor_weight=-1.0)


def _drift(anchor_weight: float, anchored: bool) -> tuple[float, list[float]]:
    """How far 20 steps move the decoder's logits on the training image, and the anchor losses."""
    images, labels = disc_images(2)
    samples = samples_from_arrays(images, labels)
    samples = [dataclasses.replace(s, anchor=anchored) for s in samples]
    config = TrainConfig.from_options(train="all", anchor_weight=anchor_weight, rounds=1, objects_per_step=4, lr=3e-3,
                                      warmup_max_steps=1, schedule="constant", device="cpu", seed=0)
    sam = tiny_sam(seed=2)
    trainer = Trainer(sam, config, SampleSet(samples, 64), samples)
    point, label = torch.tensor([[[20.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long)
    image = trainer.train_set.prepared(0).image

    def logits():
        with torch.no_grad():
            return sam.decode(trainer.embed(image, None, grad=False), point, label)[0]

    start = logits()
    losses = [trainer.train_step(Step(0, ()), np.random.default_rng(i))["anchor_loss"] for i in range(20)]
    return float((logits() - start).abs().mean()), losses


def test_anchored_samples_keep_the_starting_models_answers():
    free, free_losses = _drift(0.0, anchored=True)
    unmarked, unmarked_losses = _drift(50.0, anchored=False)
    kept, kept_losses = _drift(50.0, anchored=True)
    assert all(np.isnan(free_losses)) and all(np.isnan(unmarked_losses))  # no anchor: no anchor loss
    assert unmarked == pytest.approx(free)  # only samples marked anchor are held
    assert all(np.isfinite(kept_losses)) and kept_losses[0] > 0
    assert kept < 0.5 * free, (kept, free)
