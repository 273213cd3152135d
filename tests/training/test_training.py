"""Training: losses, simulated interaction, data, LoRA, the trainer, resume and cancel.

Everything runs on a tiny SAM (64-pixel input, 8x8 embedding grid, 32-wide decoder) and
small generated images, so each test takes seconds on a CPU.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_sam.model import build_sam
from napari_sam.training import data as data_mod
from napari_sam.training.data import Augmentation, Sample, SampleSet, find_pairs, load_pairs, samples_from_arrays
from napari_sam.training.lora import LoRALinear, apply_lora, configure_trainable, merge_lora
from napari_sam.training.losses import dice_loss, focal_loss, iou_mse, mask_iou, sam_loss
from napari_sam.training.simulation import make_schedule, sample_correction_points
from napari_sam.training.trainer import TrainConfig, Trainer, finetune, load_train_state, state_path_for
from tiny import TINY_TRAINING as TINY

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


@pytest.fixture(autouse=True)
def _one_thread():
    # The CPU is shared; one thread also makes float sums reproducible run to run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(dict(TINY))


def disc_image(seed: int, size: int = 64, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Bright noisy discs (radius 6-11 px) on a dark background, with exact instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for label in range(1, count + 1):
        for _ in range(50):
            r = rng.uniform(6, 11)
            cy, cx = rng.uniform(r, size - r, size=2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if not (labels[disc] > 0).any():
                labels[disc] = label
                break
    image = np.where(labels > 0, 180.0, 40.0) + rng.normal(0, 15, (size, size))
    return image.astype(np.float32), labels


# --- losses ----------------------------------------------------------------------------

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


# --- simulated interaction -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    targets=arrays(bool, (3, 7, 9)),
    predictions=arrays(bool, (3, 7, 9)),
    seed=st.integers(0, 2**32 - 1),
)
def test_corrective_point_lies_in_the_error_region_with_the_right_sign(targets, predictions, seed):
    points, labels = sample_correction_points(predictions, targets, np.random.default_rng(seed))
    for i in range(3):
        error = predictions[i] != targets[i]
        if not error.any():
            assert labels[i] == -1
            continue
        x, y = points[i]
        row, col = int(y), int(x)
        assert (row, col) == (y, x)
        assert error[row, col]
        # a missed object pixel asks for more (positive), a wrong pixel for less (negative)
        assert labels[i] == (1 if targets[i][row, col] else 0)


@pytest.mark.parametrize("seed", range(20))
def test_schedule_has_11_rounds_two_without_a_new_point_and_multimask_first(seed):
    schedule = make_schedule(np.random.default_rng(seed), rounds=11, first_is_box=False)
    assert len(schedule) == 11
    later = schedule[1:]
    assert sum(not r.new_point for r in later) == 2
    assert not later[-1].new_point
    assert schedule[0].multimask and not any(r.multimask for r in later)
    assert later[0].new_point  # round 2 always corrects round 1
    assert not make_schedule(np.random.default_rng(seed), 11, first_is_box=True)[0].multimask


def _recording_trainer(config: TrainConfig) -> tuple[Trainer, list[dict]]:
    image, labels = disc_image(0)
    samples = samples_from_arrays(image, labels)
    trainer = Trainer(tiny_sam(), config, SampleSet(samples, 64), samples)
    calls: list[dict] = []
    decode = trainer.sam.decode

    def recording(embeddings, point_coords=None, point_labels=None, boxes=None, mask_inputs=None, multimask=True,
                  **extra):
        calls.append({
            "points": 0 if point_coords is None else point_coords.shape[1],
            "labels": None if point_labels is None else point_labels.clone(),
            "box": boxes is not None,
            "mask": mask_inputs,
            "multimask": multimask,
        })
        return decode(embeddings, point_coords, point_labels, boxes, mask_inputs, multimask, **extra)

    trainer.sam.decode = recording
    return trainer, calls


@pytest.mark.parametrize("box_first", [False, True])
def test_training_step_runs_the_11_round_interaction(box_first):
    config = TrainConfig(box_probability=1.0 if box_first else 0.0, objects_per_step=3)
    trainer, calls = _recording_trainer(config)
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


def test_text_only_rounds_keep_a_gradient_where_dice_alone_has_none():
    """A text path that says "nothing" with saturated logits: dice's gradient vanishes,
    the focal term's does not; text-only rounds therefore get their own focal weight."""
    from napari_sam.training.losses import LossWeights

    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    gradients = {}
    for focal in (0.0, 20.0):
        logits = torch.full((1, 1, 16, 16), -60.0, requires_grad=True)
        sam_loss(logits, torch.zeros(1, 1), target, LossWeights(focal=focal)).total.backward()
        gradients[focal] = float(logits.grad.abs().max())
    assert gradients[0.0] < 1e-12 < 1e-4 < gradients[20.0]

    trainer, _ = _recording_trainer(TrainConfig(focal_weight=0.0, text_focal_weight=20.0))
    assert (trainer.weights.focal, trainer.text_weights.focal) == (0.0, 20.0)
    trainer, _ = _recording_trainer(TrainConfig(focal_weight=3.0))
    assert trainer.text_weights.focal == 3.0


