"""The inference paths (no autograd: chunked, fused, in place) compute what the autograd
paths compute, on small random models, on the CPU and (tests marked gpu) on CUDA.

Chunk budgets are shrunk so that every chunked loop runs more than once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import napari_sam
from napari_sam.inference import transforms
from napari_sam.model import build_sam, kernels
from napari_sam.model import image_encoder as vit
from napari_sam.model.fast import fast_mode
from napari_sam.model.tiny_vit import TinyViT
from napari_sam.model.transformer import Attention
from napari_sam.training.lora import apply_lora

SMALL_VIT = {
    "encoder": "vit", "img_size": 112, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2,
    "mlp_ratio": 4.0, "window_size": 4, "global_attn_indexes": [1], "prompt_embed_dim": 32, "decoder_mlp_dim": 64,
}  # a 14x14 grid: windows of 4 need padding to 16x16

RTOL = 1e-5  # of the largest magnitude


def _randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every float tensor off its initial value (zeros, ones) so no term can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.mul_(torch.exp(0.1 * noise))
            else:
                tensor.add_(0.2 * noise * (float(tensor.std()) if tensor.numel() > 1 else 1.0) + 0.05 * noise)
    return model.eval()


def _both_paths(module: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        expected = module(*inputs)
    with torch.no_grad():
        actual = module(*inputs)
    return expected.detach(), actual


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    error = float((actual.float() - expected.float()).abs().max())
    assert error <= rtol * scale, f"max error {error:.3g} vs scale {scale:.3g}"


@pytest.fixture
def small_chunks(monkeypatch):
    """Budgets small enough that every chunked loop takes several turns."""
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(kernels, "DEVICE_CHUNK_BYTES", 4096)
    monkeypatch.setattr(vit, "MIN_QUERIES", 1)


@pytest.fixture
def small_sam() -> napari_sam.model.Sam:
    torch.manual_seed(0)
    return _randomise_(build_sam(dict(SMALL_VIT)))


# -- chunking ---------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 7, 100, 4096])
@pytest.mark.parametrize("item_bytes, budget", [(1, 1), (4, 64), (3072 * 4, 30 << 20), (10**9, 16)])
def test_chunks_are_even_within_budget_and_cover_everything(total, item_bytes, budget):
    length = kernels.chunk_length(total, item_bytes, budget)
    assert 1 <= length <= total
    assert length * item_bytes <= budget or length == 1
    chunks = -(-total // length)
    assert chunks == -(-total // max(1, budget // item_bytes))  # no more chunks than needed
    assert chunks * length - total < chunks  # even: sizes differ by at most one item


# -- ViT encoder ------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_vit_inference_path_matches_autograd_path(small_sam, chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    encoder = small_sam.image_encoder
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    expected, actual = _both_paths(encoder, images)
    _assert_close(actual, expected)


@pytest.mark.parametrize("window_size", [0, 4, 7])
def test_vit_block_inference_path_matches_autograd_path(window_size, small_chunks):
    block = _randomise_(vit.Block(32, 2, 4.0, window_size=window_size, input_size=(14, 14)))
    x = torch.randn(1, 14, 14, 32, generator=torch.Generator().manual_seed(2))
    expected, actual = _both_paths(block, x)
    _assert_close(actual, expected)


def test_inference_never_modifies_its_input(small_sam, small_chunks):
    block = small_sam.image_encoder.blocks[0]
    x = torch.randn(1, 14, 14, 32)
    before = x.clone()
    with torch.no_grad():
        block(x)
        small_sam.image_encoder(torch.randn(1, 3, 112, 112))
    assert torch.equal(x, before)


def test_vit_with_lora_layers_matches_autograd_path(small_sam, small_chunks):
    # LoRA (and quantised) layers are not plain nn.Linear: the inference path calls them.
    apply_lora(small_sam.image_encoder, rank=2, targets=("qkv", "proj"))
    for module in small_sam.image_encoder.modules():
        if hasattr(module, "lora_b"):
            nn.init.normal_(module.lora_b, std=0.1)
    expected, actual = _both_paths(small_sam.image_encoder, torch.randn(1, 3, 112, 112))
    _assert_close(actual, expected)


def test_oneDNN_linear_matches_torch_linear():
    layer = nn.Linear(48, 80)
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        _assert_close(kernels.linear(layer, x), layer(x))
        _assert_close(kernels.linear(layer, x, gelu=True), F.gelu(layer(x)))


# -- TinyViT ----------------------------------------------------------------------------


def _small_tiny_vit() -> TinyViT:
    torch.manual_seed(0)
    model = TinyViT(
        img_size=128, embed_dims=(16, 32, 40, 48), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 3),
        window_sizes=(3, 3, 3, 3), out_chans=32, num_classes=10,
    )
    return _randomise_(model)


@pytest.mark.parametrize("chunked", [False, True])
def test_tiny_vit_inference_path_matches_autograd_path(chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    model = _small_tiny_vit()
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    expected, actual = _both_paths(model, images)
    assert actual.shape == (2, 32, 8, 8)
    _assert_close(actual, expected)


def test_tiny_vit_takes_any_memory_layout():
    # image.permute(2, 0, 1)[None], as Predictor makes it: channels-last with an odd batch stride
    model = _small_tiny_vit()
    image = torch.rand(128, 128, 3) * 255
    odd = image.permute(2, 0, 1)[None]
    with torch.no_grad():
        _assert_close(model(odd), model(odd.contiguous()))


def test_tiny_vit_state_dict_names_survive_inference():
    model = _small_tiny_vit()
    keys = list(model.state_dict())
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert list(model.state_dict()) == keys


def test_batch_norm_is_folded_only_in_eval_mode():
    model = _small_tiny_vit().train()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        training = model(x)  # batch statistics, not the running ones
        model.eval()
        frozen = model(x)
    assert not torch.allclose(training, frozen)


# -- decoder and prompt encoder ---------------------------------------------------------


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_inference_path_matches_autograd_path(small_sam, multimask):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(1, 32, 14, 14, generator=generator)
    points = torch.rand(3, 2, 2, generator=generator) * 112
    labels = torch.tensor([[1, 0], [1, -1], [0, 1]])
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [0.0, 0.0, 111.0, 111.0], [30.0, 5.0, 40.0, 90.0]])
    masks = torch.randn(3, 1, 56, 56, generator=generator)
    for kwargs in (
        {"point_coords": points, "point_labels": labels},
        {"boxes": boxes},
        {"point_coords": points, "point_labels": labels, "boxes": boxes, "mask_inputs": masks},
    ):
        with torch.enable_grad():
            expected = small_sam.decode(embeddings, multimask=multimask, **kwargs)
        with torch.no_grad():
            actual = small_sam.decode(embeddings, multimask=multimask, **kwargs)
        for a, e in zip(actual, expected):
            _assert_close(a, e.detach())


def test_first_layer_image_work_is_reused_across_prompts_and_matches_autograd_path(small_sam):
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randn(1, 32, 14, 14, generator=generator)
    decoder = small_sam.mask_decoder
    prompts = [
        {"point_coords": torch.rand(1, 1, 2, generator=generator) * 112, "point_labels": torch.tensor([[1]])},
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [0.0, 0.0, 111.0, 111.0]])},
        {"point_coords": torch.rand(2, 2, 2, generator=generator) * 112, "point_labels": torch.tensor([[1, 0], [0, 1]])},
    ]
    with torch.inference_mode():
        small_sam.decode(embeddings, **prompts[0])  # the first decode only notes the embedding
        assert decoder.__dict__["_first_layer_memo"]["image"] is None
    for kwargs in prompts:
        with torch.enable_grad():
            expected = small_sam.decode(embeddings, **kwargs)
        with torch.inference_mode():
            actual = small_sam.decode(embeddings, **kwargs)
        memo = decoder.__dict__["_first_layer_memo"]["image"]
        assert memo is not None
        for a, e in zip(actual, expected):
            _assert_close(a, e.detach())
    with torch.inference_mode():
        small_sam.decode(embeddings, **prompts[1])
    assert decoder.__dict__["_first_layer_memo"]["image"] is memo  # reused, not recomputed


@pytest.mark.parametrize("change", ["weights", "embedding", "mask prompt", "dense vector"])
def test_first_layer_image_work_follows_what_it_depends_on(small_sam, change):
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(1, 32, 14, 14, generator=generator)
    box = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]])}
    with torch.no_grad():
        for _ in range(2):
            small_sam.decode(embeddings, **box)
        if change == "weights":
            small_sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.5)
        elif change == "embedding":
            embeddings = embeddings + 1.0
        elif change == "mask prompt":
            box["mask_inputs"] = torch.randn(1, 1, 56, 56, generator=generator)
        else:
            small_sam.prompt_encoder.no_mask_embed.weight.add_(0.5)
        actual = small_sam.decode(embeddings, **box)
    with torch.enable_grad():
        expected = small_sam.decode(embeddings, **box)
    for a, e in zip(actual, expected):
        _assert_close(a, e.detach())


@pytest.mark.parametrize("queries, keys", [(7, 300), (300, 7), (7, 7), (5, 2000)])
@pytest.mark.parametrize("downsample", [1, 2])
def test_folded_cross_attention_matches_projected_attention(queries, keys, downsample):
    attention = _randomise_(Attention(64, 4, downsample))
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 64, generator=generator) for n in (queries, keys, keys))
    expected, actual = _both_paths(attention, q, k, v)
    _assert_close(actual, expected)


def test_dense_positional_encoding_is_cached_and_follows_its_buffer(small_sam):
    encoder = small_sam.prompt_encoder
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first
    assert not first.is_inference()
    with torch.no_grad():
        encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    second = encoder.get_dense_pe()
    assert second is not first
    expected = encoder.pe_layer(encoder.image_embedding_size).unsqueeze(0)
    assert torch.equal(second, expected)


def test_cached_positional_encoding_made_in_inference_mode_can_train(small_sam):
    with torch.inference_mode():
        small_sam.prompt_encoder.get_dense_pe()
    small_sam.mask_decoder.requires_grad_(True)
    logits, _ = small_sam.decode(torch.randn(1, 32, 14, 14), boxes=torch.tensor([[5.0, 5.0, 50.0, 50.0]]))
    logits.sum().backward()
    assert small_sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None


# -- upscaling to the plane -------------------------------------------------------------


def _full_square_upscale(low_res, input_size, original_size, image_size):
    """SAM's sequence: bilinear to the padded square, crop, bilinear to the plane."""
    logits = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    logits = logits[..., : input_size[0], : input_size[1]]
    return F.interpolate(logits, tuple(original_size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(
    "original, image_size, low",
    [((480, 640), 1024, 256), ((1024, 1024), 1024, 256), ((300, 300), 1024, 256), ((100, 128), 128, 64),
     ((2000, 37), 1024, 256), ((5, 3), 1024, 256), ((77, 1000), 1000, 250), ((2048, 1500), 1024, 256)],
)
def test_upscaling_only_the_crop_equals_the_full_square_path(original, image_size, low):
    input_size = transforms.resized_shape(original, image_size)
    low_res = torch.randn(2, 3, low, low, generator=torch.Generator().manual_seed(6))
    expected = _full_square_upscale(low_res, input_size, original, image_size)
    actual = transforms.upscale_logits(low_res, input_size, original, image_size)
    assert actual.shape == expected.shape == (2, 3, *original)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert ((actual > 0) == (expected > 0)).float().mean() >= 0.99999
    for threshold in (0.0, 0.7):
        masks = transforms.upscale_masks(low_res, input_size, original, image_size, threshold)
        assert masks.dtype == torch.bool
        assert torch.equal(masks, actual > threshold)  # the fused comparison is exact


# -- fast mode --------------------------------------------------------------------------


def _blobs(size: int = 112) -> tuple[np.ndarray, list[tuple[int, int]]]:
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size), np.float32)
    centres = [(30, 30), (70, 40), (50, 85)]
    for r, c in centres:
        image += 200 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 120.0)
    return np.clip(image + 10, 0, 255).astype(np.uint8), centres


