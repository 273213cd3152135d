"""The training state on disk: atomic writes, plain data, and resume refused when it cannot be exact."""

from __future__ import annotations

import pytest
import torch
from training_samples import disc_images, tiny_sam

from napari_sam.training import TrainConfig, Trainer, load_train_state, state_path_for
from napari_sam.training import state as state_mod
from napari_sam.training.data import SampleSet, samples_from_arrays


def test_the_state_goes_beside_the_model():
    assert state_path_for("runs/nuclei.pt").as_posix() == "runs/nuclei.state.pt"


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    state_mod.save_train_state({"step": 1}, path)

    def broken(obj, stream):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        state_mod.save_train_state({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_state_is_plain_data_and_other_files_are_refused(tmp_path):
    images, labels = disc_images(2)
    samples = samples_from_arrays(images, labels)
    trainer = Trainer(tiny_sam(), TrainConfig.from_options(rounds=1), SampleSet(samples, 64), samples,
                      state_path=tmp_path / "run" / "state.pt")
    trainer.save_state()  # the folder is made
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["config"] == trainer.config.to_dict() and state["step"] == 0
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a napari-sam training state"):
        load_train_state(tmp_path / "other.pt")


def test_resume_needs_the_same_base_model_and_training_mode(tmp_path):
    images, labels = disc_images(2)
    samples = samples_from_arrays(images, labels)
    config = TrainConfig.from_options(rounds=1)
    state = Trainer(tiny_sam(), config, SampleSet(samples, 64), samples).state_dict()
    other_base = Trainer(tiny_sam(seed=1), config, SampleSet(samples, 64), samples)
    with pytest.raises(ValueError, match="another base model"):
        other_base.load_state_dict(state)
    other_mode = Trainer(tiny_sam(), config.with_options(train="decoder+prompt"), SampleSet(samples, 64), samples)
    with pytest.raises(ValueError, match="train='decoder' there, 'decoder\\+prompt' here"):
        other_mode.load_state_dict(state)
