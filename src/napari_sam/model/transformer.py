"""The two-way transformer of SAM's mask decoder: tokens and image attend to each other."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock

# Inference folds the image-side projections into the prompt side when one side has
# at least this many times more tokens than the other (see Attention).
FOLD_RATIO = 4


class FirstLayerImage(NamedTuple):
    """What the first two-way block computes from the image alone (inference).

    Its image tokens enter with the same PE and, without a mask prompt, the same dense
    embedding on every prompt, so their projections can be reused across prompts on one
    image. ``keys (1, hw, C)``; ``k``, ``v``: the token->image attention's key and value
    heads ``(1, heads, hw, d)``; ``q``: the image->token attention's query heads, laid
    out ``(1, heads, d, hw)`` for the scores' product.
    """

    keys: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q: torch.Tensor


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the internal width {self.internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q (B, Nq, C), k / v (B, Nk, C) -> (B, Nq, C)``."""
        if not torch.is_grad_enabled() and self._plain_linears():
            # Inference between a few prompt tokens and the whole image: project the few.
            if k.shape[1] >= FOLD_RATIO * q.shape[1]:
                return self._attend_many_keys(q, k, v)
            if q.shape[1] >= FOLD_RATIO * k.shape[1]:
                return self._attend_many_queries(q, k, v)
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.internal_dim))

    # Inference paths for attention between a few tokens and many (the image). Both
    # move the image-side projections onto the few tokens by associativity, per head h
    # (W_h: the rows of a projection that make head h):
    #   scores  q_h . (W_k,h k + b_k,h) = (W_k,h^T q_h) . k + const(query), and softmax
    #           ignores a per-query constant;
    #   values  sum_k a_k (W_v,h v_k + b_v,h) = W_v,h (sum_k a_k v_k) + b_v,h, as the
    #           weights a_k sum to 1.
    # So the image tokens meet (heads x few) vectors of full width C instead of being
    # projected themselves: 2.3x fewer multiply-adds for SAM's 8 heads of 16 and C = 256.

    def _plain_linears(self) -> bool:
        layers = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        return all(type(layer) is nn.Linear and layer.bias is not None for layer in layers)

    def _attend_many_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries (tokens) attend to many keys (the image): ``(B, Nq, C)`` out."""
        batch, queries, _ = q.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        q = self.q_proj(q).view(batch, queries, heads, head_dim) * head_dim**-0.5
        # (B, heads * Nq, C): each query seen through its head's key projection
        q_in = torch.einsum("bqhd,hdc->bhqc", q, self.k_proj.weight.view(heads, head_dim, -1))
        attn = torch.softmax(q_in.flatten(1, 2) @ k.transpose(1, 2), dim=-1)
        mixed = (attn @ v).view(batch, heads, queries, -1)  # (B, heads, Nq, C)
        out = torch.einsum("bhqc,hdc->bqhd", mixed, self.v_proj.weight.view(heads, head_dim, -1))
        out = out + self.v_proj.bias.view(heads, head_dim)
        return self.out_proj(out.reshape(batch, queries, self.internal_dim))

    def _attend_many_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Many queries (the image) attend to few keys (tokens): ``(B, Nq, C)`` out."""
        batch, keys, _ = k.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        k = self.k_proj(k).view(batch, keys, heads, head_dim) * head_dim**-0.5
        v = self.v_proj(v).view(batch, keys, heads, head_dim)
        # Scores (W_q,h^T k_h) . q + b_q,h . k_h for all heads at once, laid out
        # (B, heads * Nk, Nq) so that the softmax runs over a non-innermost axis of 7 or
        # so keys (much faster than over a short innermost one).
        k_in = torch.einsum("bkhd,hdc->bhkc", k, self.q_proj.weight.view(heads, head_dim, -1)).flatten(1, 2)
        k_bias = torch.einsum("bkhd,hd->bhk", k, self.q_proj.bias.view(heads, head_dim)).flatten(1)
        scores = torch.baddbmm(k_bias[:, :, None], k_in, q.transpose(1, 2))
        attn = torch.softmax(scores.view(batch, heads, keys, -1), dim=2).view_as(scores)
        # Values through the output projection first: (B, heads * Nk, C_out)
        v_out = torch.einsum("bkhd,ohd->bhko", v, self.out_proj.weight.view(-1, heads, head_dim)).flatten(1, 2)
        return torch.baddbmm(self.out_proj.bias.expand(batch, 1, -1), attn.transpose(1, 2), v_out)

    def attend_projected_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens ``q (B, Nq, C)`` attend to keys and values already projected into
        heads ``(1 or B, heads, Nk, d)``: ``(B, Nq, C)`` out."""
        batch, queries, _ = q.shape
        q = self._heads(self.q_proj(q))
        out = F.scaled_dot_product_attention(q, k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
        return self.out_proj(out.transpose(1, 2).reshape(batch, queries, self.internal_dim))

    def attend_projected_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Many queries already projected into heads ``q (1 or B, heads, d, Nq)`` attend to
        few tokens ``k``, ``v (B, Nk, C)``: ``(B, Nq, C)`` out.

        As in :meth:`_attend_many_queries`, scores are laid out ``(B, heads, Nk, Nq)`` for
        the softmax and the values go through the output projection first.
        """
        batch, keys, _ = k.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        k = self._heads(self.k_proj(k)) * head_dim**-0.5  # (B, heads, Nk, d)
        scores = torch.softmax(k @ q, dim=2)  # (B, heads, Nk, Nq)
        v = self.v_proj(v).view(batch, keys, heads, head_dim)
        v_out = torch.einsum("bkhd,ohd->bhko", v, self.out_proj.weight.view(-1, heads, head_dim)).flatten(1, 2)
        return torch.baddbmm(self.out_proj.bias.expand(batch, 1, -1), scores.flatten(1, 2).transpose(1, 2), v_out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def can_precompute_image(self) -> bool:
        """Whether :meth:`image_side` applies: a first block with plain linear projections."""
        attentions = (self.cross_attn_token_to_image, self.cross_attn_image_to_token)
        return self.skip_first_layer_pe and all(attention._plain_linears() for attention in attentions)

    def image_side(self, keys: torch.Tensor, key_pe: torch.Tensor) -> FirstLayerImage:
        """The image-only projections of this block for ``keys``, ``key_pe (1, hw, C)``."""
        token_to_image, image_to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        keys_with_pe = keys + key_pe
        k = token_to_image._heads(token_to_image.k_proj(keys_with_pe)).contiguous()
        v = token_to_image._heads(token_to_image.v_proj(keys)).contiguous()
        q = image_to_token._heads(image_to_token.q_proj(keys_with_pe)).transpose(2, 3).contiguous()
        return FirstLayerImage(keys.contiguous(), k, v, q)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor | None,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image: FirstLayerImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries (B, T, C)`` tokens, ``keys (B, HW, C)`` image; returns both updated.

        ``image``: this (first) block's :meth:`image_side`, computed earlier for the same
        image, in place of ``keys``.
        """
        if image is not None:
            return self._forward_precomputed(queries, query_pe, image)
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves, PE included.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # The image keys with their PE, once: both cross-attentions use the same sum.
        keys_with_pe = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys_with_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys_with_pe, q, queries))
        return queries, keys

    def _forward_precomputed(
        self, queries: torch.Tensor, query_pe: torch.Tensor, image: FirstLayerImage
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` of a first block (no PE on the queries' self-attention)."""
        queries = self.norm1(self.self_attn(queries, queries, queries))
        attended = self.cross_attn_token_to_image.attend_projected_keys(queries + query_pe, image.k, image.v)
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))
        attended = self.cross_attn_image_to_token.attend_projected_queries(image.q, queries + query_pe, queries)
        return queries, self.norm4(image.keys + attended)


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks then a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def can_precompute_image(self) -> bool:
        return bool(self.layers) and self.layers[0].can_precompute_image()

    def image_side(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> FirstLayerImage:
        """The first block's image-only work for ``image (1, C, h, w)``, ``image_pe (1, C, h, w)``."""
        return self.layers[0].image_side(image_embedding.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2))

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        first_layer_image: FirstLayerImage | None = None,
        outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image (B, C, h, w)``, ``image_pe (B, C, h, w)``, ``tokens (B, T, C)``.

        ``first_layer_image``: :meth:`image_side` of the same image and PE (inference),
        which spares the first block its image-side projections. ``outputs``: only the
        first ``outputs`` tokens are wanted; the final attention (per token) skips the rest.

        Returns the updated tokens ``(B, T or outputs, C)`` and image ``(B, hw, C)``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            image = first_layer_image if index == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, image)
        queries, point_embedding = queries[:, :outputs], point_embedding[:, :outputs]
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
