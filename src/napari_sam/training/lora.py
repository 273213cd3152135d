"""What to train: freezing, and LoRA adapters on the image encoder's attention.

``--train`` modes:

``decoder``         mask decoder only (the encoder is frozen, so embeddings are cached)
``decoder+prompt``  mask decoder and prompt encoder
``lora``            low-rank adapters on the encoder's attention ``qkv`` (and optionally
                    ``proj``) Linear layers, plus the mask decoder
``all``             every parameter

A LoRA layer (Hu et al. 2021) adds ``scale * B @ A`` to a frozen weight ``W`` with
``A`` (rank x in) and ``B`` (out x rank), ``B`` starting at zero so training starts from
the base model. :func:`merge_lora` folds the product back into ``W``, leaving plain
``nn.Linear`` layers, so the saved state dict is a standard SAM state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TRAIN_MODES = ("decoder", "decoder+prompt", "lora", "all", "iou_head")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update; ``weight`` / ``bias`` keep their names.

    Parameters
    ----------
    base : nn.Linear
        The layer to adapt; its weight and bias are shared, not copied.
    rank : int
        Rank of the update.
    alpha : float
        The update is scaled by ``alpha / rank``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_lora(
    encoder: nn.Module, rank: int = 4, alpha: float | None = None, targets: Sequence[str] = ("qkv",)
) -> list[str]:
    """Replace the encoder's attention Linear layers named in ``targets`` by :class:`LoRALinear`.

    Parameters
    ----------
    encoder : nn.Module
        ``sam.image_encoder``; every ``nn.Linear`` whose name ends with ``attn.<target>``
        is adapted (the ViT blocks' ``attn.qkv`` / ``attn.proj``, likewise in TinyViT).
    rank, alpha : int, float
        Rank and scale numerator (``alpha`` defaults to ``rank``: scale 1).
    targets : sequence of str
        ``("qkv",)`` or ``("qkv", "proj")``.

    Returns
    -------
    Names of the adapted layers; an empty list is an error.
    """
    alpha = float(rank if alpha is None else alpha)
    endings = tuple(f"attn.{target}" for target in targets)
    names = [
        name
        for name, module in encoder.named_modules()
        if type(module) is nn.Linear and any(name == e or name.endswith("." + e) for e in endings)
    ]
    if not names:
        raise ValueError(f"no Linear layers named attn.{{{','.join(targets)}}} in the image encoder")
    for name in names:
        _replace(encoder, name, LoRALinear(encoder.get_submodule(name), rank, alpha))
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every :class:`LoRALinear` in ``model`` into a plain ``nn.Linear``, in place.

    Returns the number of merged layers.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).merged())
    return len(names)


def configure_trainable(
    sam: nn.Module,
    mode: str,
    lora_rank: int = 4,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = ("qkv",),
) -> list[nn.Parameter]:
    """Freeze ``sam`` except what ``mode`` trains (adding LoRA layers for ``"lora"``).

    Returns the trainable parameters, in a fixed order (for the optimizer).
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"train must be one of {TRAIN_MODES}, got {mode!r}")
    sam.requires_grad_(False)
    if mode == "lora":
        apply_lora(sam.image_encoder, lora_rank, lora_alpha, lora_targets)
        for module in sam.image_encoder.modules():
            if isinstance(module, LoRALinear):
                module.lora_a.requires_grad_(True)
                module.lora_b.requires_grad_(True)
    if mode == "iou_head":
        # Only the head that ranks the candidates: the masks stay exactly as they are.
        sam.mask_decoder.iou_prediction_head.requires_grad_(True)
        return [p for p in sam.parameters() if p.requires_grad]
    sam.mask_decoder.requires_grad_(True)
    if mode in ("decoder+prompt", "all"):
        sam.prompt_encoder.requires_grad_(True)
    if mode == "all":
        sam.requires_grad_(True)
    return [p for p in sam.parameters() if p.requires_grad]


def encoder_is_trained(mode: str) -> bool:
    """Whether ``mode`` changes the image embeddings (so they cannot be cached)."""
    return mode in ("lora", "all")
