"""SAM 2.1 inference shortcuts give the plain path's results."""

from __future__ import annotations

import torch

from napari_sam.model.sam2.decoder import Sam2MaskDecoder
from tiny import build_tiny_sam2


def test_first_layer_image_work_is_reused_across_prompts(monkeypatch):
    model = build_tiny_sam2()
    labels = torch.ones(1, 1, dtype=torch.int64)
    points = [torch.tensor([[[30.0, 40.0]]]), torch.tensor([[[90.0, 20.0]]]), torch.tensor([[[64.0, 64.0]]])]
    with torch.inference_mode():
        features = model.encode(torch.randn(1, 3, 128, 128))
    with torch.no_grad():  # (the memo needs version counters: not inference tensors)
        features = {key: value.clone() for key, value in features.items()}
        shortcut = [model.decode(features, p, labels) for p in points]
        memo = model.sam_mask_decoder.__dict__.get("_first_layer_memo")
        assert memo is not None and memo["image"] is not None  # computed on the second decode, then reused
        monkeypatch.setattr(Sam2MaskDecoder, "_first_layer_image", lambda self, *args: None)
        plain = [model.decode(features, p, labels) for p in points]
    for (masks, iou), (masks_plain, iou_plain) in zip(shortcut, plain):
        torch.testing.assert_close(masks, masks_plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(iou, iou_plain, atol=1e-6, rtol=0)


def test_pixelwise_upscaling_with_skips_equals_the_transposed_convs(monkeypatch):
    model = build_tiny_sam2()
    with torch.no_grad():  # random decoder weights off their init values, so that every term counts
        for parameter in model.sam_mask_decoder.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    labels = torch.ones(2, 1, dtype=torch.int64)
    points = torch.tensor([[[30.0, 40.0]], [[90.0, 20.0]]])
    with torch.inference_mode():
        shared = model.encode(torch.randn(1, 3, 128, 128))  # one image, two prompts
        per_image = model.encode(torch.randn(2, 3, 128, 128))  # two images, one prompt each
        fast = [model.decode(features, points, labels) for features in (shared, per_image, shared)]
        monkeypatch.setattr(Sam2MaskDecoder, "_pixelwise_upscaling", lambda self: False)
        plain = [model.decode(features, points, labels) for features in (shared, per_image, shared)]
    for (masks, iou), (masks_plain, iou_plain) in zip(fast, plain):
        assert masks.shape == masks_plain.shape == (2, 3, 32, 32)
        torch.testing.assert_close(masks, masks_plain, atol=1e-5 * float(masks_plain.abs().max()), rtol=0)
        torch.testing.assert_close(iou, iou_plain)
