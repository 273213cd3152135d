"""Training an instance decoder for a frozen SAM (automatic/training.py) and the decoder file it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from napari_sam import load_model, save_model
from napari_sam.automatic import AutomaticSegmenter, WatershedOptions, training
from napari_sam.automatic.loading import load_decoder, read_decoder_info
from napari_sam.checkpoints import CheckpointError

QUICK = training.DecoderTraining(initial_features=4, images=12, steps=8, full_steps=3, batch_size=4,
                                 warmup_steps=2, tune_planes=2, validation_images=4, log_every=4)
SMALL_GRID = {"center_distance_threshold": (0.4, 0.5), "min_size": (0, 10)}


def test_targets_are_micro_sams_normalised_distances():
    labels = np.zeros((40, 60), np.int32)
    labels[tiny.ellipse(labels.shape, (20, 15), (9, 9))] = 1
    labels[tiny.ellipse(labels.shape, (20, 42), (6, 12))] = 2
    targets = training.instance_targets(labels)
    assert targets.shape == (3, 40, 60) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[0], labels > 0)
    assert np.all(targets[1:, labels == 0] == 1)  # background: far from every centre and boundary
    for index, centre in ((1, (20, 15)), (2, (20, 42))):
        inside = labels == index
        assert targets[1][centre] == 0 and targets[2][centre] == 0  # the centre is the deepest point
        for channel in (1, 2):  # normalised per object: 0..1, and some pixel of each reaches the top
            values = targets[channel][inside]
            assert values.min() == 0 and 0.9 <= values.max() <= 1
    # Distances grow from the centre outwards along a row.
    assert np.all(np.diff(targets[1, 20, 15:24]) > 0) and np.all(np.diff(targets[2, 20, 15:24]) > 0)


def test_training_on_fixed_embeddings_lowers_the_loss():
    model = tiny.build_tiny()
    images, labels = training.training_images(8, (128, 128), seed=1)
    features, frames = training.embed_images(model, images)
    targets = torch.from_numpy(np.stack([training.instance_targets(lab) for lab in labels]))
    settings = training.DecoderTraining(initial_features=4, steps=60, full_steps=20, batch_size=4, warmup_steps=5,
                                        log_every=10, lr=3e-3)
    decoder, summary = training.train_decoder(features, frames[0], targets, settings)
    assert not decoder.training and decoder.conventions == "napari_sam"
    history = summary["loss_history"]
    assert summary["steps"] == 60 and len(history) == 6
    assert history[-1] < 0.8 * history[0]


def test_the_command_writes_a_decoder_with_its_encoder_hash_and_tuned_options(tmp_path, model_file, monkeypatch):
    monkeypatch.setattr(training, "TUNING_GRID", SMALL_GRID)
    out = tmp_path / "tiny_decoder.pt"
    log = tmp_path / "train.log"
    argv = ["--model", model_file, "--out", str(out), "--log", str(log), "--images", "12", "--steps", "8",
            "--full-steps", "3", "--batch-size", "4", "--initial-features", "4", "--tune-planes", "2"]
    assert training.main(argv) == 0
    info = read_decoder_info(out)
    from napari_sam.checkpoints.download import sha256_of

    assert info["encoder_sha256"] == sha256_of(Path(model_file))
    assert info["training"]["steps"] == 8 and info["training"]["command"].startswith("python -m")
    assert "wrote" in log.read_text()
    model = load_model(model_file)
    decoder = load_decoder(out, model=model)
    assert decoder.initial_features == 4 and decoder.conventions == "napari_sam"
    options = decoder.watershed_options
    assert isinstance(options, WatershedOptions) and options.to_dict() == info["watershed"]
    assert options.center_distance_threshold in (0.4, 0.5) and options.min_size in (0, 10)
    # The segmenter takes the tuned options unless told otherwise; --min-size replaces only the size.
    segmenter = AutomaticSegmenter(model, decoder)
    assert segmenter.mode == "ais" and segmenter.watershed == options
    assert AutomaticSegmenter(model, decoder, min_size=7).watershed.min_size == 7
    assert AutomaticSegmenter(model, decoder, min_size=7).watershed.center_distance_threshold == \
        options.center_distance_threshold
    labels = segmenter.segment(np.zeros((150, 140), np.uint8) + np.arange(140, dtype=np.uint8))
    assert labels.shape == (150, 140) and labels.dtype == np.uint32

    # Beside another encoder file the decoder is refused in one line that says what to do.
    other = save_model(tiny.build_tiny(seed=1), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"trained on another encoder.*retrain it with") as error:
        load_decoder(out, model=load_model(other))
    assert "\n" not in str(error.value)
    assert load_decoder(out).initial_features == 4  # without a model there is nothing to compare


def test_a_stop_file_ends_training_after_the_current_step(tmp_path):
    model = tiny.build_tiny()
    images, labels = training.training_images(4, (128, 128), seed=2)
    features, frames = training.embed_images(model, images)
    targets = torch.from_numpy(np.stack([training.instance_targets(lab) for lab in labels]))
    stop = tmp_path / "out.pt.stop"
    stop.touch()
    settings = training.DecoderTraining(initial_features=4, steps=50, batch_size=2, log_every=100)
    _, summary = training.train_decoder(features, frames[0], targets, settings, stop_file=stop)
    assert summary["steps"] == 1


def test_training_images_are_seeded():
    a = training.training_images(6, (64, 64), seed=5)
    b = training.training_images(6, (64, 64), seed=5)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(x, y)
    assert all(lab.shape == (64, 64) and lab.max() > 0 for lab in a[1])


def test_retune_keeps_the_weights_and_tunes_on_labelled_files(tmp_path, model_file, monkeypatch):
    import tifffile

    monkeypatch.setattr(training, "TUNING_GRID", SMALL_GRID)
    first = tmp_path / "first.pt"
    common = ["--model", model_file, "--batch-size", "4", "--initial-features", "4"]
    assert training.main(common + ["--out", str(first), "--images", "8", "--steps", "4", "--full-steps", "2",
                                   "--tune-planes", "1"]) == 0
    sample = training.training_images(1, (150, 140), seed=9)
    tifffile.imwrite(tmp_path / "plate_image.tif", sample[0][0])
    tifffile.imwrite(tmp_path / "plate_labels.tif", sample[1][0].astype(np.uint16))
    second = tmp_path / "second.pt"
    assert training.main(common + ["--out", str(second), "--retune", str(first), "--tune-planes", "0",
                                   "--tune-images", str(tmp_path / "plate_image.tif")]) == 0
    model = load_model(model_file)
    tiny.assert_same_state(load_decoder(first, model=model).state_dict(), load_decoder(second, model=model).state_dict())
    info = read_decoder_info(second)
    assert info["training"]["tuning"]["planes"] == {"generated": 0, "files": ["plate_image.tif"]}
    assert info["training"]["steps"] == 4  # the training summary is kept
    with pytest.raises(FileNotFoundError, match="no labels beside"):
        training.labelled_images([tmp_path / "plate_labels.tif"])
