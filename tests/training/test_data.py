"""Training data: file pairs, arrays, crops of large planes, the split, augmentation, synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from training_samples import disc_image

from napari_sam.training import data as data_mod
from napari_sam.training.data import Augmentation, Sample, find_pairs, load_pairs, samples_from_arrays


def _write_tif(path, array):
    import tifffile

    tifffile.imwrite(path, array, photometric="minisblack")


def test_pairs_match_by_name_in_one_or_two_folders(tmp_path):
    image, labels = disc_image(1)
    together = tmp_path / "together"
    together.mkdir()
    _write_tif(together / "a_image.tif", image)
    _write_tif(together / "a_labels.tif", labels)
    _write_tif(together / "b.tif", image)
    _write_tif(together / "b_masks.tif", labels)
    pairs = find_pairs(together)
    assert [(p.name, q.name) for p, q in pairs] == [("a_image.tif", "a_labels.tif"), ("b.tif", "b_masks.tif")]

    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), masks.mkdir()
    _write_tif(images / "x.tif", np.stack([image, image, image]).astype(np.uint16))  # a 3-plane stack
    _write_tif(masks / "x.tif", np.stack([labels, labels, labels]))
    _write_tif(images / "unmatched.tif", image)
    pairs = find_pairs(images, masks)
    assert [(p.name, q.name) for p, q in pairs] == [("x.tif", "x.tif")]
    samples = load_pairs(pairs)
    assert len(samples) == 3  # one per plane
    assert samples[0].image.dtype == np.uint8 and samples[0].image.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="no image / label pairs"):
        find_pairs(masks, together)


def test_arrays_from_napari_layers_give_one_sample_per_plane():
    image, labels = disc_image(2)
    stack = np.stack([image, image * 2])
    samples = samples_from_arrays(stack, np.stack([labels, labels]), name="layer")
    assert [s.name for s in samples] == ["layer[0]", "layer[1]"]
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    assert samples_from_arrays(rgb, labels)[0].image.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="does not match"):
        samples_from_arrays(image, labels[:32])


def test_large_planes_are_cut_into_native_resolution_crops():
    labels = np.zeros((300, 200), np.int64)
    labels[10:40, 10:40] = 1
    labels[250:290, 150:190] = 2
    labels[120:140, 90:110] = 3
    image = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    big = Sample(image, labels, "big")
    small = Sample(image[:100, :100], labels[:100, :100], "small")
    crops = data_mod.tile_samples([big, small], 128)
    assert crops[-1] is small
    crops = crops[:-1]
    assert all(c.labels.shape == (128, 128) and c.image.shape == (128, 128, 3) for c in crops)
    # Every labelled pixel is in some crop, at native resolution (crops are plain slices).
    covered = np.zeros(labels.shape, bool)
    for crop in crops:
        r, c = (int(v) for v in crop.name[len("big["):].replace("]", "").replace(":", ",").split(",")[::2])
        np.testing.assert_array_equal(crop.labels, labels[r : r + 128, c : c + 128])
        np.testing.assert_array_equal(crop.image, image[r : r + 128, c : c + 128])
        assert crop.labels.any()  # crops without labels are dropped
        covered[r : r + 128, c : c + 128] = True
    assert covered[labels > 0].all()


def test_split_is_never_empty_and_splits_one_image_by_object():
    rng = np.random.default_rng(0)
    one = samples_from_arrays(*disc_image(3))
    train, val, how = data_mod.split_samples(one, 0.2, rng)
    assert "by object" in how
    train_ids, val_ids = set(train[0].object_ids()), set(val[0].object_ids())
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == set(one[0].object_ids())
    two = one + samples_from_arrays(*disc_image(4))
    for fraction in (0.01, 0.5, 0.99):
        train, val, _ = data_mod.split_samples(two, fraction, rng)
        assert len(train) == len(val) == 1


def test_augmentation_moves_image_and_labels_together_and_small_objects_are_skipped():
    image, labels = disc_image(5)
    labels[0, 0] = 99  # a one-pixel object
    sample = samples_from_arrays(image, labels)[0]
    prepared = data_mod.prepare(sample, 64, min_object_pixels=10)
    assert 99 not in prepared.object_ids and prepared.object_ids.size == 4
    augmentation = Augmentation()
    assert augmentation.count == 16
    identity = augmentation.apply(prepared, 0, seed=0, image_index=0)
    assert np.array_equal(identity.image, prepared.image)
    for variant in range(augmentation.geometric_count):
        moved = augmentation.apply(prepared, variant, seed=0, image_index=0)
        for object_id in prepared.object_ids:
            # the object's mean intensity is the same wherever the transform put it
            before = prepared.image[prepared.labels == object_id].mean()
            after = moved.image[moved.labels == object_id].mean()
            assert after == pytest.approx(before)
    jittered = augmentation.apply(prepared, augmentation.geometric_count, seed=0, image_index=0)
    assert np.array_equal(jittered.labels, prepared.labels) and not np.array_equal(jittered.image, prepared.image)


def test_synthetic_stream_is_endless_and_reproducible():
    stream = data_mod.SyntheticSet(64, seed=3, shape=(96, 96), steps_per_epoch_=2)
    assert [s.sample for s in stream.epoch_plan(5, 8, 0)] == [10, 11]  # fresh images every epoch
    a, b = stream.sample(7), stream.sample(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(stream.validation(1)[0].image, stream.sample(0).image)
