"""Model configurations and the one builder."""

from __future__ import annotations

from typing import Any

from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

# Encoder hyper-parameters of the official models (SAM paper, Table 8; MobileSAM).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder": "vit", "img_size": 1024, "patch_size": 16, "embed_dim": 768, "depth": 12,
              "num_heads": 12, "mlp_ratio": 4.0, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"encoder": "vit", "img_size": 1024, "patch_size": 16, "embed_dim": 1024, "depth": 24,
              "num_heads": 16, "mlp_ratio": 4.0, "window_size": 14, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"encoder": "vit", "img_size": 1024, "patch_size": 16, "embed_dim": 1280, "depth": 32,
              "num_heads": 16, "mlp_ratio": 4.0, "window_size": 14, "global_attn_indexes": [7, 15, 23, 31]},
    "vit_t": {"encoder": "tiny_vit", "img_size": 1024},
}

VIT_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "window_size",
            "global_attn_indexes")

# Prompt encoder / mask decoder widths of every official model; compact models may shrink
# them (the decoder runs once per prompt and dominates training cost on a CPU).
DECODER_DEFAULTS: dict[str, int] = {"prompt_embed_dim": 256, "decoder_mlp_dim": 2048, "text_dim": 0}
DECODER_NUM_HEADS = 8


def build_sam(model_type: str | dict[str, Any]) -> Sam:
    """Build an untrained Sam.

    Parameters
    ----------
    model_type : str or dict
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``, or a config dict with
        ``"encoder": "vit"`` and the :class:`ImageEncoderViT` hyper-parameters
        (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``,
        ``mlp_ratio``, ``window_size``, ``global_attn_indexes``, optionally
        ``stem_channels`` for a convolutional stem) for compact models,
        optionally with ``prompt_embed_dim`` and ``decoder_mlp_dim`` (default 256, 2048)
        and ``text_dim`` (width of the text encoder; 0, the default, builds no text path).
    """
    if isinstance(model_type, str):
        if model_type not in MODEL_CONFIGS:
            raise ValueError(f"unknown model type {model_type!r}; expected one of {sorted(MODEL_CONFIGS)}")
        config = dict(MODEL_CONFIGS[model_type], name=model_type)
    else:
        config = dict(model_type)
        config.setdefault("name", "custom")

    config = {**DECODER_DEFAULTS, **config}
    dim = int(config["prompt_embed_dim"])
    encoder = _build_encoder(config)
    grid = config["img_size"] // _stride(config)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config["img_size"], config["img_size"]),
            mask_in_chans=16,
            text_dim=int(config["text_dim"]),
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=dim, num_heads=DECODER_NUM_HEADS, mlp_dim=int(config["decoder_mlp_dim"])
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
    )
    sam.config = config
    return sam.eval()


def _stride(config: dict[str, Any]) -> int:
    return 16 if config["encoder"] == "tiny_vit" else int(config["patch_size"])


def _build_encoder(config: dict[str, Any]) -> nn.Module:
    if config["encoder"] == "tiny_vit":
        from .tiny_vit import build_tiny_vit_encoder

        return build_tiny_vit_encoder(img_size=config["img_size"])
    if config["encoder"] != "vit":
        raise ValueError(f"unknown encoder {config['encoder']!r}; expected 'vit' or 'tiny_vit'")
    missing = [key for key in VIT_KEYS if key not in config]
    if missing:
        raise ValueError(f"ViT config lacks {missing}")
    return ImageEncoderViT(
        img_size=config["img_size"],
        patch_size=config["patch_size"],
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        out_chans=int(config["prompt_embed_dim"]),
        window_size=config["window_size"],
        global_attn_indexes=tuple(config["global_attn_indexes"]),
        stem_channels=tuple(int(width) for width in config.get("stem_channels", ())),
    )
