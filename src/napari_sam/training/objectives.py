"""What each round is scored against: targets at the loss resolution, and the kind loss.

Masks here are in the model-input frame (``(B, h, w)`` bool, the image resized so its
longest side is ``image_size``, not padded). The loss is computed either on the low-res
logit grid (``loss_resolution="low"``: 16 times cheaper for SAM's 4x grid, and the grid
the mask prompt is fed back on), cropped to the unpadded image region, against each mask
area-downsampled to that grid and thresholded at one half; or on logits upsampled to the
model input against the full-resolution masks (``"input"``). The geometry is inference's
(:mod:`napari_sam.inference.transforms`); see ``docs/training.md`` for the choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.transforms import mask_to_low_res_logits, upscale_logits, upscale_masks
from .data import Prepared, patch_kinds
from .losses import LossResult, LossWeights, sam_loss


def logits_at_input(low_res: torch.Tensor, shape: tuple[int, int], image_size: int) -> torch.Tensor:
    """``(B, K, lh, lw)`` low-res logits -> ``(B, K, h, w)`` logits on the unpadded model input
    of ``shape = (h, w)``."""
    return upscale_logits(low_res, shape, shape, image_size)


def masks_at_input(low_res: torch.Tensor, shape: tuple[int, int], image_size: int) -> np.ndarray:
    """``(B, 1, lh, lw)`` low-res logits -> ``(B, h, w)`` bool masks on the unpadded model input."""
    return upscale_masks(low_res, shape, shape, image_size)[:, 0].cpu().numpy()


def low_res_targets(
    masks: np.ndarray, image_size: int, low_res_size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, h, w)`` bool model-input masks -> ``(B, 1, lh, lw)`` float 0 / 1 on the low-res
    grid (a low-res pixel is in when at least half of it is), and the grid's unpadded
    extent ``(vh, vw)``."""
    logits = np.stack([mask_to_low_res_logits(mask, image_size, low_res_size) for mask in masks])
    targets = torch.from_numpy(logits >= 0).to(torch.float32)[:, None]
    height, width = masks.shape[1:]
    valid = (math.ceil(height * low_res_size[0] / image_size), math.ceil(width * low_res_size[1] / image_size))
    return targets, valid


@dataclass
class Targets:
    """Object masks at the loss resolution and how decoder logits are brought to them.

    Attributes
    ----------
    masks : (B, 1, h, w) float 0 / 1
        On the low-res grid (cropped to the image) or the model input.
    at : callable
        ``(B, K, lh, lw)`` low-res logits -> ``(B, K, h, w)`` logits on the grid of ``masks``.
    """

    masks: torch.Tensor
    at: Callable[[torch.Tensor], torch.Tensor]

    def loss(self, logits: torch.Tensor, iou: torch.Tensor, weights: LossWeights) -> LossResult:
        """SAM's loss of one decoder call (``logits (B, K, lh, lw)``, ``iou (B, K)``)."""
        return sam_loss(self.at(logits), iou, self.masks, weights)


def loss_targets(
    masks: np.ndarray, image_size: int, low_res_size: tuple[int, int], resolution: str, device: torch.device
) -> Targets:
    """:class:`Targets` of ``(B, h, w)`` bool model-input masks at ``resolution`` (``"low"`` or ``"input"``)."""
    if resolution == "input":
        shape = masks.shape[1:]
        targets = torch.from_numpy(masks).to(device, torch.float32)[:, None]
        return Targets(targets, lambda logits: logits_at_input(logits, shape, image_size))
    targets, (vh, vw) = low_res_targets(masks, image_size, low_res_size)
    return Targets(targets.to(device)[..., :vh, :vw], lambda logits: logits[..., :vh, :vw])


# --- object kinds (text prompts) -------------------------------------------------------


def present_kinds(prepared: Prepared) -> list[str]:
    """The object kinds with at least one labelled object in ``prepared``, sorted."""
    return sorted({prepared.classes[int(i)] for i in np.unique(prepared.labels) if int(i) in prepared.classes})


def kind_masks(prepared: Prepared, kinds: Sequence[str]) -> np.ndarray:
    """``(len(kinds), h, w)`` bool: the union of each kind's objects (empty for an absent kind)."""
    return np.stack([
        np.isin(prepared.labels, [label for label, kind_of in prepared.classes.items() if kind_of == kind])
        for kind in kinds
    ])


class KindHead(torch.nn.Conv2d):
    """A temporary 1x1 convolution that names the object kind of each image-embedding cell.

    SAM's decoder has no attention among image positions, so the mask from a kind's name
    alone can follow the kind only where the embedding tells it; cross-entropy of this
    head keeps kinds in the embedding (``kind_weight``). The head is the trainer's, never
    part of the saved model.

    Parameters
    ----------
    channels : int
        Embedding channels (``sam.prompt_encoder.embed_dim``).
    kinds : list of str
        The text kinds; class 0 is background, class ``1 + i`` is ``kinds[i]``.
    """

    def __init__(self, channels: int, kinds: Sequence[str]) -> None:
        super().__init__(int(channels), len(kinds) + 1, 1)
        self.kinds = list(kinds)

    def loss(self, embedding: torch.Tensor, prepared: Prepared, image_size: int) -> torch.Tensor | None:
        """Cross-entropy of the kind of each cell of ``embedding (1, C, h, w)`` against
        ``prepared``'s labels; ``None`` when the image has no kinds."""
        if not prepared.classes:
            return None
        stride = image_size // embedding.shape[-1]
        cells = patch_kinds(prepared.labels, prepared.classes, self.kinds, stride)
        if cells.size == 0:
            return None
        target = torch.from_numpy(cells).to(embedding.device)[None]
        logits = self(embedding)[..., : cells.shape[0], : cells.shape[1]]
        return F.cross_entropy(logits, target)
