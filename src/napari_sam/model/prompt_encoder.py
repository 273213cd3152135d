"""SAM's prompt encoder: points and boxes become sparse tokens, a mask becomes a dense map."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Rows of ``point_embeddings``: learned offsets added to the positional encoding.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 0, 1, 2, 3
PADDING_LABEL = -1


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised ``(x, y)`` coordinates (Tancik et al. 2020)."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., 2 * num_pos_feats)``."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an ``(h, w)`` grid: ``(C, h, w)``."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``(B, N, 2)`` pixel ``(x, y)`` of an image of ``(h, w)`` pixels."""
        coords_xy = coords_xy.float()
        # Python scalars, not a new tensor: building one on a GPU would wait for the host.
        normalised = torch.stack([coords_xy[..., 0] / image_size[1], coords_xy[..., 1] / image_size[0]], dim=-1)
        return self._encode(normalised)


class PromptEncoder(nn.Module):
    """Encodes points, boxes and mask prompts for the mask decoder.

    Parameters
    ----------
    embed_dim : int
        Token width (256 for every SAM decoder).
    image_embedding_size : (h, w)
        Grid of the image embedding.
    input_image_size : (H, W)
        Padded model input in pixels; prompt coordinates are in these pixels.
    mask_in_chans : int
        Hidden channels of the mask-prompt downscaler.
    text_dim : int
        Width of the text encoder's sentence embedding; 0 (official checkpoints) means
        the model has no text path. Otherwise a learned projection maps a sentence
        embedding to one sparse token beside the point and box tokens.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_dim = text_dim
        if text_dim:
            self.text_projection = nn.Sequential(
                nn.Linear(text_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
            )

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, h, w)``.

        Computed once per grid, device and dtype (it depends on a fixed buffer only) and
        cached, channels-last so that the decoder's ``(B, hw, C)`` view of it is
        contiguous. Treat the result as read-only.
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (self.image_embedding_size, matrix.device, matrix.dtype, matrix.data_ptr(), matrix._version)
        cached = self.__dict__.get("_dense_pe")
        if cached is None or cached[0] != key:
            # A plain tensor even under inference_mode: training may use it afterwards.
            with torch.inference_mode(False), torch.no_grad():
                pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
                pe = pe.contiguous(memory_format=torch.channels_last)
            cached = self.__dict__["_dense_pe"] = (key, pe)
        return cached[1]

    def _embed_points(self, coords_xy: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords_xy = coords_xy + 0.5  # pixel centres
        if pad:
            # Without a box the decoder expects a trailing padding point.
            coords_xy = torch.cat([coords_xy, coords_xy.new_zeros(coords_xy.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], dim=1)
        embedding = self.pe_layer.forward_with_coords(coords_xy, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == PADDING_LABEL, self.not_a_point_embed.weight, embedding)
        # Labels 0 / 1 (negative / positive); SAM 2 also gives box corners as points labelled 2 / 3.
        for label, offset in enumerate(self.point_embeddings):
            embedding = embedding + torch.where(labels == label, offset.weight, 0.0)
        return embedding

    def _embed_boxes(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        corners = (boxes_xyxy + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        offsets = torch.cat([self.point_embeddings[BOX_TOP_LEFT].weight, self.point_embeddings[BOX_BOTTOM_RIGHT].weight])
        return embedding + offsets

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Parameters
        ----------
        points : ((B, N, 2) xy, (B, N) labels) or None
        boxes : (B, 4) xyxy or None
        masks : (B, 1, 4h, 4w) logits or None
        text : (B, text_dim) sentence embeddings or None

        Returns
        -------
        sparse : (B, T, C) tokens; dense : (B, C, h, w).
        """
        if text is not None and not self.text_dim:
            raise ValueError(
                "this model has no text path (official SAM, MobileSAM and micro-sam checkpoints have none); "
                "use the bundled default model or one fine-tuned with text"
            )
        batch = _batch_size(points, boxes, masks, text)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if text is not None:
            sparse.append(self.text_projection(text.float())[:, None, :])
        sparse_embeddings = torch.cat(sparse, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse_embeddings, dense


def _batch_size(points, boxes, masks, text) -> int:
    if points is not None:
        return points[0].shape[0]
    for prompt in (boxes, masks, text):
        if prompt is not None:
            return prompt.shape[0]
    return 1
