"""SAM's mask decoder: prompt tokens + image embedding -> mask logits and predicted IoU."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .kernels import gelu_, linear_weights, run_sequential
from .transformer import FirstLayerImage, TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks and their IoU from one set of prompts.

    Token 0 is the single-mask output used for unambiguous prompts; tokens 1..3 are the
    multimask outputs for ambiguous ones (one point).
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Parameters
        ----------
        image_embeddings : (1 or B, C, h, w)
            One embedding shared by all B prompt sets, or one per prompt set.
        image_pe : (1, C, h, w)
        sparse_prompt_embeddings : (B, T, C)
        dense_prompt_embeddings : (B, C, h, w)
        multimask_output : bool
            Return the 3 multimask candidates instead of the single one.

        Returns
        -------
        masks : (B, K, 4h, 4w) logits; iou_pred : (B, K), K = 3 or 1.
        """
        selected = slice(1, None) if multimask_output else slice(0, 1)
        if torch.is_grad_enabled():
            # Training: every token's hypernetwork in the graph (zero gradients for the
            # unselected ones, so optimizers treat all parameters alike).
            masks, iou_pred = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )
            return masks[:, selected], iou_pred[:, selected]
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, selected
        )
        return masks, iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        selected: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of the ``selected`` mask tokens ``(B, K, 4h, 4w)`` (default all four) and
        the IoU predictions of all tokens ``(B, 4)``."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)

        if image_embeddings.shape[0] not in (1, batch):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings for {batch} prompt sets: give one, or one per prompt set"
            )
        _, channels, height, width = image_embeddings.shape
        first_layer = self._first_layer_image(image_embeddings, image_pe, dense_prompt_embeddings)
        # broadcasts a shared embedding; unused by a first layer computed earlier
        src = image_embeddings if first_layer is not None else image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(batch, -1, -1, -1)

        # The IoU token and the selected mask tokens are all that is read of the output.
        outputs = None if torch.is_grad_enabled() else 1 + range(self.num_mask_tokens)[selected][-1] + 1
        hs, src = self.transformer(src, pos_src, tokens, first_layer, outputs)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        indices = range(self.num_mask_tokens)[selected]  # only the masks asked for
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in indices], dim=1)
        if not torch.is_grad_enabled() and self._pixelwise_upscaling():
            masks = self._upscale_pixelwise(src, hyper_in, height, width)
        else:
            # (B, hw, C) -> (B, C, h, w) as a channels-last view, no copy
            upscaled = run_sequential(self.output_upscaling, src.transpose(1, 2).reshape(batch, channels, height, width))
            _, up_channels, up_h, up_w = upscaled.shape
            # (B, C, h, w) in any memory layout -> (B, C, hw): a view when channels-last
            pixels = upscaled.permute(0, 2, 3, 1).reshape(batch, up_h * up_w, up_channels).transpose(1, 2)
            masks = (hyper_in @ pixels).reshape(batch, -1, up_h, up_w)
        return masks, self.iou_prediction_head(iou_token_out)

    def _first_layer_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> FirstLayerImage | None:
        """The transformer's first-layer image work, reused while prompts change (inference).

        Applies to one shared embedding decoded without a mask prompt (the dense prompt
        is then the same vector at every pixel and for every prompt set): the first block
        sees the same image tokens every time. Computed on the second decode against the
        same embedding tensor (a one-off decode gains nothing from it) and kept for the
        latest embedding only. It is recomputed when the embedding object, the PE, the
        dense vector's storage or the block's weights change, or any of them is modified
        in place (version counters; the memo holds the dense vector, so its storage
        cannot be reused by another). No value is read back from the device.
        """
        if torch.is_grad_enabled() or image_embeddings.shape[0] != 1 or not self.transformer.can_precompute_image():
            return None
        if dense.stride(0) != 0 and dense.shape[0] != 1 or dense.stride(2) != 0 or dense.stride(3) != 0:
            return None  # a mask prompt: differs per pixel (or per prompt set)
        dense_vector = dense[:1, :, :1, :1]
        tensors = [image_embeddings, image_pe, dense_vector]
        block = self.transformer.layers[0]
        for attention in (block.cross_attn_token_to_image, block.cross_attn_image_to_token):
            tensors += list(attention.parameters())
        if any(tensor.is_inference() for tensor in tensors[1:]):
            return None  # in-place changes of these would go unnoticed (no version counter)
        key = tuple((tensor.data_ptr(), _version(tensor)) for tensor in tensors)
        memo = self.__dict__.get("_first_layer_memo")
        if memo is None or memo["embedding"]() is not image_embeddings or memo["key"] != key:
            self.__dict__["_first_layer_memo"] = {
                "embedding": weakref.ref(image_embeddings), "key": key, "dense": dense_vector, "image": None,
            }
            return None
        if memo["image"] is None:
            memo["image"] = self.transformer.image_side(image_embeddings + dense_vector, image_pe)
        return memo["image"]

    def _pixelwise_upscaling(self) -> bool:
        """Whether ``output_upscaling`` is SAM's: 2x2 stride-2 transposed convs, LayerNorm2d, GELUs."""
        layers = list(self.output_upscaling)
        if [type(layer) for layer in layers] != [nn.ConvTranspose2d, LayerNorm2d, nn.GELU, nn.ConvTranspose2d, nn.GELU]:
            return False
        convs, gelus = (layers[0], layers[3]), (layers[2], layers[4])
        return all(
            conv.kernel_size == conv.stride == (2, 2) and conv.padding == (0, 0) and conv.output_padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
            for conv in convs
        ) and all(gelu.approximate == "none" for gelu in gelus)

    def _upscale_pixelwise(self, src: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Inference: ``output_upscaling`` and the mask product as three matrix products.

        A 2x2 transposed conv of stride 2 maps each input pixel to its own 2x2 output
        pixels: a linear layer to ``4 * C_out`` features. The layer norm and the GELUs act
        per pixel, so both convs run on the rows ``(i, j, di, dj)`` as they come and only
        the K final masks are put into image order (instead of ``C / 8`` feature maps).

        ``src (B, hw, C)`` image tokens, ``hyper_in (B, K, C / 8)`` -> masks ``(B, K, 4h, 4w)``.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        batch, tokens, _ = src.shape

        def as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
            # (C_in, C_out, 2, 2) -> (4 * C_out, C_in), output features ordered (di, dj, c_out)
            weight = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels)
            return weight, conv.bias.repeat(4)

        hidden = linear_weights(src, *as_linear(conv1)).view(-1, conv1.out_channels)
        hidden = gelu_(F.layer_norm(hidden, hidden.shape[-1:], norm.weight, norm.bias, norm.eps))
        features = linear_weights(hidden, *as_linear(conv2), gelu=True)  # (B * hw * 4, 4 * C2)
        features = features.view(batch, tokens * 16, conv2.out_channels)
        if batch == 1:  # a product with 3 or so columns: oneDNN's linear is 3x faster than matmul here
            masks = linear_weights(features[0], hyper_in[0].contiguous())[None]
        else:
            masks = features @ hyper_in.transpose(1, 2)
        # rows (i, j, di, dj, di2, dj2): output pixel (4i + 2di + di2, 4j + 2dj + dj2)
        masks = masks.view(batch, height, width, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, -1, 4 * height, 4 * width)


def _version(tensor: torch.Tensor) -> int:
    """In-place modification counter of ``tensor`` (-1 for inference tensors, which have none)."""
    return -1 if tensor.is_inference() else tensor._version
