"""The loop: learning, resume exactly where it stopped, cancel, the kind head, divergence."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from training_samples import disc_images, tiny_sam, two_kind_samples

from napari_sam.training import TrainConfig, Trainer, TrainingDiverged, finetune, load_train_state, state_path_for
from napari_sam.training import data as data_mod
from napari_sam.training.data import SampleSet, samples_from_arrays
from napari_sam.training.loop import mean_loss


def _config(**options) -> TrainConfig:
    return TrainConfig.from_options(**{"epochs": 3, "lr": 1e-3, "rounds": 2, "objects_per_step": 2, "device": "cpu",
                                       **options})


def test_short_finetune_lowers_the_loss_and_raises_validation_iou():
    images, labels = disc_images(6)
    # SAM's 20:1 focal weighting keeps a decoder trained from scratch predicting nothing for
    # a few hundred steps before it takes off; at 1:1 it learns at once, so the test is short.
    config = TrainConfig.from_options(epochs=80, lr=3e-3, weight_decay=0.0, rounds=3, focal_weight=1.0,
                                      val_fraction=0.34, device="cpu")
    # the same split finetune makes (seeded by config.seed), to measure the untrained model
    train, val, _ = data_mod.split_samples(samples_from_arrays(images, labels), 0.34, np.random.default_rng([0, 3]))
    before = Trainer(tiny_sam(), config, SampleSet(train, 64), val).validate()

    result = finetune(images, labels, base=tiny_sam(), train="decoder", epochs=config.epochs, config=config)
    losses = [e["loss"] for e in result.history["train"]]
    assert len(losses) == result.total_steps == 320
    # measured: loss 1.00 -> 0.65; mIoU point 0.04 -> 0.31, box 0.05 -> 0.32
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert result.best["point_miou"] > before["point_miou"] + 0.15
    assert result.best["box_miou"] > before["box_miou"] + 0.15


def test_resume_continues_from_the_saved_step(tmp_path):
    images, labels = disc_images(3)
    full = finetune(images, labels, base=tiny_sam(), config=_config(), epochs=3, state_path=tmp_path / "full.pt")
    full_losses = [e["loss"] for e in full.history["train"]]
    total = full.total_steps
    assert total == 12  # 2 training images x 4 objects / 2 per step, 3 epochs
    stop_at = 7  # in the middle of the second epoch

    seen = []

    def cancel():
        return len(seen) >= stop_at

    state_path = tmp_path / "run.state.pt"
    first = finetune(images, labels, base=tiny_sam(), config=_config(), epochs=3, state_path=state_path,
                     on_progress=lambda e: seen.append(e) if e["event"] == "step" else None, cancel=cancel)
    assert first.cancelled and first.step == stop_at
    state = load_train_state(state_path)
    assert state["step"] == stop_at
    optimizer_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert optimizer_steps == {stop_at}

    second = finetune(images, labels, base=tiny_sam(), config=_config(), epochs=3, state_path=state_path,
                      resume=True)
    assert not second.cancelled and second.step == total
    losses = [e["loss"] for e in second.history["train"]]
    assert [e["step"] for e in second.history["train"]] == list(range(1, total + 1))
    np.testing.assert_allclose(losses, full_losses, rtol=1e-4)
    assert second.best["score"] == pytest.approx(full.best["score"], abs=1e-4)


def test_cancel_keeps_the_last_checkpoint_loadable(tmp_path):
    images, labels = disc_images(2)
    out = tmp_path / "model.pt"
    stop = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        if event["event"] == "epoch":
            stop.set()  # cancel right after the first epoch's checkpoint

    result = finetune(images, labels, base=tiny_sam(), config=_config(), epochs=3, out=out,
                      on_progress=progress, cancel=stop)
    assert result.cancelled and events[-1]["event"] == "cancelled"
    state = torch.load(state_path_for(out), weights_only=True)  # plain data only
    assert state["step"] == result.step == len(result.history["train"])
    assert len(state["history"]["val"]) == 1
    assert result.model_path == out and out.exists()  # the best model so far
    assert not list(tmp_path.glob(".*.tmp"))


def test_kind_loss_teaches_the_encoder_object_kinds_and_resumes(tmp_path):
    from napari_sam.inference.text import TEXT_DIM

    samples = two_kind_samples()
    with pytest.raises(ValueError, match="kind_weight > 0 needs text"):
        Trainer(tiny_sam(), TrainConfig.from_options(train="all", kind_weight=1.0), SampleSet(samples, 64), samples)
    sam = tiny_sam(text_dim=TEXT_DIM)
    config = TrainConfig.from_options(train="all", text_probability=0.0001, kind_weight=1.0, rounds=1,
                                      objects_per_step=8, lr=3e-3, warmup_max_steps=1, schedule="constant")
    trainer = Trainer(sam, config, SampleSet(samples, 64), samples, state_path=tmp_path / "state.pt")
    assert trainer.kind_head.out_channels == len(trainer.phrases.kinds()) + 1
    encoder = sam.image_encoder.patch_embed.proj.weight.detach().clone()
    step = data_mod.Step(0, ())
    losses = [trainer.train_step(step, np.random.default_rng(i))["kind_loss"] for i in range(25)]
    assert not torch.equal(encoder, sam.image_encoder.patch_embed.proj.weight)  # the loss reaches the encoder
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses

    trainer.save_state()
    state = load_train_state(tmp_path / "state.pt")
    assert set(state["kind_head"]) == {"weight", "bias"}
    again = Trainer(tiny_sam(text_dim=TEXT_DIM), config, SampleSet(samples, 64), samples)
    again.sam.load_state_dict(sam.state_dict())
    again.load_state_dict(state)
    torch.testing.assert_close(again.kind_head.weight, trainer.kind_head.weight)
    # the kind head is the trainer's, never part of the model
    assert not any("kind" in name for name in sam.state_dict())


def test_a_diverging_finetune_stops_with_one_line_and_keeps_the_last_good_state(tmp_path):
    images, labels = disc_images(3)
    out = tmp_path / "model.pt"
    steps = []
    with pytest.raises(TrainingDiverged) as raised:
        finetune(images, labels, base=tiny_sam(), config=_config(lr=1e8, checkpoint_every=1), out=out,
                 on_progress=lambda e: steps.append(e) if e["event"] == "step" else None)
    message = str(raised.value)
    assert "\n" not in message and "training diverged at step 2 of 12" in message and "lr 1e+08" in message
    assert f"step 1) is kept in {state_path_for(out)}" in message
    assert len(steps) == 1 and math.isfinite(steps[0]["loss"])  # no NaN step was reported
    assert not out.exists()  # no model with NaN weights, "complete" or not
    state = load_train_state(state_path_for(out))
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["trainable"].values())


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_weights_that_stop_being_finite_stop_the_step():
    images, labels = disc_images(2)
    samples = samples_from_arrays(images, labels)
    trainer = Trainer(tiny_sam(), _config(), SampleSet(samples, 64), samples)
    step = trainer.optimizer.step

    def poisoned(*args, **kwargs):
        result = step(*args, **kwargs)
        with torch.no_grad():
            trainer.params[0].view(-1)[0] = float("inf")
        return result

    trainer.optimizer.step = poisoned
    with pytest.raises(TrainingDiverged, match=r"weights are not finite \(mask_decoder\..*no training state is written"):
        trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(0))


def test_the_epoch_loss_leaves_out_only_steps_without_objects():
    trained = [{"loss": 1.0, "objects": 2}, {"loss": 3.0, "objects": 2}]
    assert mean_loss(trained + [{"loss": float("nan")}]) == 2.0  # an image without objects trains nothing
    assert math.isnan(mean_loss(trained + [{"loss": float("nan"), "objects": 2}]))  # never hidden
