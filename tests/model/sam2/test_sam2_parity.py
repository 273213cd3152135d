"""SAM 2.1 image model: numerical parity with the `sam2` 1.1.0 reference on perturbed weights.

The reference (Meta's `sam2` package, test-only; see scripts/test.sh) is built from its
own sam2.1 hydra config with small dimensions, every tensor is moved off its init value
(`reference.perturb_`), and the same state dict is loaded into our model unchanged. The
reference side runs through `SAM2ImagePredictor` (its transforms, box-as-points, padding
point, clamping), ours through `Sam2.prepare / encode / decode` and plain geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

reference = pytest.importorskip("reference")
import reference_shims  # noqa: E402

try:
    reference_shims.import_sam2_reference()
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"the sam2 reference is not installed ({error}); scripts/test.sh installs it "
        "(SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 ...)",
        allow_module_level=True,
    )

from napari_sam.model.sam2 import build_sam2, detect_sam2_config, load_sam2  # noqa: E402
from napari_sam.model.sam2.model import LOGIT_CLAMP  # noqa: E402

# Small but structurally complete: windowed blocks with padding (16 tokens in 14-windows,
# 8 in 7-windows), two global blocks, q-pooling into every stage, a stretched input.
SMALL = {
    "embed_dim": 16, "num_heads": 1, "stages": [1, 2, 4, 1], "global_att_blocks": [4, 6],
    "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7], "image_size": 256, "d_model": 32,
    "mem_dim": 16, "memory_mlp_dim": 64,
}
FEATURE_RTOL = 1e-5  # of the reference's largest magnitude
LOGIT_ATOL = 2e-4
IOU_ATOL = 1e-5


def _overrides(config: dict) -> list[str]:
    trunk = "++model.image_encoder.trunk."
    channels = [config["embed_dim"] * 2**i for i in range(len(config["stages"]))][::-1]
    return [
        f"++model.image_size={config['image_size']}",
        f"{trunk}embed_dim={config['embed_dim']}",
        f"{trunk}num_heads={config['num_heads']}",
        f"{trunk}stages={config['stages']}",
        f"{trunk}global_att_blocks={config['global_att_blocks']}",
        f"{trunk}window_spec={config['window_spec']}",
        f"{trunk}window_pos_embed_bkg_spatial_size={config['window_pos_embed_bkg_spatial_size']}",
        f"++model.image_encoder.neck.d_model={config['d_model']}",
        f"++model.image_encoder.neck.backbone_channel_list={channels}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={config['d_model']}",
        *_memory_overrides(config["d_model"], config.get("mem_dim", 64), config.get("memory_mlp_dim", 2048)),
    ]


def _memory_overrides(dim: int, mem_dim: int, mlp_dim: int) -> list[str]:
    attention, encoder = "++model.memory_attention.", "++model.memory_encoder."
    return [
        f"{attention}d_model={dim}",
        f"{attention}layer.d_model={dim}",
        f"{attention}layer.dim_feedforward={mlp_dim}",
        f"{attention}layer.self_attention.embedding_dim={dim}",
        f"{attention}layer.cross_attention.embedding_dim={dim}",
        f"{attention}layer.cross_attention.kv_in_dim={mem_dim}",
        f"{encoder}out_dim={mem_dim}",
        f"{encoder}in_dim={dim}",
        f"{encoder}position_encoding.num_pos_feats={mem_dim}",
        f"{encoder}mask_downsampler.embed_dim={dim}",
        f"{encoder}fuser.layer.dim={dim}",
    ]


def build_reference_sam2(config: dict, seed: int = 0, base: str = "sam2.1_hiera_t"):
    """The reference SAM2Base from its sam2.1 yaml and builder with `config`'s dimensions, perturbed."""
    from sam2.build_sam import build_sam2 as reference_build_sam2

    # The official builder: it also switches on the dynamic multimask step.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = reference_build_sam2(f"configs/sam2.1/{base}.yaml", None, device="cpu",
                                     hydra_overrides_extra=_overrides(config))
    return reference.perturb_(model, seed=seed)


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random RGB image with noise."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(shape[0] // 16 + 1, shape[1] // 16 + 1, 3))
    image = np.kron(small, np.ones((16, 16, 1)))[: shape[0], : shape[1]]
    image += rng.normal(0, 20, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class Pair:
    """Reference predictor and our model on the same weights and image."""

    def __init__(self, config: dict, image: np.ndarray) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.ref_model = build_reference_sam2(config)
        self.ours = load_sam2(self.ref_model.state_dict(), config)
        self.ref = SAM2ImagePredictor(self.ref_model)
        grid = config["image_size"] // 4
        # The predictor hard-codes the 1024-pixel feature sizes.
        self.ref._bb_feat_sizes = [(grid, grid), (grid // 2, grid // 2), (grid // 4, grid // 4)]
        self.image = image
        with torch.inference_mode():
            self.ref.set_image(image)
            self.inputs, self.frame = self.ours.prepare(image)
            self.features = self.ours.encode(self.inputs)

    def ours_predict(self, points_xy=None, labels=None, box=None, mask_input=None, multimask=True):
        """Our decode with the reference predictor's geometry (image xy -> stretched input xy)."""
        height, width = self.image.shape[:2]
        scale = torch.tensor([self.ours.image_size / width, self.ours.image_size / height])
        coords = None if points_xy is None else torch.as_tensor(points_xy, dtype=torch.float32) * scale
        labels = None if labels is None else torch.as_tensor(labels)
        if coords is not None and coords.ndim == 2:
            coords, labels = coords[None], labels[None]
        boxes = None
        if box is not None:
            boxes = (torch.as_tensor(box, dtype=torch.float32).reshape(-1, 2, 2) * scale).reshape(-1, 4)
        masks_in = None if mask_input is None else torch.as_tensor(mask_input).reshape(-1, 1, *self.ours.low_res_size)
        with torch.inference_mode():
            low, iou = self.ours.decode(self.features, coords, labels, boxes, masks_in, multimask)
            full = F.interpolate(low, (height, width), mode="bilinear", align_corners=False)
        return full, iou, low

    def compare(self, **prompt):
        multimask = prompt.pop("multimask", True)
        ref_masks, ref_iou, ref_low = self.ref.predict(
            point_coords=prompt.get("points_xy"), point_labels=prompt.get("labels"), box=prompt.get("box"),
            mask_input=prompt.get("mask_input"), multimask_output=multimask, return_logits=True,
        )
        full, iou, low = self.ours_predict(multimask=multimask, **prompt)
        full, iou, low = (t.squeeze(0).numpy() if t.shape[0] == 1 else t.numpy() for t in (full, iou, low))
        np.testing.assert_allclose(iou, ref_iou, atol=IOU_ATOL, rtol=0)
        np.testing.assert_allclose(np.clip(low, -LOGIT_CLAMP, LOGIT_CLAMP), ref_low, atol=LOGIT_ATOL, rtol=0)
        np.testing.assert_allclose(full, ref_masks, atol=LOGIT_ATOL, rtol=0)
        assert ((full > 0) == (ref_masks > 0)).mean() > 0.9999
        return low, iou


@pytest.fixture(scope="module")
def pair() -> Pair:
    return Pair(SMALL, _image((200, 300), seed=1))


def _close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = FEATURE_RTOL) -> None:
    assert ours.shape == ref.shape
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, ref, atol=rtol * scale, rtol=0)


def test_prepared_input_matches_reference_transforms(pair):
    expected = pair.ref._transforms(pair.image)[None]
    _close(pair.inputs, expected)
    assert pair.frame.original_size == (200, 300)
    assert pair.frame.input_size == (256, 256)


def test_every_encoder_level_and_position_encoding_match(pair):
    decoder = pair.ours.sam_mask_decoder
    with torch.inference_mode():
        out = pair.ref_model.forward_image(pair.inputs)
        levels = pair.ours.image_encoder(pair.inputs)
        assert len(levels) == len(out["backbone_fpn"]) == 3
        # The reference applies conv_s0 / conv_s1 to the two finest levels in forward_image.
        _close(decoder.conv_s0(levels[0]), out["backbone_fpn"][0])
        _close(decoder.conv_s1(levels[1]), out["backbone_fpn"][1])
        _close(levels[2], out["backbone_fpn"][2])
        for level, pos in zip(levels, out["vision_pos_enc"]):
            _close(pair.ours.image_encoder.position_encoding(level), pos)


def test_image_features_match_the_predictors(pair):
    ref = pair.ref._features
    _close(pair.features["image_embed"], ref["image_embed"])
    _close(pair.features["high_res_s0"], ref["high_res_feats"][0])
    _close(pair.features["high_res_s1"], ref["high_res_feats"][1])


POINTS = np.array([[150.0, 100.0], [60.0, 40.0], [250.0, 170.0]])


@pytest.mark.parametrize("multimask", [True, False])
def test_one_point(pair, multimask):
    pair.compare(points_xy=POINTS[:1], labels=np.array([1]), multimask=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_positive_and_negative_points(pair, multimask):
    pair.compare(points_xy=POINTS, labels=np.array([1, 0, 1]), multimask=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_box(pair, multimask):
    pair.compare(box=np.array([40.0, 30.0, 220.0, 160.0]), multimask=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_points_and_box(pair, multimask):
    pair.compare(points_xy=POINTS[:2], labels=np.array([1, 0]), box=np.array([40.0, 30.0, 220.0, 160.0]),
                 multimask=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_prompt_from_an_earlier_round(pair, multimask):
    low, iou = pair.compare(points_xy=POINTS[:1], labels=np.array([1]), multimask=True)
    best = np.clip(low[int(np.argmax(iou))], -LOGIT_CLAMP, LOGIT_CLAMP)[None]
    pair.compare(points_xy=POINTS[:2], labels=np.array([1, 1]), mask_input=best, multimask=multimask)


def test_mask_prompt_alone(pair):
    rng = np.random.default_rng(3)
    mask = rng.normal(0, 8, size=(1, 64, 64)).astype(np.float32)
    pair.compare(mask_input=mask, multimask=False)


def test_batched_points_share_one_image(pair):
    points = np.stack([POINTS[:2], POINTS[1:]])
    labels = np.array([[1, 0], [1, 1]])
    pair.compare(points_xy=points, labels=labels, multimask=True)
    pair.compare(points_xy=points, labels=labels, multimask=False)


def test_single_mask_output_replaces_unstable_masks_by_the_best_multimask(pair):
    """Both branches of the dynamic multimask step, each equal to the reference.

    Random weights make every single mask unstable at the official threshold (0.98) (here
    even empty), so both models get the same shifted single-mask hypernetwork bias and a
    threshold between the stabilities of these prompts.
    """
    decoder = pair.ours.sam_mask_decoder
    ref_decoder = pair.ref_model.sam_mask_decoder
    biases = [d.output_hypernetworks_mlps[0].layers[-1].bias for d in (decoder, ref_decoder)]
    saved = decoder.stability_thresh, ref_decoder.dynamic_multimask_stability_thresh
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [300, 200], size=(12, 1, 2))
    scale = torch.tensor([pair.ours.image_size / 300, pair.ours.image_size / 200])
    with torch.no_grad():
        for bias in biases:
            bias += 0.5
    try:
        all_masks = []
        with torch.inference_mode():
            for point in points:
                coords = torch.as_tensor(point, dtype=torch.float32)[None] * scale
                sparse, dense = pair.ours.sam_prompt_encoder((coords, torch.ones(1, 1, dtype=torch.int64)), None, None)
                all_masks.append(decoder.predict_masks(
                    pair.features["image_embed"], pair.ours.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                    (pair.features["high_res_s0"], pair.features["high_res_s1"]),
                )[:2])
        stabilities = [float(decoder.stability(masks[:, :1])) for masks, _ in all_masks]
        threshold = float(np.median(stabilities))
        assert min(stabilities) < threshold <= max(stabilities)
        decoder.stability_thresh = ref_decoder.dynamic_multimask_stability_thresh = threshold
        for point, (masks, ious), stability in zip(points, all_masks, stabilities):
            low, _ = pair.compare(points_xy=point, labels=np.array([1]), multimask=False)
            expected = masks[0, 0] if stability >= threshold else masks[0, 1 + int(ious[0, 1:].argmax())]
            np.testing.assert_allclose(low[0], expected.numpy(), atol=1e-6)
    finally:
        decoder.stability_thresh, ref_decoder.dynamic_multimask_stability_thresh = saved
        with torch.no_grad():
            for bias in biases:
                bias -= 0.5


def test_a_full_reference_state_dict_loads_unchanged():
    """Every tensor of the reference's state dict, the video modules' included, loads as is."""
    ref = build_reference_sam2(SMALL)
    state = ref.state_dict()
    model = load_sam2(state, SMALL)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.slow
def test_full_size_tiny_matches_reference_at_1024():
    """The official sam2.1_hiera_tiny architecture at 1024 pixels, perturbed weights."""
    config = dict(build_sam2("sam2.1_hiera_tiny").config)
    pair = Pair({**config, "image_size": 1024, "d_model": 256}, _image((300, 400), seed=2))
    assert detect_sam2_config(pair.ref_model.state_dict())["name"] == "sam2.1_hiera_tiny"
    _close(pair.features["image_embed"], pair.ref._features["image_embed"])
    pair.compare(points_xy=POINTS[:1], labels=np.array([1]), multimask=True)
    pair.compare(box=np.array([40.0, 30.0, 220.0, 160.0]), multimask=False)
