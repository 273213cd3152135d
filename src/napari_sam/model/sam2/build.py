"""SAM 2.1 configurations, the builder, and architecture detection from checkpoint tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .decoder import Sam2MaskDecoder, Sam2PromptEncoder, two_way_transformer
from .hiera import Hiera
from .memory import MemoryAttention, MemoryEncoder
from .model import Sam2
from .neck import FpnNeck, ImageEncoder

FAMILY = "sam2"

# Hiera trunks of the official SAM 2.1 models (the sam2.1_hiera_*.yaml files of Meta's
# repository; base_plus takes Hiera's defaults there). Heads, windows and the global
# blocks are not visible in the tensors, so detection matches the visible ones below.
SAM2_CONFIGS: dict[str, dict[str, Any]] = {
    "sam2.1_hiera_tiny": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 7, 2], "global_att_blocks": [5, 7, 9],
                          "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7]},
    "sam2.1_hiera_small": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 11, 2], "global_att_blocks": [7, 10, 13],
                           "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7]},
    "sam2.1_hiera_base_plus": {"embed_dim": 112, "num_heads": 2, "stages": [2, 3, 16, 3],
                               "global_att_blocks": [12, 16, 20], "window_spec": [8, 4, 14, 7],
                               "window_pos_embed_bkg_spatial_size": [14, 14]},
    "sam2.1_hiera_large": {"embed_dim": 144, "num_heads": 2, "stages": [2, 6, 36, 4], "global_att_blocks": [23, 33, 43],
                           "window_spec": [8, 4, 16, 8], "window_pos_embed_bkg_spatial_size": [7, 7]},
}

# Shared by all four: input side, neck / decoder width, decoder MLP width.
DEFAULTS: dict[str, Any] = {"image_size": 1024, "d_model": 256, "decoder_mlp_dim": 2048, "mem_dim": 64,
                            "memory_layers": 4, "memory_mlp_dim": 2048, "num_maskmem": 7, "video": True}
TRUNK_KEYS = ("embed_dim", "num_heads", "stages", "global_att_blocks", "window_spec",
              "window_pos_embed_bkg_spatial_size")

# Tensors of the video model (memory encoder, memory attention, object pointers) that an
# official checkpoint holds beside the image model's.
VIDEO_PREFIXES = ("memory_attention.", "memory_encoder.", "mask_downsample.", "maskmem_tpos_enc", "no_mem_pos_enc",
                  "no_obj_ptr", "no_obj_embed_spatial", "obj_ptr_proj.", "obj_ptr_tpos_proj.")
TRUNK_PREFIX = "image_encoder.trunk."


def build_sam2(config: str | Mapping[str, Any]) -> Sam2:
    """Build an untrained SAM 2.1 image model, in eval mode.

    Parameters
    ----------
    config : str or mapping
        ``"sam2.1_hiera_tiny"``, ``"_small"``, ``"_base_plus"``, ``"_large"``, or a dict
        with the Hiera keys (``embed_dim``, ``num_heads``, ``stages``,
        ``global_att_blocks``, ``window_spec``, ``window_pos_embed_bkg_spatial_size``)
        and optionally ``image_size`` (a multiple of 16 * window_spec[0] / 4),
        ``d_model`` (multiple of 8) and ``decoder_mlp_dim`` for small test models.
    """
    if isinstance(config, str):
        if config not in SAM2_CONFIGS:
            raise ValueError(f"unknown SAM 2.1 model {config!r}; expected one of {sorted(SAM2_CONFIGS)}")
        config = dict(SAM2_CONFIGS[config], name=config)
    config = {**DEFAULTS, "name": "sam2-custom", **dict(config), "family": FAMILY}
    missing = [key for key in TRUNK_KEYS if key not in config]
    if missing:
        raise ValueError(f"SAM 2 config lacks {missing}")
    dim = int(config["d_model"])
    image_size = int(config["image_size"])
    if dim % 8:
        raise ValueError(f"d_model must be a multiple of 8, got {dim}")
    trunk = Hiera(
        embed_dim=int(config["embed_dim"]),
        num_heads=int(config["num_heads"]),
        stages=tuple(config["stages"]),
        global_att_blocks=tuple(config["global_att_blocks"]),
        window_spec=tuple(config["window_spec"]),
        window_pos_embed_bkg_spatial_size=tuple(config["window_pos_embed_bkg_spatial_size"]),
    )
    neck = FpnNeck(dim, trunk.channel_list, fpn_top_down_levels=(2, 3))
    grid = image_size // 16
    video = bool(config["video"])
    mem_dim = int(config["mem_dim"])
    model = Sam2(
        image_encoder=ImageEncoder(trunk, neck, scalp=1),
        sam_prompt_encoder=Sam2PromptEncoder(dim, (grid, grid), (image_size, image_size), mask_in_chans=16),
        sam_mask_decoder=Sam2MaskDecoder(dim, two_way_transformer(dim, int(config["decoder_mlp_dim"]))),
        image_size=image_size,
        memory_attention=MemoryAttention(dim, mem_dim, int(config["memory_layers"]), int(config["memory_mlp_dim"]))
        if video else None,
        memory_encoder=MemoryEncoder(dim, mem_dim) if video else None,
        num_maskmem=int(config["num_maskmem"]),
    )
    model.config = config
    return model.eval()


def is_sam2_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether a state dict (already taken from under ``"model"``) is a SAM 2 model's."""
    return any(key.startswith(TRUNK_PREFIX) for key in state) and "sam_mask_decoder.conv_s0.weight" in state


