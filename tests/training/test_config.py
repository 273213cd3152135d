"""TrainConfig: groups, flat option names (the CLI's, finetune's, the state's), recipes, checks."""

from __future__ import annotations

import pytest

from napari_sam.training import RECIPES, LossConfig, TrainConfig
from napari_sam.training.config import option_names


def test_named_recipes():
    assert TrainConfig.recipe("sam") == TrainConfig()
    fast = TrainConfig.recipe("fast", epochs=3)
    assert (fast.interaction.rounds, fast.loss.focal_weight, fast.optimiser.lr, fast.loss.resolution, fast.epochs) == (
        3, 0.0, 1e-3, "input", 3)
    with pytest.raises(ValueError, match="unknown recipe 'quick'"):
        TrainConfig.recipe("quick")


def test_every_setting_has_one_flat_option_name_and_round_trips():
    names = option_names()
    assert len(names) == 45 and {"lr", "rounds", "loss_resolution", "text_probability", "lora_rank", "anchor_weight"} <= set(names)
    assert all(name in names for recipe in RECIPES.values() for name in recipe)
    config = TrainConfig.from_options(lr=3e-4, rounds=5, loss_resolution="input", text_focal_weight=5.0,
                                      lora_targets=["qkv", "proj"], synthetic_shape=[96, 96], flips=False)
    assert (config.optimiser.lr, config.interaction.rounds, config.loss.resolution) == (3e-4, 5, "input")
    assert (config.text.focal_weight, config.lora.targets, config.data.synthetic_shape) == (5.0, ("qkv", "proj"),
                                                                                           (96, 96))
    assert not config.augmentation.flips
    values = config.to_dict()
    assert values["lora_targets"] == ["qkv", "proj"] and values["lr"] == 3e-4  # plain JSON types
    assert TrainConfig.from_dict({**values, "option_of_a_later_version": 1}) == config
    assert TrainConfig(loss=LossConfig(focal_weight=0.0)) == TrainConfig.from_options(focal_weight=0.0)


def test_wrong_settings_are_refused_with_their_option_name():
    with pytest.raises(TypeError, match=r"unknown training options: \['learning_rate'\]"):
        TrainConfig.from_options(learning_rate=1e-3)
    with pytest.raises(ValueError, match="loss_resolution"):
        TrainConfig.from_options(loss_resolution="full")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        TrainConfig.from_options(rounds=0)
    with pytest.raises(ValueError, match="train must be one of"):
        TrainConfig.from_options(train="encoder")
    with pytest.raises(ValueError, match="box_probability"):
        TrainConfig.from_options(box_probability=1.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig.from_options(schedule="linear")


def test_text_rounds_have_their_own_focal_settings_defaulting_to_the_mask_loss():
    config = TrainConfig.from_options(focal_weight=0.0, text_focal_weight=20.0, text_focal_alpha=0.5,
                                      text_focal_gamma=0.0)
    mask = config.loss.weights()
    text = config.text.weights(mask)
    assert (mask.focal, mask.focal_alpha, mask.focal_gamma) == (0.0, 0.25, 2.0)  # mask rounds keep SAM's
    assert (text.focal, text.focal_alpha, text.focal_gamma) == (20.0, 0.5, 0.0)
    config = TrainConfig.from_options(focal_weight=3.0)
    assert config.text.weights(config.loss.weights()).focal == 3.0
