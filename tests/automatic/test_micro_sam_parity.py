"""Parity with micro-sam 1.8.14 / torch-em on random weights: the decoder's maps and the
default post-processing (seeded watershed), end to end from a raw uint16 image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.automatic import (
    InstanceDecoder, WatershedOptions, decoder_from_state, decoder_maps, instances_from_maps, minmax_uint8,
)
from napari_sam.automatic.ais import SegmentationCancelled
from napari_sam.model import build_sam
from tiny import TINY

import reference
from micro_sam_reference import import_micro_sam

try:
    instance_segmentation = import_micro_sam()
except ImportError as error:  # pragma: no cover - the references are test-only installs
    pytest.skip(f"micro-sam / torch-em not installed: {error}", allow_module_level=True)

from micro_sam import util as micro_util  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
)
from segment_anything.predictor import SamPredictor  # noqa: E402
from torch_em.util.segmentation import watershed_from_center_and_boundary_distances  # noqa: E402


def reference_tiny_sam() -> Sam:
    """segment_anything's Sam with the tiny test geometry (:data:`tiny.TINY`), perturbed."""
    dim, grid = TINY["prompt_embed_dim"], TINY["img_size"] // TINY["patch_size"]
    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY["img_size"], patch_size=TINY["patch_size"], embed_dim=TINY["embed_dim"],
            depth=TINY["depth"], num_heads=TINY["num_heads"], mlp_ratio=TINY["mlp_ratio"], out_chans=dim,
            qkv_bias=True, use_rel_pos=True, window_size=TINY["window_size"],
            global_attn_indexes=TINY["global_attn_indexes"],
            norm_layer=lambda n: torch.nn.LayerNorm(n, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(TINY["img_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=TINY["decoder_mlp_dim"], num_heads=8),
        ),
    )
    return reference.perturb_(sam, seed=3)


def random_decoder_state(embed_dim: int, transposed: bool = False, seed: int = 0) -> dict:
    """A decoder state with every tensor (batch-norm running statistics too) moved off its init."""
    torch.manual_seed(seed)
    decoder = InstanceDecoder(embed_dim=embed_dim, transposed=transposed)
    return reference.perturb_(decoder, seed=seed).state_dict()


@pytest.fixture(scope="module")
def pair():
    """(reference SamPredictor, our Sam) with identical weights."""
    reference_sam = reference_tiny_sam()
    ours = build_sam(TINY).eval()
    ours.load_state_dict(reference_sam.state_dict())
    return SamPredictor(reference_sam), ours


def raw_image(shape=(90, 120), seed=0) -> np.ndarray:
    """A uint16 image of blobs on noise (not in 0..255: the input scaling matters)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(300, 40, shape)
    for _ in range(8):
        r, c, radius = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(6, 14)
        image += 2000 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2))
    return image.clip(0, 65535).astype(np.uint16)


def test_minmax_scaling_is_micro_sams_bit_for_bit():
    rng = np.random.default_rng(1)
    for image in (raw_image(), rng.normal(size=(20, 30, 3)).astype(np.float32),
                  rng.integers(0, 255, (17, 9, 2)).astype(np.uint8), np.full((5, 6), 7, np.int32)):
        np.testing.assert_array_equal(minmax_uint8(image), micro_util._to_image(image))


@pytest.mark.parametrize("transposed", [False, True])
def test_decoder_maps_equal_micro_sams_on_random_weights(pair, transposed):
    predictor, ours = pair
    state = random_decoder_state(TINY["prompt_embed_dim"], transposed=transposed)
    # micro-sam's decoder, built the way its own loader builds it.
    reference_decoder = instance_segmentation.get_decoder(predictor.model.image_encoder, state, device="cpu")
    segmenter = instance_segmentation.InstanceSegmentationWithDecoder(predictor, reference_decoder)
    image = raw_image()
    segmenter.initialize(image)
    expected = segmenter.get_state()

    decoder = decoder_from_state(state)  # micro-sam conventions by default
    assert decoder.transposed == transposed
    maps = decoder_maps(ours, decoder, image)
    assert maps.shape == (3,) + image.shape
    for channel, name in enumerate(("foreground", "center_distances", "boundary_distances")):
        np.testing.assert_allclose(maps[channel], expected[name], atol=2e-5, err_msg=name)


def test_running_statistics_would_differ_so_the_per_image_rule_is_tested(pair):
    _, ours = pair
    state = random_decoder_state(TINY["prompt_embed_dim"])
    micro = decoder_maps(ours, decoder_from_state(state), raw_image())
    running = decoder_maps(ours, decoder_from_state(state, conventions="napari_sam"), raw_image())
    assert np.abs(micro - running).max() > 1e-2


def test_batched_images_keep_their_own_batch_norm_statistics():
    decoder = decoder_from_state(random_decoder_state(16))
    embeddings = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        together = decoder(embeddings)
        alone = torch.cat([decoder(embeddings[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def smooth_random_maps(shape=(96, 128), seed=0):
    """Maps shaped like a decoder's: blobs of foreground, distances low at their centres."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    fg = np.zeros(shape)
    centre = np.ones(shape)
    for _ in range(14):
        r, c, radius = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 12)
        distance = np.sqrt((rows - r) ** 2 + (cols - c) ** 2) / radius
        fg = np.maximum(fg, np.clip(1.2 - distance, 0, 1))
        centre = np.minimum(centre, np.clip(distance, 0, 1))
    noise = lambda: rng.normal(0, 0.08, shape)  # noqa: E731
    boundary = np.clip(centre ** 0.7 + noise(), 0, 1)
    return [np.clip(m + noise(), 0, 1).astype(np.float32) for m in (fg, centre)] + [boundary.astype(np.float32)]


@pytest.mark.parametrize("options", [
    WatershedOptions(),
    WatershedOptions(min_size=40),
    WatershedOptions(center_distance_threshold=0.4, boundary_distance_threshold=0.6, foreground_threshold=0.4,
                     foreground_smoothing=0.0, distance_smoothing=2.0, min_size=10),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_post_processing_equals_micro_sams(options, seed):
    fg, centre, boundary = smooth_random_maps(seed=seed)
    # micro-sam's generate(): smooth the foreground, then torch-em's watershed.
    import bioimage_cpp
    smoothed = bioimage_cpp.filters.gaussian_smoothing(fg, options.foreground_smoothing) \
        if options.foreground_smoothing > 0 else fg
    expected = watershed_from_center_and_boundary_distances(
        centre.copy(), boundary.copy(), smoothed,
        center_distance_threshold=options.center_distance_threshold,
        boundary_distance_threshold=options.boundary_distance_threshold,
        foreground_threshold=options.foreground_threshold,
        distance_smoothing=options.distance_smoothing, min_size=options.min_size,
    )
    ours = instances_from_maps(fg, centre, boundary, options)
    assert ours.max() > 3
    np.testing.assert_array_equal(ours, expected)


def test_cancel_stops_before_the_next_tile(pair):
    _, ours = pair
    decoder = decoder_from_state(random_decoder_state(TINY["prompt_embed_dim"]))
    seen = []
    with pytest.raises(SegmentationCancelled):
        decoder_maps(ours, decoder, raw_image((300, 300)), progress=lambda d, t: seen.append((d, t)),
                     cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2 and seen[0][1] > 2
