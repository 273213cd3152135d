"""Hiera, SAM 2's hierarchical image encoder trunk (Ryali et al. 2023; Ravi et al. 2024).

A stride-4 patch embedding, then four stages of transformer blocks. Each stage after the
first starts with a block that halves the resolution by max-pooling its attention
queries (*q-pooling*) and doubles the width and the number of heads. Most blocks attend
within square windows of their stage's size; a few (``global_att_blocks``) attend
globally. The trunk returns the output of every stage, finest first.

Layout: tokens stay ``(B, H, W, C)`` (channels last) through the trunk; parameter names
are those of the official SAM 2.1 checkpoints under ``image_encoder.trunk.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import linear, mlp_


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` between them (names ``layers.i``)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, activation: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def _pool2x(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool ``(B, H, W, C)`` by ``stride`` in H and W (floor: trailing rows dropped).

    An elementwise maximum of the ``stride**2`` strided sub-grids: exact, and several
    times faster on a CPU than a reduction over a strided view.
    """
    height, width = x.shape[1] // stride, x.shape[2] // stride
    out = None
    for i in range(stride):
        for j in range(stride):
            part = x[:, i : i + height * stride : stride, j : j + width * stride : stride]
            out = part if out is None else torch.maximum(out, part)
    return out


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> windows ``(B * nh * nw, window, window, C)`` and the padded ``(Hp, Wp)``.

    H and W are zero-padded at the end up to multiples of ``window``.
    """
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded = (height + pad_h, width + pad_w)
    x = x.view(batch, padded[0] // window, window, padded[1] // window, window, channels)
    return x.transpose(2, 3).reshape(-1, window, window, channels), padded


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nh * nw, window, window, C)`` -> ``(B, H, W, C)``."""
    rows, cols = padded[0] // window, padded[1] // window
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, -1).transpose(2, 3)
    x = x.reshape(batch, padded[0], padded[1], -1)
    return x[:, : size[0], : size[1]]


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (the output then has the
    pooled resolution) and whose width may grow from ``dim`` to ``dim_out``."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None = None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the width {dim_out}")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, H', W', dim_out)``; ``H' = H // q_stride`` when pooling."""
        batch, height, width, _ = x.shape
        qkv = linear(self.qkv, x)  # one fused oneDNN call in inference
        channels = qkv.shape[-1] // 3
        q, k, v = qkv.split(channels, dim=-1)
        if self.q_stride:
            q = _pool2x(q, self.q_stride)
            height, width = q.shape[1:3]
        heads = self.num_heads
        q = q.reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        k = k.reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        v = v.reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, height, width, channels)
        return linear(self.proj, out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention.

    A block with ``q_stride`` halves the resolution; one with ``dim != dim_out`` widens
    the tokens, its residual branch going through ``proj`` (applied to the normalised
    input) and the same pooling.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: int | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, H', W', dim_out)``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = linear(self.proj, x)
            if self.q_stride:
                shortcut = _pool2x(shortcut, self.q_stride)
        window = self.window_size
        if window > 0:
            x, _ = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride:
                window //= self.q_stride
            # The output grid is the shortcut's; its padded size follows from the window.
            size = shortcut.shape[1:3]
            padded = (size[0] + -size[0] % window, size[1] + -size[1] % window)
            x = window_unpartition(x, window, padded, size)
        x = (shortcut + x).contiguous()
        if torch.is_grad_enabled():
            return x + self.mlp(self.norm2(x))
        # Inference: the MLP in place over chunks of tokens, its GELU fused.
        return mlp_(self.norm2, self.mlp.layers[0], self.mlp.act, self.mlp.layers[1], x)


class PatchEmbed(nn.Module):
    """7x7 convolution of stride 4: ``(B, 3, S, S)`` -> ``(B, S/4, S/4, C)``."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk of SAM 2.

    Parameters
    ----------
    embed_dim : int
        Width of the first stage (96 tiny / small, 112 base+, 144 large).
    num_heads : int
        Heads of the first stage.
    stages : sequence of int
        Blocks per stage.
    global_att_blocks : sequence of int
        Indices of the blocks with global attention.
    window_spec : sequence of int
        Window side of each stage. A stage's first block still uses the previous
        stage's window (before its queries are pooled), as the official models do.
    window_pos_embed_bkg_spatial_size : (h, w)
        Grid of the learned background position embedding, resized bicubically to the
        token grid; a learned ``window_spec[0]``-square embedding is tiled over it.
    q_pool : int
        Number of stage transitions that pool (the first ``q_pool``).
    q_stride : int
        Pooling factor per transition.
    dim_mul, head_mul : float
        Width and head multipliers per transition.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (1, 2, 7, 2),
        global_att_blocks: Sequence[int] = (5, 7, 9),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (7, 7),
        q_pool: int = 3,
        q_stride: int = 2,
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {tuple(stages)} and window_spec {tuple(window_spec)} differ in length")
        self.window_spec = tuple(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for index in range(sum(stages)):
            dim_out = dim
            # The window lags the stage by one block: see window_spec above.
            window = 0 if index in global_att_blocks else self.window_spec[stage]
            if index - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    q_stride=q_stride if index in pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        # Widths of the stage outputs, coarsest first (the neck's order).
        self.channel_list = [self.blocks[end].dim_out for end in self.stage_ends[::-1]]

    def position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """``(1, h, w, C)`` position embedding of an ``(h, w)`` token grid.

        ``h`` and ``w`` must be multiples of ``window_spec[0]``. Cached per size while
        the parameters are unchanged and no gradient is recorded.
        """
        params = (self.pos_embed, self.pos_embed_window)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._position_embedding(size)
        key = (tuple(size),) + tuple((p.data_ptr(), p.device, p.dtype, -1 if p.is_inference() else p._version) for p in params)
        cached = self.__dict__.get("_pos_cache")
        if cached is None or cached[0] != key:
            # A plain tensor even under inference_mode: a later training step may use it.
            with torch.inference_mode(False), torch.no_grad():
                cached = self.__dict__["_pos_cache"] = (key, self._position_embedding(size))
        return cached[1]

    def _position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        window = self.pos_embed_window
        height, width = size
        if height % window.shape[-2] or width % window.shape[-1]:
            raise ValueError(f"token grid {size} is not a multiple of the first window {window.shape[-1]}")
        pos = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        pos = pos + window.tile(1, 1, height // window.shape[-2], width // window.shape[-1])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` -> the four stage outputs ``(B, C_i, S / 2^(i+2), S / 2^(i+2))``, finest first."""
        x = self.patch_embed(x)
        x = x + self.position_embedding(tuple(x.shape[1:3]))
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
