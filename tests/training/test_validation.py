"""Validation: mIoU from one point and from a box (and from a kind's name), embeddings reused."""

from __future__ import annotations

import numpy as np
import pytest
from training_samples import disc_image, recording_trainer, tiny_sam, two_kind_samples

from napari_sam.training import TrainConfig
from napari_sam.training.data import samples_from_arrays
from napari_sam.training.validation import point_in_object


def test_the_validation_point_is_the_pixel_farthest_from_the_background():
    mask = np.zeros((20, 30), bool)
    mask[2:9, 3:20] = True  # a 7 x 17 bar: its middle row, anywhere away from the ends
    mask[11:20, 21:30] = True  # a 9 x 9 square: its centre is farther from the background
    assert point_in_object(mask) == (15, 25)


def test_validation_scores_point_and_box_and_reuses_frozen_embeddings():
    trainer, calls = recording_trainer(TrainConfig.from_options(val_max_objects=3))
    encoded = []
    encode = trainer.sam.encode
    trainer.sam.encode = lambda x: encoded.append(x.shape) or encode(x)
    first = trainer.validate()
    assert first["objects"] == 3 and 0 <= first["point_miou"] <= 1 and 0 <= first["box_miou"] <= 1
    assert first["score"] == pytest.approx((first["point_miou"] + first["box_miou"]) / 2)
    assert [c["multimask"] for c in calls] == [True, False]  # 3 candidates from the point, 1 from the box
    assert trainer.validate() == first
    assert len(encoded) == 1  # the frozen encoder's embedding came from the cache the second time


def test_an_encoder_being_trained_is_never_served_from_the_cache():
    trainer, _ = recording_trainer(TrainConfig.from_options(train="lora", lora_rank=2))
    encoded = []
    encode = trainer.sam.encode
    trainer.sam.encode = lambda x: encoded.append(x.shape) or encode(x)
    trainer.validate()
    trainer.validate()
    assert len(encoded) == 2


def test_text_validation_measures_each_kind_from_its_name():
    from napari_sam.inference.text import TEXT_DIM

    samples = two_kind_samples()
    config = TrainConfig.from_options(train="decoder+prompt", text_probability=1.0)
    trainer, calls = recording_trainer(config, sam=tiny_sam(text_dim=TEXT_DIM), samples=samples)
    result = trainer.validate()
    assert any(c["text"] and not c["points"] and not c["box"] for c in calls)
    assert 0.0 <= result["text_miou"] <= 1.0
    if any(len(set(sample.classes.values())) > 1 for sample in samples):
        assert 0.0 <= result["text_miou_mixed"] <= 1.0
    else:
        assert "text_miou_mixed" not in result
    assert result["score"] == pytest.approx((result["point_miou"] + result["box_miou"] + result["text_miou"]) / 3)


def test_validation_without_large_enough_objects_is_refused():
    image, labels = disc_image(0)
    samples = samples_from_arrays(image, labels)
    with pytest.raises(ValueError, match="no validation object has at least 10000 pixels"):
        recording_trainer(TrainConfig.from_options(min_object_pixels=10000), samples=samples)
