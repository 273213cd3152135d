"""LoRA and the training modes: what is trained, and LoRA merged into a standard model."""

from __future__ import annotations

import torch
from training_samples import disc_images, tiny_sam

from napari_sam.training import finetune
from napari_sam.training.lora import LoRALinear, apply_lora, configure_trainable, merge_lora


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

    images, labels = disc_images(2)
    out = tmp_path / "lora.pt"
    result = finetune(images, labels, base=tiny_sam(), train="lora", epochs=1, out=out,
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


def test_iou_head_mode_reranks_without_changing_any_mask():
    import numpy as np
    import torch
    from training_samples import disc_images

    from napari_sam.training import TrainConfig, finetune

    sam = tiny_sam()
    configure_trainable(sam, "iou_head")
    names = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("mask_decoder.iou_prediction_head.") for n in names)

    images, labels = disc_images(3)
    base = tiny_sam()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = finetune(images, labels, base=base, config=TrainConfig.from_options(
        train="iou_head", epochs=2, lr=1e-2, rounds=1, device="cpu"))
    after = result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mask_decoder.iou_prediction_head.") for k in changed)
    embedding = torch.randn(1, *result.model.image_encoder(torch.zeros(1, 3, 64, 64)).shape[1:])
    points, point_labels = torch.tensor([[[20.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long)
    fresh = tiny_sam()
    with torch.no_grad():
        masks, scores = result.model.decode(embedding, points, point_labels)
        want_masks, want_scores = fresh.decode(embedding, points, point_labels)
    torch.testing.assert_close(masks, want_masks, rtol=0, atol=0)
    assert not np.allclose(scores.numpy(), want_scores.numpy())
