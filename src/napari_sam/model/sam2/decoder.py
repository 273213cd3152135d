"""SAM 2's prompt encoder and mask decoder.

The prompt encoder is SAM's (same tensors), except that a box enters as two corner
points labelled 2 and 3 among the clicks and a padding point always ends the sequence,
as the official SAM 2 predictor does.

The mask decoder is SAM's two-way transformer with three additions (Ravi et al. 2024):
- high-resolution skip connections: the stride-4 and stride-8 features of the image
  encoder, projected by ``conv_s0`` / ``conv_s1``, are added inside the upscaling path;
- an object-score token and head predicting whether the object is present at all
  (used by video propagation to mark occlusion);
- dynamic multimask: when one mask is asked for and the single-mask output is unstable
  (the IoU of its areas above +delta and above -delta is below a threshold), the best
  of the three multimask outputs by predicted IoU replaces it.

Parameter names: ``sam_prompt_encoder.*`` and ``sam_mask_decoder.*`` of the official
SAM 2.1 checkpoints.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MLP, LayerNorm2d
from ..kernels import gelu_, linear_weights
from ..mask_decoder import MaskDecoder, _version
from ..prompt_encoder import PromptEncoder
from ..transformer import TwoWayTransformer


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder with box corners as labelled points (labels 2 and 3)."""

    # The base class embeds labels 2 / 3 (box corners) with point_embeddings[2] / [3] too;
    # SAM 2 passes a box as those two labelled points (model.py, before the clicks).


def two_way_transformer(dim: int, mlp_dim: int = 2048, depth: int = 2, num_heads: int = 8) -> TwoWayTransformer:
    """SAM's two-way transformer with SAM 2's tensor names: the token MLP of every block
    is ``mlp.layers.{0,1}`` (ReLU between) instead of ``mlp.lin1`` / ``mlp.lin2``."""
    transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
    for block in transformer.layers:
        block.mlp = MLP(dim, mlp_dim, dim, 2)
    return transformer


