"""The tiny random models and small helpers every test folder uses (defined once here).

Importable as ``import tiny`` from any test: ``conftest.py`` puts this folder on sys.path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "src" / "napari_sam" / "weights" / "default.pt"

# A ViT SAM small enough to run in milliseconds: 128-px input, 16x16 embedding grid.
TINY = {
    "encoder": "vit", "img_size": 128, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "mlp_ratio": 2.0, "window_size": 4, "global_attn_indexes": [1], "prompt_embed_dim": 64, "decoder_mlp_dim": 128,
}
# Smaller still for training loops: 64-px input, one global block.
TINY_TRAINING = {
    "encoder": "vit", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
    "mlp_ratio": 2.0, "window_size": 0, "global_attn_indexes": [0], "prompt_embed_dim": 32, "decoder_mlp_dim": 64,
}


def build_tiny(config: dict | None = None, seed: int = 0):
    """A random :class:`~napari_sam.model.Sam` of ``config`` (default :data:`TINY`), seeded."""
    import torch

    from napari_sam.model import build_sam

    torch.manual_seed(seed)
    return build_sam(dict(config or TINY))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 for two empty masks)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def ellipse(shape, centre, radii) -> np.ndarray:
    """A boolean filled ellipse of ``radii`` (rows, cols) at ``centre`` in an array of ``shape``."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


# TINY as save_model records it and detect_architecture reports it: the decoder defaults filled in.
TINY_SAVED = {**TINY, "text_dim": 0}


def randomized(model, seed: int = 0):
    """``model`` with every floating-point tensor moved off its initial value, so that loading is observable."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
    return model


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts with the same keys and bit-identical tensors."""
    import torch

    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# A SAM 2.1 model small enough for tests (with its memory modules): Hiera of 8 blocks,
# windowed and global, 128-px input, 8x8 embedding grid.
TINY_SAM2 = {
    "embed_dim": 16, "num_heads": 1, "stages": [1, 2, 4, 1], "global_att_blocks": [4, 6],
    "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7], "image_size": 128, "d_model": 32,
    "mem_dim": 16, "memory_mlp_dim": 64,
}


def build_tiny_sam2(seed: int = 0, present: bool = True, image_size: int | None = None):
    """A random SAM 2.1 :class:`~napari_sam.model.sam2.Sam2` of :data:`TINY_SAM2`, seeded.

    ``present``: the object-score head says "present" (random weights otherwise call
    every object absent and every mask empty). ``image_size``: another input side (a
    multiple of 32).
    """
    import torch

    from napari_sam.model.sam2 import build_sam2

    torch.manual_seed(seed)
    model = build_sam2({**TINY_SAM2, **({"image_size": image_size} if image_size else {})})
    if present:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 50.0
    return model
