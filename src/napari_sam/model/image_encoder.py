"""The ViT image encoder of SAM (vit_b / vit_l / vit_h and compact variants).

A plain ViT on 16x16 patches (configurable) whose blocks attend within 14x14 windows,
except a few global blocks; every attention carries a decomposed relative position
bias. A convolutional neck maps the token grid to ``out_chans`` channels.

With autograd (training) the plain batched code below runs. Without it
(``torch.is_grad_enabled()`` False, as under ``Predictor``), the same function is
computed in chunks with bounded temporaries, fused kernels and in-place residual sums;
see :mod:`napari_sam.model.kernels` for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .kernels import chunk_length, linear, linear_weights, mlp_, run_sequential
from .windows import window_attention, window_partition, window_unpartition

# Fewest queries per flash-attention call in the chunked path (see Attention.attend).
MIN_QUERIES = 1024


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, C, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, chans, height, width = x.shape
        patch = self.proj.kernel_size[0]
        if torch.is_grad_enabled() or height % patch or width % patch:
            return self.proj(x).permute(0, 2, 3, 1)
        # Non-overlapping patches: one matrix product over flattened patches, faster on a
        # CPU than the strided convolution, and channels-last as the blocks want it.
        patches = (
            x.reshape(batch, chans, height // patch, patch, width // patch, patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, height // patch, width // patch, chans * patch * patch)
        )
        return linear_weights(patches, self.proj.weight.flatten(1), self.proj.bias)


class ConvStem(nn.Module):
    """Overlapping convolutions to tokens: ``(B, C, H, W) -> (B, H/p, W/p, D)`` with ``p = 2**len(channels)``.

    A stack of 3x3 stride-2 convolutions (LayerNorm2d, GELU after each) and a 1x1
    projection to the token width. It replaces the linear patch embedding in compact
    models: each token then sees its object's outline across patch borders (Xiao et al.
    2021, "Early convolutions help transformers see better"). With it, the default model's
    2-block ViT tells object kinds apart far better (docs/models.md). Official checkpoints
    use :class:`PatchEmbed`.
    """

    def __init__(self, channels: tuple[int, ...], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for width in channels:
            layers += [nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1), LayerNorm2d(width), nn.GELU()]
            previous = width
        layers.append(nn.Conv2d(previous, embed_dim, kernel_size=1))
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_sequential(self.stem, x).permute(0, 2, 3, 1)


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather relative position embeddings for every (query, key) pair along one axis.

    Parameters
    ----------
    q_size, k_size : int
        Number of query and key positions along the axis.
    rel_pos : (L, C) tensor
        Learned embeddings for relative offsets; resized linearly when ``L`` does not
        equal ``2 * max(q_size, k_size) - 1`` (e.g. a model run at another input size).

    Returns
    -------
    (q_size, k_size, C) tensor.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = (
            F.interpolate(rel_pos.T[None], size=max_rel_dist, mode="linear")[0].T
        )
    # Offsets are expressed on the finer of the two grids.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with a decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, D) -> (B, H, W, D)``."""
        if not torch.is_grad_enabled():
            return self._forward_chunked(x)
        batch, height, width, dim = x.shape
        tokens = height * width
        # (3, B, heads, tokens, head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = self._rel_pos_bias(q, *self.rel_pos_tables(height, width), width)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)

    def _forward_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: ``(B, H, W, D) -> (B, H, W, D)`` through :meth:`attend`."""
        batch, height, width, dim = x.shape
        tokens = height * width
        qkv = linear(self.qkv, x.reshape(batch, tokens, dim)).view(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend(q, k, v, height, width).transpose(1, 2).reshape(batch, tokens, dim)
        return linear(self.proj, out).view(batch, height, width, dim)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        height: int,
        width: int,
        tables: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Inference core: ``q, k, v (B, heads, H*W, C)`` (any strides) -> ``(B, heads, H*W, C)``.

        Queries attend in chunks of grid rows, each with its slice of the relative
        position bias (the whole bias of a global block is ``heads * tokens²`` floats:
        805 MB for vit_b). A chunk holds at least ``MIN_QUERIES`` queries: CPU flash
        attention re-reads all keys and values per call and slows down below that.
        ``tables`` are :meth:`rel_pos_tables` for ``(height, width)``, for callers that
        attend over several batches of windows.
        """
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        batch, heads, tokens, channels = q.shape
        rel_h, rel_w = self._rel_pos_terms(q, *(tables or self.rel_pos_tables(height, width)), width)
        row_bytes = batch * heads * width * tokens * q.element_size()
        rows = max(chunk_length(height, row_bytes, device=q.device), min(height, -(-MIN_QUERIES // width)))
        bias = q.new_empty(batch, heads, rows, width, height, width)
        out = None if rows == height else q.new_empty(batch, heads, tokens, channels)
        for row in range(0, height, rows):
            stop = min(height, row + rows)
            part = bias[:, :, : stop - row]
            torch.add(rel_h[:, :, row:stop, :, :, None], rel_w[:, :, row:stop, :, None, :], out=part)
            queries = slice(row * width, stop * width)
            attended = F.scaled_dot_product_attention(
                q[:, :, queries], k, v, attn_mask=part.view(batch, heads, -1, tokens), scale=self.scale
            )
            if out is None:
                return attended
            out[:, :, queries] = attended
        return out

    def rel_pos_tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis tables ``(H, H, C)`` and ``(W, W, C)`` for a grid of ``(H, W)`` queries and keys."""
        return (
            relative_position_table(height, height, self.rel_pos_h),
            relative_position_table(width, width, self.rel_pos_w),
        )

    @staticmethod
    def _rel_pos_terms(
        q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-query bias terms ``(B, heads, H, W, kH)`` and ``(B, heads, H, W, kW)``.

        ``q (B, heads, H*W, C)`` are unscaled (as in SAM); ``table_h (H, kH, C)``,
        ``table_w (W, kW, C)``. The bias of query (h, w) and key (i, j) is
        ``rel_h[..., h, w, i] + rel_w[..., h, w, j]``.
        """
        batch, heads, queries, channels = q.shape
        q_grid = q.reshape(batch, heads, queries // width, width, channels)
        return torch.einsum("bnhwc,hkc->bnhwk", q_grid, table_h), torch.einsum("bnhwc,wkc->bnhwk", q_grid, table_w)

    @classmethod
    def _rel_pos_bias(cls, q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, width: int) -> torch.Tensor:
        """The whole additive bias ``(B, heads, HW, kH*kW)`` (see :meth:`_rel_pos_terms`)."""
        rel_h, rel_w = cls._rel_pos_terms(q, table_h, table_w, width)
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, n, H, W, kH, kW)
        return bias.reshape(*q.shape[:3], table_h.shape[1] * table_w.shape[1])


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        input_size: tuple[int, int],
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, attn_size, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, D) -> (B, H, W, D)``."""
        if not torch.is_grad_enabled():
            return self._forward_chunked(x)
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _forward_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: attention, then the MLP over token chunks, residual sums in place.

        ``x`` itself is never modified; the result is a new tensor.
        """
        normed = self.norm1(x)
        if self.window_size > 0:
            # The projection also runs over the padding (cheaper than cropping first).
            height, width = x.shape[1:3]
            x = x + linear(self.attn.proj, self._window_attention(normed))[:, :height, :width]
        else:
            x = self.attn(normed).add_(x)
        del normed
        return mlp_(self.norm2, self.mlp.lin1, self.mlp.act, self.mlp.lin2, x)

    def _window_attention(self, normed: torch.Tensor) -> torch.Tensor:
        """Inference: windowed attention of normed tokens ``(B, H, W, D) -> (B, Hp, Wp, D)`` (padded, unprojected)."""
        attn = self.attn
        tables = attn.rel_pos_tables(self.window_size, self.window_size) if attn.use_rel_pos else None
        return window_attention(
            normed,
            self.window_size,
            attn.num_heads,
            qkv=lambda tokens: linear(attn.qkv, tokens),
            attend=lambda q, k, v: attn.attend(q, k, v, self.window_size, self.window_size, tables),
        )


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: ``(B, 3, S, S) -> (B, out_chans, S/p, S/p)``.

    Parameters
    ----------
    img_size : int
        Side of the square (padded) input in pixels.
    patch_size : int
        Side of a patch; the embedding grid is ``img_size / patch_size``.
    embed_dim, depth, num_heads, mlp_ratio : transformer width, blocks, heads, MLP ratio.
    out_chans : int
        Channels of the output embedding (256 for every SAM decoder).
    window_size : int
        Side of the attention windows in tokens (global blocks ignore it).
    global_attn_indexes : tuple of int
        Blocks that attend over the whole grid.
    stem_channels : tuple of int
        Empty (official SAM): a linear patch embedding. Otherwise the widths of a
        :class:`ConvStem` with ``2**len(stem_channels) == patch_size``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        stem_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        if not stem_channels:
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        elif 2 ** len(stem_channels) == patch_size:
            self.patch_embed = ConvStem(tuple(stem_channels), in_chans, embed_dim)
        else:
            raise ValueError(
                f"a convolutional stem of {len(stem_channels)} stride-2 layers makes {2 ** len(stem_channels)}-pixel "
                f"patches, not patch_size={patch_size}"
            )
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.shape[0] > 1:
            # One image at a time keeps every temporary within the chunk budget.
            return torch.cat([self(image[None]) for image in x])
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return run_sequential(self.neck, x.permute(0, 3, 1, 2))