def detect_sam2_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The config of the SAM 2.1 model whose tensors ``state`` holds.

    Reads the trunk width, the blocks per stage (the blocks with a ``proj`` start a
    stage), the position-embedding grids and the neck width, and matches them against
    :data:`SAM2_CONFIGS`.

    Raises
    ------
    ValueError
        If ``state`` is not a SAM 2 state dict or matches none of the four models.
    """
    if not is_sam2_state_dict(state):
        raise ValueError("not a SAM 2 state dict: no image_encoder.trunk.* / sam_mask_decoder.conv_s0 tensors")
    visible = _visible_architecture(state)
    for name, config in SAM2_CONFIGS.items():
        expected = {
            "embed_dim": config["embed_dim"],
            "stages": list(config["stages"]),
            "window": config["window_spec"][0],
            "background": list(config["window_pos_embed_bkg_spatial_size"]),
            "d_model": DEFAULTS["d_model"],
        }
        if visible == expected:
            video = any(key.startswith(VIDEO_PREFIXES) for key in state)
            return dict(config, name=name, **{**DEFAULTS, "video": video}, family=FAMILY)
    raise ValueError(f"the SAM 2 tensors match none of {sorted(SAM2_CONFIGS)}: {visible}")


def _visible_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    block_ids = {int(key[len(TRUNK_PREFIX + "blocks."):].split(".")[0]) for key in state
                 if key.startswith(TRUNK_PREFIX + "blocks.")}
    depth = max(block_ids) + 1 if block_ids else 0
    starts = sorted(i for i in block_ids if f"{TRUNK_PREFIX}blocks.{i}.proj.weight" in state)
    bounds = [0, *starts, depth]
    return {
        "embed_dim": int(state[TRUNK_PREFIX + "patch_embed.proj.weight"].shape[0]),
        "stages": [b - a for a, b in zip(bounds[:-1], bounds[1:])],
        "window": int(state[TRUNK_PREFIX + "pos_embed_window"].shape[-1]),
        "background": [int(n) for n in state[TRUNK_PREFIX + "pos_embed"].shape[-2:]],
        "d_model": int(state["sam_mask_decoder.conv_s0.weight"].shape[1]),
    }


def image_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image model's tensors of a full SAM 2.1 state dict: the video modules'
    (:data:`VIDEO_PREFIXES`) are left out; every other key is kept (a strict load then
    reports unknown ones)."""
    return {key: value for key, value in state.items() if not key.startswith(VIDEO_PREFIXES)}


def load_sam2(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> Sam2:
    """Build the model ``state`` describes (or ``config``) and load its image tensors strictly."""
    model = build_sam2(config if config is not None else detect_sam2_config(state))
    if not model.supports_video:
        state = image_state_dict(state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_sam2_checkpoint(state: Mapping[str, torch.Tensor], path: Any, device: torch.device | str = "cpu",
                         name: str | None = None) -> Sam2:
    """The model of an official SAM 2.1 file's state dict, for ``napari_sam.load_model``.

    Parameters
    ----------
    state : the file's tensors (the ``"model"`` entry), read with ``weights_only=True``.
    path : the file, for messages and ``metadata["checkpoint"]``.
    device : where the model goes.
    name : the registry name, when loaded by name.

    The architecture is detected from the tensors (the four official sizes), or read from
    a sidecar JSON (``<stem>.json``) whose ``config`` has ``"family": "sam2"``.

    Raises
    ------
    CheckpointError
        Tensors of a SAM 2 model that fit none of the four sizes, or keys that do not fit.
    """
    from pathlib import Path

    from ...checkpoints.errors import CheckpointError
    from ...checkpoints.metadata import read_metadata

    # A sidecar JSON whose config is a SAM 2 one (e.g. a small model of one's own; the
    # input size is not visible in the tensors) is used as it is, checked by the strict load.
    metadata, _ = read_metadata(Path(path))
    config = metadata.get("config")
    config = config if isinstance(config, Mapping) and config.get("family") == FAMILY else None
    try:
        model = load_sam2(state, config)
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path} holds SAM 2 tensors that cannot be loaded: {err}") from err
    model.to(device)
    model.metadata = {**metadata, "model_type": model.config["name"], "config": dict(model.config),
                      "checkpoint": str(path), **({"name": name} if name is not None else {})}
    return model