def test_loss_at_input_resolution_sees_edges_finer_than_a_low_res_pixel():
    masks = np.zeros((1, 64, 64), bool)
    masks[0, 11:16, 11:16] = True  # 5 px: edges inside low-res pixels (2 px each)
    trainers = {where: _recording_trainer(TrainConfig(loss_resolution=where))[0] for where in ("low", "input")}
    low_targets, low_at = trainers["low"]._loss_targets(masks)
    input_targets, input_at = trainers["input"]._loss_targets(masks)
    assert low_targets.shape[-2:] == (32, 32) and input_targets.shape[-2:] == (64, 64)
    # Logits that reproduce the low-res target exactly: no loss on the low-res grid, but
    # upsampled to the input they miss the 5-px square's true edges.
    logits = (low_targets * 2 - 1) * 20.0
    exact = sam_loss(low_at(logits), torch.ones(1, 1), low_targets).mask
    upsampled = sam_loss(input_at(logits), torch.ones(1, 1), input_targets).mask
    assert float(exact) < 1e-6 < 0.01 < float(upsampled)

    trainer = trainers["input"]
    metrics = trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(0))
    assert np.isfinite(metrics["loss"])
    with pytest.raises(ValueError, match="loss_resolution"):
        TrainConfig(loss_resolution="full")


def test_named_recipes():
    assert TrainConfig.recipe("sam") == TrainConfig()
    fast = TrainConfig.recipe("fast", epochs=3)
    assert (fast.rounds, fast.focal_weight, fast.lr, fast.loss_resolution, fast.epochs) == (3, 0.0, 1e-3, "input", 3)
    with pytest.raises(ValueError, match="unknown recipe 'quick'"):
        TrainConfig.recipe("quick")


def _two_kind_samples(count: int = 2) -> list[Sample]:
    from napari_sam.imaging import to_rgb_uint8
    from napari_sam.synthetic import generate

    samples = []
    for seed in range(count):
        image = generate((64, 64), kinds=("nucleus", "elongated cell"), size_range=(8, 14), seed=seed)
        classes = {int(k): str(v) for k, v in image.classes.items()}
        samples.append(Sample(to_rgb_uint8(image.image), image.labels.astype(np.int64), f"kinds[{seed}]", classes))
    return samples


def test_text_training_has_text_rounds_learns_the_projection_and_validates_text():
    from napari_sam.inference.text import TEXT_DIM

    samples = _two_kind_samples()
    torch.manual_seed(0)
    sam = build_sam({**TINY, "text_dim": TEXT_DIM})
    config = TrainConfig(train="decoder+prompt", text_probability=1.0, rounds=2, objects_per_step=2, lr=1e-3,
                         text_focal_weight=5.0, text_focal_alpha=0.5, text_focal_gamma=0.0)
    trainer = Trainer(sam, config, SampleSet(samples, 64), samples)
    assert (trainer.text_weights.focal, trainer.text_weights.focal_alpha, trainer.text_weights.focal_gamma) == (
        5.0, 0.5, 0.0)
    assert (trainer.weights.focal_alpha, trainer.weights.focal_gamma) == (0.25, 2.0)  # mask rounds keep SAM's
    calls = []
    decode = trainer.sam.decode

    def recording(embeddings, point_coords=None, point_labels=None, boxes=None, mask_inputs=None, multimask=True,
                  text_embeddings=None):
        calls.append((point_coords is not None or boxes is not None, text_embeddings is not None))
        return decode(embeddings, point_coords, point_labels, boxes, mask_inputs, multimask,
                      text_embeddings=text_embeddings)

    trainer.sam.decode = recording
    projection = sam.prompt_encoder.text_projection[0].weight.detach().clone()
    trainer.train_step(trainer.train_set.epoch_plan(0, 2, 0)[0], np.random.default_rng(0))
    assert (True, True) in calls  # text beside points / a box
    assert (False, True) in calls  # text alone
    assert not torch.equal(projection, sam.prompt_encoder.text_projection[0].weight)

    result = trainer.validate()
    assert 0.0 <= result["text_miou"] <= 1.0
    if any(len(set(sample.classes.values())) > 1 for sample in samples):
        assert 0.0 <= result["text_miou_mixed"] <= 1.0
    else:
        assert "text_miou_mixed" not in result
    assert result["score"] == pytest.approx((result["point_miou"] + result["box_miou"] + result["text_miou"]) / 3)


