"""Sam2: SAM 2.1's image model as a :class:`~napari_sam.model.family.ModelFamily`.

Image encoder (Hiera + FPN neck), prompt encoder and mask decoder with the tensor names
of the official checkpoints. Model input: the plane stretched to ``S x S`` (no aspect
ratio kept, as the official predictor), in [0, 1], normalised with the ImageNet
statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..family import InputFrame
from ..common import MLP
from .decoder import Sam2MaskDecoder, Sam2PromptEncoder
from .memory import MemoryAttention, MemoryEncoder
from .neck import ImageEncoder, conv1x1

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 2, 3
# The official predictor hands back low-res logits clamped to this range, and callers
# give them back as mask prompts; decode clamps mask prompts the same way.
LOGIT_CLAMP = 32.0

# Keys of the features `encode` returns (each (B, ...)).
IMAGE_EMBED, HIGH_RES_S0, HIGH_RES_S1 = "image_embed", "high_res_s0", "high_res_s1"


class Sam2(nn.Module):
    """SAM 2.1 for images: ``prepare`` -> ``encode`` (once per image) -> ``decode`` (per prompt).

    Parameters
    ----------
    image_encoder : ImageEncoder
    sam_prompt_encoder : Sam2PromptEncoder
    sam_mask_decoder : Sam2MaskDecoder
    image_size : int
        Side of the square model input (1024).
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoder,
        sam_prompt_encoder: Sam2PromptEncoder,
        sam_mask_decoder: Sam2MaskDecoder,
        image_size: int = 1024,
        memory_attention: MemoryAttention | None = None,
        memory_encoder: MemoryEncoder | None = None,
        num_maskmem: int = 7,
    ) -> None:
        super().__init__()
        dim = sam_mask_decoder.transformer_dim
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        # Added to the image embedding of a frame decoded without memory (every image).
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        if memory_attention is not None and memory_encoder is not None:
            # Video propagation (napari_sam.model.sam2.video); names as in the official files.
            mem_dim = memory_encoder.out_proj.out_channels
            self.num_maskmem = num_maskmem
            self.memory_attention = memory_attention
            self.memory_encoder = memory_encoder
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)  # mask prompts in video (unused here)
            self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
            self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))  # unused with no_mem_embed added directly
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
            self.obj_ptr_proj = MLP(dim, dim, dim, 3)
            self.obj_ptr_tpos_proj = nn.Linear(dim, mem_dim)
        self._image_size = int(image_size)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
        self.config: dict = {}  # set by build_sam2
        self.metadata: dict = {}

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return self._image_size

    @property
    def embedding_size(self) -> tuple[int, int]:
        return tuple(self.sam_prompt_encoder.image_embedding_size)

    @property
    def low_res_size(self) -> tuple[int, int]:
        return tuple(self.sam_prompt_encoder.mask_input_size)

    @property
    def supports_text(self) -> bool:
        return False

    @property
    def supports_video(self) -> bool:
        """Whether the memory modules are built (:class:`~napari_sam.model.sam2.video.VideoTracker`)."""
        return hasattr(self, "memory_attention")

    def image_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` -> ``high_res_s0``, ``high_res_s1`` (projected for the decoder's
        skips) and the raw stride-16 features ``(B, C, h, w)`` (without ``no_mem_embed``)."""
        s0, s1, s2 = self.image_encoder(x)
        decoder = self.sam_mask_decoder
        return conv1x1(decoder.conv_s0, s0).contiguous(), conv1x1(decoder.conv_s1, s1).contiguous(), s2.contiguous()

    def prepare(self, rgb: np.ndarray) -> tuple[torch.Tensor, InputFrame]:
        """``(H, W, 3)`` uint8 plane -> model input ``(1, 3, S, S)`` on :attr:`device` and its frame.

        The plane is stretched to ``S x S`` (bilinear, antialiased, on [0, 1] floats) and
        normalised, as the official predictor does; ``frame.input_size == (S, S)``.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
        size = self.image_size
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return x, InputFrame(tuple(rgb.shape[:2]), (size, size), size)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, S, S)`` from :meth:`prepare` -> features of B images.

        Returns
        -------
        dict
            ``image_embed (B, C, h, w)`` (the stride-16 level plus ``no_mem_embed``),
            ``high_res_s0 (B, C/8, 4h, 4w)`` and ``high_res_s1 (B, C/4, 2h, 2w)`` (the
            stride-4 / stride-8 levels through ``conv_s0`` / ``conv_s1``).
        """
        s0, s1, s2 = self.image_levels(x)
        return {IMAGE_EMBED: s2 + self.no_mem_embed.view(1, -1, 1, 1), HIGH_RES_S0: s0, HIGH_RES_S1: s1}

    def decode(
        self,
        features: dict[str, torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
        text_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode prompts against the features of 1 image (shared) or of B images.

        Parameters
        ----------
        features : dict from :meth:`encode`
        point_coords : (B, N, 2) xy in model-input pixels; point_labels : (B, N)
            1 positive, 0 negative, -1 padding.
        boxes : (B, 4) xyxy in model-input pixels; enters as two corner points before
            the clicks.
        mask_inputs : (B, 1, 4h, 4w) low-res logits (clamped to +-32 first).
        multimask : bool
            Three candidates; otherwise one (the single-mask output, or the best
            multimask output where that is unstable).

        Returns
        -------
        low_res_logits : (B, K, 4h, 4w); iou : (B, K), K = 3 or 1.
        """
        masks, iou, _, _ = self.decode_full(features, point_coords, point_labels, boxes, mask_inputs, multimask,
                                            text_embeddings)
        return masks, iou

    def decode_full(
        self,
        features: dict[str, torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
        text_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode` plus the output tokens ``(B, K, C)`` and object-score logits ``(B, 1)``."""
        if text_embeddings is not None:
            raise ValueError("SAM 2.1 models have no text path; use the bundled default model for text prompts")
        points = _points_with_box(point_coords, point_labels, boxes)
        if mask_inputs is not None:
            mask_inputs = mask_inputs.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        sparse, dense = self.sam_prompt_encoder(points, None, mask_inputs)
        return self.sam_mask_decoder(
            image_embeddings=features[IMAGE_EMBED],
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_res_features=(features[HIGH_RES_S0], features[HIGH_RES_S1]),
        )


def _points_with_box(
    point_coords: torch.Tensor | None, point_labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Clicks and box corners as one labelled point sequence ``((B, N, 2), (B, N))``, corners first."""
    if point_coords is not None and point_labels is None:
        raise ValueError("point_coords given without point_labels")
    if boxes is None:
        return None if point_coords is None else (point_coords, point_labels)
    corners = boxes.reshape(-1, 2, 2)
    corner_labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=boxes.device).expand(corners.shape[0], 2)
    if point_coords is None:
        return corners, corner_labels
    if point_coords.shape[0] != corners.shape[0]:
        raise ValueError(f"{corners.shape[0]} boxes for {point_coords.shape[0]} point sets")
    return (
        torch.cat([corners, point_coords.to(corners.dtype)], dim=1),
        torch.cat([corner_labels.to(point_labels.dtype), point_labels], dim=1),
    )
