"""Which SAM architecture a state dict or a config describes.

A named architecture (vit_b, vit_l, vit_h, vit_t) is reported under its name, any other
as ``"custom"`` with its complete ``build_sam`` config; a state dict's architecture is read
off its keys and tensor shapes (:func:`detect_architecture`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["SAM_PARTS", "Architecture", "architecture_from_config", "detect_architecture", "named_configs"]

# The state-dict prefixes of the three parts of a Sam.
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass(frozen=True)
class Architecture:
    """What to build for a state dict.

    Attributes
    ----------
    model_type : str
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``, or ``"custom"``.
    config : dict
        The ``build_sam`` config, complete (decoder widths included):
        ``{"encoder": "vit", "img_size": ..., "prompt_embed_dim": 256, ...}`` or
        ``{"encoder": "tiny_vit", "img_size": 1024, ...}``.
    """

    model_type: str
    config: dict[str, Any]

    def build_argument(self) -> str | dict[str, Any]:
        return self.config if self.model_type == "custom" else self.model_type

    def describe(self) -> str:
        if self.model_type != "custom":
            return self.model_type
        details = ", ".join(f"{k}={v}" for k, v in self.config.items() if k not in ("encoder", "name"))
        return f"custom {self.config.get('encoder', '?')} ({details})"


def named_configs() -> dict[str, dict[str, Any]]:
    """MODEL_CONFIGS, each completed with the decoder widths build_sam defaults to."""
    from ..model.build import MODEL_CONFIGS

    return {name: _normalized(config) for name, config in MODEL_CONFIGS.items()}


def _normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """A build_sam config in one canonical form, so that equal architectures compare equal."""
    from ..model.build import DECODER_DEFAULTS

    result = {**DECODER_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}
    if "global_attn_indexes" in result:
        result["global_attn_indexes"] = [int(i) for i in result["global_attn_indexes"]]
    if "stem_channels" in result:
        # No stem is the official linear patch embedding, the same architecture as no key.
        stem = [int(width) for width in result.pop("stem_channels")]
        if stem:
            result["stem_channels"] = stem
    return result


def architecture_from_config(config: Mapping[str, Any]) -> Architecture:
    """The :class:`Architecture` of a ``build_sam`` config: named when it equals a named one."""
    config = _normalized(config)
    for name, named in named_configs().items():
        if _same_config(config, named):
            return Architecture(name, named)
    return Architecture("custom", config)


def _same_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("encoder") != b.get("encoder") or set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
            if list(x) != list(y):
                return False
        elif x != y:
            return False
    return True


def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> Architecture:
    """Infer the architecture of a SAM state dict from its keys and tensor shapes.

    MobileSAM's TinyViT encoder is recognised by its keys; a ViT encoder's hyper-parameters
    are read off its tensors: patch size from the patch-embedding kernel, input size from
    the position-embedding grid, depth from the block count, head count from the relative
    position tables' head width, window size and global blocks from those tables' lengths,
    MLP ratio from the first MLP layer; the prompt and decoder widths from the prompt
    encoder and decoder tensors. An architecture that matches a named one (vit_b, vit_l,
    vit_h, vit_t) is reported under that name, any other as ``"custom"``.

    Raises
    ------
    CheckpointError
        When the state dict is not a SAM's, or its ViT cannot be described.
    """
    keys = set(state_dict)
    if not any(key.startswith(SAM_PARTS) for key in keys):
        sample = ", ".join(sorted(keys)[:5])
        raise CheckpointError(
            "not a Segment Anything state dict: no key starts with "
            f"{' / '.join(SAM_PARTS)} (first keys: {sample or 'none'})"
        )
    if any(key.startswith(("image_encoder.layers.", "image_encoder.patch_embed.seq.")) for key in keys):
        encoder = {"encoder": "tiny_vit", "img_size": named_configs()["vit_t"]["img_size"]}
    else:
        encoder = _vit_config(state_dict)
    return architecture_from_config({**encoder, **_decoder_config(state_dict)})


def _decoder_config(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Prompt/decoder widths; absent keys are left to the defaults (and reported later)."""
    config = {}
    embed = state.get("prompt_encoder.no_mask_embed.weight")  # (1, prompt_embed_dim)
    if embed is not None and embed.ndim == 2:
        config["prompt_embed_dim"] = int(embed.shape[1])
    mlp = state.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")  # (mlp_dim, dim)
    if mlp is not None and mlp.ndim == 2:
        config["decoder_mlp_dim"] = int(mlp.shape[0])
    text = state.get("prompt_encoder.text_projection.0.weight")  # (prompt_embed_dim, text_dim)
    if text is not None and text.ndim == 2:
        config["text_dim"] = int(text.shape[1])
    return config


def _vit_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"cannot infer the image encoder: {key!r} is missing")
        return state[key]

    stem = _stem_channels(state)
    if stem:
        # The stem's 3x3 stride-2 convolutions, then its 1x1 projection to the token width.
        projection = tensor(f"image_encoder.patch_embed.stem.{3 * len(stem)}.weight")  # (D, c, 1, 1)
        embed_dim, patch_size = int(projection.shape[0]), 2 ** len(stem)
    else:
        patch = tensor("image_encoder.patch_embed.proj.weight")  # (D, 3, p, p)
        if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
            raise CheckpointError(f"unexpected patch embedding shape {tuple(patch.shape)}")
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    pos = tensor("image_encoder.pos_embed")  # (1, g, g, D)
    grid = int(pos.shape[1])
    block_ids = sorted(
        {int(m.group(1)) for key in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key))}
    )
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise CheckpointError(f"the image encoder's blocks are not numbered 0..n-1: {block_ids[:20]}")
    depth = len(block_ids)

    lengths = [int(tensor(f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    head_dim = int(tensor("image_encoder.blocks.0.attn.rel_pos_h").shape[1])
    if head_dim <= 0 or embed_dim % head_dim:
        raise CheckpointError(f"relative position width {head_dim} does not divide embed_dim {embed_dim}")
    global_length = 2 * grid - 1
    global_blocks = [i for i, length in enumerate(lengths) if length == global_length]
    windowed = {length for length in lengths if length != global_length}
    if len(windowed) > 1:
        sizes = sorted((n + 1) // 2 for n in windowed)
        raise CheckpointError(f"blocks use several attention window sizes: {sizes}")
    # With no windowed block the window size does not change any computation.
    window_size = (windowed.pop() + 1) // 2 if windowed else grid

    hidden = int(tensor("image_encoder.blocks.0.mlp.lin1.weight").shape[0])
    extra = {"stem_channels": stem} if stem else {}
    return {
        "encoder": "vit",
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "mlp_ratio": hidden / embed_dim,
        "window_size": window_size,
        "global_attn_indexes": global_blocks,
        **extra,
    }


def _stem_channels(state: Mapping[str, torch.Tensor]) -> list[int]:
    """Widths of a convolutional stem's 3x3 layers (``ConvStem``), empty for a linear patch embedding."""
    widths = []
    while (conv := state.get(f"image_encoder.patch_embed.stem.{3 * len(widths)}.weight")) is not None:
        if conv.ndim != 4:
            raise CheckpointError(f"unexpected stem convolution shape {tuple(conv.shape)}")
        if conv.shape[-1] == 1:  # the final 1x1 projection
            return widths
        widths.append(int(conv.shape[0]))
    if widths:
        raise CheckpointError("the convolutional stem has no 1x1 projection to the token width")
    return widths
