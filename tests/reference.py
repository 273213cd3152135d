"""Reference SAM models with perturbed weights, for parity tests.

The reference packages initialise many tensors to constants (LayerNorm and BatchNorm
weights to 1, biases and relative position tables to 0, some BatchNorm weights to 0),
so a freshly built reference would let a wrong implementation pass a parity test by
accident. `build_reference` moves every tensor of the state dict away from its initial
value with a seeded generator, so results are reproducible.

Tests only: this imports `segment_anything` and `mobile_sam`.
"""

from __future__ import annotations

import torch

import reference_shims

reference_shims.import_references()

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")

# Noise relative to a tensor's spread; tensors with no spread (constant inits) get an
# absolute one, large enough that a missing or misplaced tensor changes outputs visibly.
_RELATIVE_SCALE = 0.25
_CONSTANT_SCALE = 0.1


def reference_registry(model_type: str):
    """The reference package's `sam_model_registry` that builds `model_type`."""
    if model_type == "vit_t":
        from mobile_sam import sam_model_registry
    elif model_type in MODEL_TYPES:
        from segment_anything import sam_model_registry
    else:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    return sam_model_registry


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise, in place, to every floating-point tensor in `model.state_dict()`.

    BatchNorm running variances are scaled by a positive factor so they stay positive.
    Non-persistent buffers are left alone: `pixel_mean`/`pixel_std` are constants both
    implementations share, and TinyViT's cached attention bias table (`ab`) is derived
    from `attention_biases` and rebuilt here by switching the model to eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        if name.endswith("running_var"):
            tensor.mul_(torch.exp(_CONSTANT_SCALE * noise))
            continue
        std = float(tensor.std()) if tensor.numel() > 1 else 0.0
        scale = _RELATIVE_SCALE * std if std > 0 else _CONSTANT_SCALE
        tensor.add_(scale * noise)
    # mobile_sam's TinyViT Attention caches `attention_biases[:, idxs]` as `ab` in eval().
    model.eval()
    return model


def build_reference(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A reference Sam for `model_type`, built without a checkpoint, perturbed, in eval mode.

    The random initialisation runs under `seed` in a forked RNG, so the same seed gives
    the same weights and the global RNG is left as it was.
    """
    registry = reference_registry(model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry[model_type](checkpoint=None)
    return perturb_(model, seed=seed)


def reference_state_dict(model_type: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of `build_reference(model_type, seed)`, detached copies."""
    model = build_reference(model_type, seed=seed)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