def test_kind_loss_teaches_the_encoder_object_kinds_and_resumes(tmp_path):
    from napari_sam.inference.text import TEXT_DIM

    samples = _two_kind_samples()
    with pytest.raises(ValueError, match="kind_weight > 0 needs text"):
        Trainer(tiny_sam(), TrainConfig(train="all", kind_weight=1.0), SampleSet(samples, 64), samples)
    torch.manual_seed(0)
    sam = build_sam({**TINY, "text_dim": TEXT_DIM})
    config = TrainConfig(train="all", text_probability=0.0001, kind_weight=1.0, rounds=1, objects_per_step=8,
                         lr=3e-3, warmup_max_steps=1, schedule="constant")
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
    torch.manual_seed(0)
    again = Trainer(build_sam({**TINY, "text_dim": TEXT_DIM}), config, SampleSet(samples, 64), samples)
    again.sam.load_state_dict(sam.state_dict())
    again.load_state_dict(state)
    torch.testing.assert_close(again.kind_head.weight, trainer.kind_head.weight)
    # the kind head is the trainer's, never part of the model
    assert not any("kind" in name for name in sam.state_dict())


# --- data ------------------------------------------------------------------------------


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


def test_finetune_on_a_large_plane_trains_on_crops(tmp_path):
    image, labels = disc_image(0, size=160, count=6)
    config = TrainConfig(epochs=1, rounds=1, objects_per_step=2, val_max_objects=2)
    result = finetune(image, labels, base=tiny_sam(), out=tmp_path / "m.pt", config=config)
    from napari_sam.checkpoints import load_model

    assert "crops of 64 px" in load_model(tmp_path / "m.pt", device="cpu").metadata["data"]
    shrunk = finetune(image, labels, base=tiny_sam(), config=config, tile_large_planes=False)
    assert result.total_steps > shrunk.total_steps  # crops overlap: more objects per epoch


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
    result = finetune("synthetic", base=tiny_sam(), epochs=1, rounds=2, synthetic_shape=(96, 96),
                      synthetic_steps_per_epoch=2, synthetic_val_images=1, device="cpu")
    assert result.step == 2 and len(result.history["val"]) == 1


# --- LoRA ------------------------------------------------------------------------------


def test_merged_lora_reproduces_the_adapted_encoder():
    sam = tiny_sam()
    names = apply_lora(sam.image_encoder, rank=2, targets=("qkv", "proj"))
    assert names == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    with torch.no_grad():
        for module in sam.image_encoder.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(0, 0.5)  # a trained, non-zero update
    x = sam.preprocess(torch.rand(1, 3, 64, 64) * 255)
    with torch.no_grad():
        adapted = sam.encode(x)
        assert merge_lora(sam) == 2
        merged = sam.encode(x)
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert set(sam.state_dict()) == set(tiny_sam().state_dict())


def test_train_modes_freeze_the_right_parts():
    counts = {}
    for mode in ("decoder", "decoder+prompt", "lora", "all"):
        sam = tiny_sam()
        params = configure_trainable(sam, mode)
        names = {n for n, p in sam.named_parameters() if p.requires_grad}
        assert len(params) == len(names)
        assert all(n.startswith("mask_decoder.") for n in names) == (mode == "decoder")
        assert any(n.startswith("prompt_encoder.") for n in names) == (mode in ("decoder+prompt", "all"))
        encoder = {n for n in names if n.startswith("image_encoder.")}
        if mode == "lora":
            assert encoder and all(n.endswith(("lora_a", "lora_b")) for n in encoder)
        counts[mode] = len(names)
    assert counts["decoder"] < counts["decoder+prompt"] < counts["all"]