def test_fast_mode_is_a_separate_model_usable_by_predictor(small_sam):
    reference_state = {k: v.clone() for k, v in small_sam.state_dict().items()}
    fast = fast_mode(small_sam)
    assert fast is not small_sam
    assert fast.config["fast_mode"] != "none"
    for key, value in small_sam.state_dict().items():  # the exact model is untouched
        assert torch.equal(value, reference_state[key])
    image, centres = _blobs()
    exact_predictor, fast_predictor = napari_sam.Predictor(small_sam), napari_sam.Predictor(fast)
    exact_features = exact_predictor.set_image(image).features
    fast_features = fast_predictor.set_image(image).features
    assert fast_features.dtype == torch.float32
    cosine = F.cosine_similarity(exact_features.flatten(), fast_features.flatten(), dim=0)
    assert cosine > 0.99
    for centre in centres:
        candidates = fast_predictor.predict(points=[centre])
        assert candidates.masks.shape == (3, 112, 112) and candidates.masks.dtype == bool


def test_fast_mode_on_tiny_vit_keeps_the_prompt_path_exact():
    torch.manual_seed(0)
    sam = build_sam("vit_t")
    fast = fast_mode(sam)
    # Only the image encoder changes; the prompt encoder and decoder are the same.
    for name, value in sam.state_dict().items():
        if not name.startswith("image_encoder."):
            assert torch.equal(fast.state_dict()[name], value)


