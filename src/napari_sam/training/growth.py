"""Grow a trained ViT encoder by blocks that start as the identity.

A fine-tune that must learn new image kinds without losing the old ones needs room; a
block whose attention output and MLP output layers are zero adds nothing to the residual
stream, so the grown model computes exactly what the trained one did and training then
decides what the new blocks do (the "Net2DeeperNet" idea of Chen et al., 2016, for
pre-norm transformers).
"""

from __future__ import annotations

import torch


def grow_encoder(sam: torch.nn.Module, blocks: int, global_attention: bool = True) -> torch.nn.Module:
    """A copy of ``sam`` with ``blocks`` more ViT blocks after its last, as the identity.

    Parameters
    ----------
    sam : Sam
        A model with a ViT image encoder (``config["encoder"] == "vit"``).
    blocks : int
        How many blocks to add (>= 1).
    global_attention : bool
        Whether the last added block attends globally (the others use the encoder's
        window size), as SAM's encoders end on a global block.

    Returns
    -------
    Sam
        On ``sam``'s device, with ``config["depth"]`` and ``config["global_attn_indexes"]``
        updated; every other parameter is copied. Its outputs equal ``sam``'s.
    """
    from ..model import build_sam

    config = dict(sam.config)
    if config.get("encoder") != "vit":
        raise ValueError(f"grow_encoder needs a ViT encoder, got {config.get('encoder')!r}")
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    depth = int(config["depth"])
    config["depth"] = depth + blocks
    added_global = [depth + blocks - 1] if global_attention else []
    config["global_attn_indexes"] = sorted(set(config["global_attn_indexes"]) | set(added_global))
    grown = build_sam(config)
    # the sidecar's "config" described the old depth; save_model records the new one
    grown.metadata = {k: v for k, v in (getattr(sam, "metadata", {}) or {}).items() if k != "config"}
    missing, unexpected = grown.load_state_dict(sam.state_dict(), strict=False)
    new_prefixes = tuple(f"image_encoder.blocks.{i}." for i in range(depth, depth + blocks))
    if unexpected or any(not name.startswith(new_prefixes) for name in missing):
        raise RuntimeError(f"growing the encoder mismatched parameters: {sorted(unexpected) or sorted(missing)}")
    with torch.no_grad():
        for block in grown.image_encoder.blocks[depth:]:
            for layer in (block.attn.proj, block.mlp.lin2):
                layer.weight.zero_()
                layer.bias.zero_()
    return grown.to(next(sam.parameters()).device)