class Sam2MaskDecoder(nn.Module):
    """Predicts 4 masks (1 single + 3 multimask), their IoU and an object score.

    Parameters
    ----------
    transformer_dim : int
        Token and image-embedding width (256).
    transformer : TwoWayTransformer
        From :func:`two_way_transformer`.
    num_multimask_outputs : int
        3.
    iou_head_depth, iou_head_hidden_dim : int
        The IoU head MLP (3 layers of 256); its output goes through a sigmoid.
    stability_delta, stability_thresh : float
        Dynamic multimask: a single mask with stability below ``stability_thresh``
        (0.98) at logit offsets ``+-stability_delta`` (0.05) is replaced.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer_dim = dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        # Projections of the stride-4 / stride-8 encoder features for the skips; the
        # model applies them once per image (Sam2.encode), not per prompt.
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks.

        Parameters
        ----------
        image_embeddings : (1 or B, C, h, w)
        image_pe : (1, C, h, w)
        sparse_prompt_embeddings : (B, T, C)
        dense_prompt_embeddings : (B, C, h, w)
        multimask_output : bool
            The three multimask outputs instead of one mask.
        high_res_features : ((1 or B, C/8, 4h, 4w), (1 or B, C/4, 2h, 2w))
            ``conv_s0`` / ``conv_s1`` of the stride-4 / stride-8 encoder levels.

        Returns
        -------
        masks : (B, K, 4h, 4w) logits; iou : (B, K); mask_tokens : (B, K, C) the output
        tokens of the returned masks (object pointers of video propagation use them);
        object_score_logits : (B, 1). K = 3 or 1.
        """
        masks, iou, tokens, object_scores = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], tokens[:, 1:], object_scores
        if self.training:
            return masks[:, :1], iou[:, :1], tokens[:, :1], object_scores
        masks, iou = self._dynamic_multimask(masks, iou)
        # The token of the single-mask output, whichever mask replaced it (as the reference).
        return masks, iou, tokens[:, :1], object_scores

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four masks ``(B, 4, 4h, 4w)``, IoU ``(B, 4)``, mask tokens ``(B, 4, C)``, object scores ``(B, 1)``."""
        batch = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, batch):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings for {batch} prompt sets: give one, or one per prompt set"
            )
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        _, channels, height, width = image_embeddings.shape
        first_layer = self._first_layer_image(image_embeddings, image_pe, dense_prompt_embeddings)
        # broadcasts one shared embedding; unused by a first layer computed earlier
        src = image_embeddings if first_layer is not None else image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
        outputs = 2 + self.num_mask_tokens  # object score, IoU, mask tokens: all that is read
        hs, src = self.transformer(src, pos_src, tokens, first_layer, outputs)
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        if not torch.is_grad_enabled() and self._pixelwise_upscaling():
            masks = self._upscale_pixelwise(src, hyper_in, high_res_features, height, width)
        else:
            conv1, norm, act1, conv2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            src = src.transpose(1, 2).reshape(-1, channels, height, width)
            upscaled = act1(norm(conv1(src) + feat_s1))
            upscaled = act2(conv2(upscaled) + feat_s0)
            _, up_channels, up_h, up_w = upscaled.shape
            masks = (hyper_in @ upscaled.reshape(-1, up_channels, up_h * up_w)).reshape(batch, -1, up_h, up_w)
        iou = torch.sigmoid(self.iou_prediction_head(hs[:, 1]))
        object_scores = self.pred_obj_score_head(hs[:, 0])
        return masks, iou, mask_tokens_out, object_scores

    # Inference: the first two-way block's image-side projections, computed once per image
    # embedding decoded without a mask prompt and reused by every later prompt (SAM's rule
    # and code: the image tokens, their PE and the dense vector are the same each time).
    _first_layer_image = MaskDecoder._first_layer_image

    _pixelwise_upscaling = MaskDecoder._pixelwise_upscaling

    def _upscale_pixelwise(self, src: torch.Tensor, hyper_in: torch.Tensor,
                           high_res: tuple[torch.Tensor, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Inference: ``output_upscaling`` with the skips, and the mask product, as matrix products.

        As SAM's (``MaskDecoder._upscale_pixelwise``): a 2x2 stride-2 transposed conv maps
        each input pixel to its own 2x2 output pixels, a linear layer to ``4 * C_out``
        features; so both convs run on rows ``(i, j, di, dj[, di2, dj2])`` as they come,
        the skip features are read in that order (strided views, one copy each), and only
        the K masks are put into image order.

        ``src (B, hw, C)``, ``hyper_in (B, K, C / 8)``, ``high_res`` ``(1 or B, C/8, 4h, 4w)``
        and ``(1 or B, C/4, 2h, 2w)`` -> masks ``(B, K, 4h, 4w)``.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        feat_s0, feat_s1 = high_res
        batch, tokens, _ = src.shape
        c1, c2 = conv1.out_channels, conv2.out_channels

        def as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
            # (C_in, C_out, 2, 2) -> (4 * C_out, C_in), output features ordered (di, dj, c_out)
            return conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels), conv.bias.repeat(4)

        skip0, skip1 = self._skips_in_row_order(feat_s0, feat_s1, height, width)
        hidden = linear_weights(src, *as_linear(conv1)).view(-1, height, width, 4 * c1)
        hidden = (hidden + skip1).view(-1, c1)
        hidden = gelu_(F.layer_norm(hidden, (c1,), norm.weight, norm.bias, norm.eps))
        features = linear_weights(hidden, *as_linear(conv2)).view(-1, height, width, 16 * c2)
        features = gelu_((features + skip0).view(batch, tokens * 16, c2))
        masks = torch.bmm(features, hyper_in.transpose(1, 2))  # (B, pixels in row order, K)
        masks = masks.view(batch, height, width, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, -1, 4 * height, 4 * width)

    def _skips_in_row_order(self, feat_s0: torch.Tensor, feat_s1: torch.Tensor, height: int,
                            width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The skip features in the pixelwise rows' order, contiguous: ``(1 or B, h, w, 16 * C/8)``
        (``feat_s0[b, c, 4i + 2di + di2, 4j + 2dj + dj2]`` at ``(b, i, j, (di, dj, di2, dj2, c))``)
        and ``(1 or B, h, w, 4 * C/4)``. Kept for the latest pair of feature tensors (the
        same image decoded with many prompts), while neither is modified in place.
        """
        key = (feat_s0.data_ptr(), _version(feat_s0), feat_s1.data_ptr(), _version(feat_s1), height, width)
        memo = self.__dict__.get("_skips_memo")
        if memo is not None and memo[0]() is feat_s0 and memo[1]() is feat_s1 and memo[2] == key:
            return memo[3]
        c0, c1 = feat_s0.shape[1], feat_s1.shape[1]
        skip0 = feat_s0.view(-1, c0, height, 2, 2, width, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
        skip1 = feat_s1.view(-1, c1, height, 2, width, 2).permute(0, 2, 4, 3, 5, 1)
        skips = (skip0.reshape(-1, height, width, 16 * c0), skip1.reshape(-1, height, width, 4 * c1))
        self.__dict__["_skips_memo"] = (weakref.ref(feat_s0), weakref.ref(feat_s1), key, skips)
        return skips

    def stability(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., H, W)`` logits -> area above ``+delta`` over area above ``-delta`` (1 where both are empty)."""
        logits = logits.flatten(-2)
        inner = (logits > self.stability_delta).sum(-1).float()
        outer = (logits > -self.stability_delta).sum(-1).float()
        return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))

    def _dynamic_multimask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single mask ``(B, 1, H, W)`` and its IoU ``(B, 1)``, replaced where unstable
        by the multimask output with the highest predicted IoU."""
        best = iou[:, 1:].argmax(dim=1) + 1
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks, best_iou = masks[rows, best][:, None], iou[rows, best][:, None]
        stable = self.stability(masks[:, :1]) >= self.stability_thresh  # (B, 1)
        return (
            torch.where(stable[..., None, None], masks[:, :1], best_masks),
            torch.where(stable, iou[:, :1], best_iou),
        )