def test_lora_finetune_saves_a_standard_model_that_load_model_reads(tmp_path):
    from napari_sam.checkpoints import load_model

    images, labels = zip(*(disc_image(s) for s in range(2)))
    out = tmp_path / "lora.pt"
    result = finetune(list(images), list(labels), base=tiny_sam(), train="lora", epochs=1, out=out,
                      rounds=2, lr=1e-3, lora_rank=2, device="cpu")
    loaded = load_model(out, device="cpu")
    keys = set(loaded.state_dict())
    assert not any("lora" in k for k in keys) and keys == set(tiny_sam().state_dict())
    assert loaded.metadata["trained"] == "lora" and "point_miou" in loaded.metadata["metrics"]
    x = loaded.preprocess(torch.rand(1, 3, 64, 64) * 255)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), result.model.encode(x), atol=1e-5)
    # the LoRA update was trained: the encoder differs from the base
    with torch.no_grad():
        assert not torch.allclose(loaded.encode(x), tiny_sam().encode(x), atol=1e-6)


# --- trainer ---------------------------------------------------------------------------


def test_short_finetune_lowers_the_loss_and_raises_validation_iou():
    images, labels = zip(*(disc_image(s) for s in range(6)))
    images, labels = list(images), list(labels)
    # SAM's 20:1 focal weighting keeps a decoder trained from scratch predicting nothing for
    # a few hundred steps before it takes off; at 1:1 it learns at once, so the test is short.
    config = TrainConfig(epochs=80, lr=3e-3, weight_decay=0.0, rounds=3, focal_weight=1.0,
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


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "lr": 1e-3, "rounds": 2, "objects_per_step": 2, "device": "cpu", **kw})


def test_resume_continues_from_the_saved_step(tmp_path):
    images, labels = zip(*(disc_image(s) for s in range(3)))
    images, labels = list(images), list(labels)
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
    images, labels = zip(*(disc_image(s) for s in range(2)))
    out = tmp_path / "model.pt"
    stop = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        if event["event"] == "epoch":
            stop.set()  # cancel right after the first epoch's checkpoint

    result = finetune(list(images), list(labels), base=tiny_sam(), config=_config(), epochs=3, out=out,
                      on_progress=progress, cancel=stop)
    assert result.cancelled and events[-1]["event"] == "cancelled"
    state = torch.load(state_path_for(out), weights_only=True)  # plain data only
    assert state["step"] == result.step == len(result.history["train"])
    assert len(state["history"]["val"]) == 1
    assert result.model_path == out and out.exists()  # the best model so far
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    from napari_sam.training import trainer as trainer_mod

    path = tmp_path / "state.pt"
    trainer_mod.atomic_torch_save({"step": 1}, path)

    def broken(obj, stream):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(trainer_mod.torch, "save", broken)
    with pytest.raises(OSError):
        trainer_mod.atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_cli_finetune_runs_and_writes_a_model(tmp_path, capsys):
    import argparse

    from napari_sam.checkpoints import save_model
    from napari_sam.training.cli import add_parser

    base = save_model(tiny_sam(), tmp_path / "base.pt")
    folder = tmp_path / "data"
    folder.mkdir()
    for s in range(2):
        image, labels = disc_image(s)
        _write_tif(folder / f"img{s}_image.tif", image)
        _write_tif(folder / f"img{s}_labels.tif", labels)
    parser = argparse.ArgumentParser(prog="napari-sam")
    add_parser(parser.add_subparsers())
    out = tmp_path / "tuned.pt"
    args = parser.parse_args(["finetune", "--images", str(folder), "--base", str(base), "--epochs", "1",
                              "--out", str(out), "--device", "cpu", "--seed", "1", "--recipe", "fast",
                              "--focal-weight", "0.5", "--rounds", "2"])
    assert args.func(args) == 0
    assert out.exists() and state_path_for(out).exists()
    assert "saved" in capsys.readouterr().out
    config = load_train_state(state_path_for(out))["config"]
    # The recipe's settings, the flags given overriding it.
    assert (config["lr"], config["loss_resolution"]) == (1e-3, "input")
    assert (config["focal_weight"], config["rounds"]) == (0.5, 2)