# -- training still works on the same modules -------------------------------------------


def test_autograd_path_still_trains_the_encoder(small_sam):
    small_sam.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embeddings = small_sam.encode(torch.randn(1, 3, 112, 112))
        logits, iou = small_sam.decode(embeddings, boxes=torch.tensor([[5.0, 5.0, 50.0, 50.0]]))
        (logits.mean() + iou.mean()).backward()
    grads = [p.grad for p in small_sam.image_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- GPU --------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model_type", ["vit_t", "small", "small chunks"])
def test_cuda_inference_path_matches_autograd_path(model_type, small_sam, request):
    if model_type == "small chunks":
        request.getfixturevalue("small_chunks")
    sam = _randomise_(build_sam("vit_t")) if model_type == "vit_t" else small_sam
    sam = sam.cuda()
    size = sam.image_size
    images = torch.randn(1, 3, size, size, device="cuda", generator=torch.Generator("cuda").manual_seed(7))
    expected, actual = _both_paths(sam.image_encoder, images)
    _assert_close(actual, expected, rtol=1e-3)  # kernels (and TF32 convs) differ between paths


@pytest.mark.gpu
@needs_cuda
def test_cuda_predictor_agrees_with_cpu_predictor(small_sam):
    image, centres = _blobs()
    cpu = napari_sam.Predictor(small_sam)
    cpu.set_image(image)
    gpu = napari_sam.Predictor(build_sam(dict(SMALL_VIT)).cuda())
    gpu.model.load_state_dict(small_sam.state_dict())
    gpu.set_image(image)
    assert gpu.embedding.features.is_cuda
    for centre in centres:
        a, b = cpu.predict(points=[centre]), gpu.predict(points=[centre])
        assert (a.masks == b.masks).mean() >= 0.999
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-2)


@pytest.mark.gpu
@needs_cuda
def test_cuda_fast_mode_runs_in_half_precision(small_sam):
    fast = fast_mode(small_sam.cuda())
    assert next(fast.image_encoder.parameters()).dtype == torch.float16
    image, centres = _blobs()
    predictor = napari_sam.Predictor(fast)
    assert predictor.set_image(image).features.dtype == torch.float32
    assert predictor.predict(points=[centres[0]]).masks.shape == (3, 112, 112)


@pytest.mark.gpu
@needs_cuda
def test_cuda_encoder_decoder_and_upscaling_never_wait_for_the_host(small_sam):
    sam = small_sam.cuda()
    image = torch.rand(1, 3, 100, 112, device="cuda") * 255
    coords, labels = torch.tensor([[[50.0, 40.0]]], device="cuda"), torch.tensor([[1]], device="cuda")

    def run():
        with torch.inference_mode():
            low_res, scores = sam.decode(sam.encode(sam.preprocess(image)), coords, labels)
            order = torch.argsort(scores[0], descending=True)
            return transforms.upscale_logits(low_res[:, order], (100, 112), (300, 336), 112) > 0

    run()  # lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")

