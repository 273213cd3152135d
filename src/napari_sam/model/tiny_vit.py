"""TinyViT, the image encoder of MobileSAM (`vit_t`).

A hierarchical encoder: a convolutional stem to stride 4, one stage of inverted-residual
convolutions, then three stages of windowed attention with a learned bias per relative
offset, each stage but the last ending in a strided "patch merging" convolution. MobileSAM
changes two things from the classification TinyViT: the last merge keeps its resolution,
so the output grid is S/16 like SAM's ViT, and a neck maps it to SAM's 256 channels.

Module and parameter names follow MobileSAM's `TinyViT`, so its `image_encoder.*`
weights (including the unused classification head) load with `strict=True`.

With autograd (training) the plain code runs. Without it (inference, as under
`Predictor`), the same function runs channels-last with batch norms folded into their
convolutions, GELUs in place, windowed attention over real tokens only and MLPs over
token chunks; see :mod:`napari_sam.model.kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .kernels import chunk_length, gelu_, linear, linear_weights, mlp_, run_sequential
from .windows import window_attention, window_partition, window_unpartition


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x (B, C, H, W)`` with standard channels-last strides, copied only if needed.

    Convolutions choose their output layout from all strides, the batch stride of a
    single image included: ``image.permute(2, 0, 1)[None]`` passes as channels-last
    but makes NCHW outputs.
    """
    batch, chans, height, width = x.shape
    if x.stride() == (chans * height * width, 1, width * chans, chans):
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)


def _inference(module: nn.Module) -> bool:
    """Whether the inference path applies: no autograd and batch norms frozen."""
    return not torch.is_grad_enabled() and not module.training


class ConvBN(nn.Module):
    """A bias-free convolution followed by batch norm (names `c` and `bn`, as in TinyViT)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, out_chans, H', W')."""
        if not _inference(self):
            return self.bn(self.c(x))
        return self.fused(x)

    def fused(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """Inference: one convolution with the batch norm folded in, then an exact GELU
        (in place) when ``gelu``. A 1x1 convolution of a channels-last map runs as a
        linear layer over its pixels, with the GELU fused (oneDNN, see ``kernels.linear``)."""
        weight, bias = self.folded()
        conv = self.c
        pointwise = conv.kernel_size == conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)
        if pointwise and x.is_contiguous(memory_format=torch.channels_last):
            pixels = linear_weights(x.permute(0, 2, 3, 1), weight.flatten(1), bias, gelu=gelu)
            return pixels.permute(0, 3, 1, 2)  # channels-last (B, C, H, W) view
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return gelu_(x) if gelu else x

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the one convolution equal to conv + batch norm (eval mode)."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return self.c.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: image to a stride-4 feature map."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, embed_dim, H/4, W/4)."""
        if not _inference(self):
            return self.seq(x)
        return self.seq[2].fused(self.seq[0].fused(x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        if _inference(self):
            return self._forward_strips(x)
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        # Unlike a transformer block, the activation comes after the residual sum.
        return self.act(x + self.conv3(y))

    def _forward_strips(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: strips of rows, each with a one-row halo for the 3x3 conv, so that
        the hidden maps (4x wider than ``x``: 67 MB at MobileSAM's first stage) stay
        within the chunk budget."""
        batch, _, height, width = x.shape
        rows = chunk_length(height, batch * width * self.conv1.c.out_channels * x.element_size(), device=x.device)
        if rows == height:
            y = self.conv3.fused(self.conv2.fused(self.conv1.fused(x, gelu=True), gelu=True))
            return gelu_(y.add_(x))
        out = torch.empty_like(x)
        for start in range(0, height, rows):
            stop = min(height, start + rows)
            top, bottom = max(0, start - 1), min(height, stop + 1)
            hidden = self.conv1.fused(x[:, :, top:bottom], gelu=True)
            # Rows next to a cut saw zero padding instead of their neighbours: dropped.
            hidden = gelu_(self.conv2.fused(hidden)[:, :, start - top : stop - top])
            part = out[:, :, start:stop]
            torch.add(self.conv3.fused(hidden), x[:, :, start:stop], out=part)
            gelu_(part)  # unlike a transformer block, the activation follows the residual sum
        return out


class PatchMerging(nn.Module):
    """1x1 conv to `out_dim`, strided 3x3 depthwise conv, 1x1 conv: downsamples a stage."""

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(
            out_dim, out_dim, kernel_size=3, stride=stride, padding=1, groups=out_dim
        )
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, out_dim, ceil(H/stride), ceil(W/stride))."""
        if _inference(self):
            return self.conv3.fused(self.conv2.fused(self.conv1.fused(x, gelu=True), gelu=True))
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """The first stage: MBConv blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        expand_ratio: float,
        downsample: PatchMerging | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, C', H', W'), downsampled when the stage merges."""
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.fc2(self.act(self.fc1(self.norm(x))))


def relative_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) index into a table of biases, one per absolute offset (|dy|, |dx|), N = ws².

    Offset (|dy|, |dx|) has index |dy| * ws + |dx|: the order in which TinyViT first meets
    the offsets, so the trained `attention_biases` columns line up.
    """
    coords = torch.arange(window_size)
    rows = coords.repeat_interleave(window_size)  # row of each token, row-major
    cols = coords.repeat(window_size)
    d_row = (rows[:, None] - rows[None, :]).abs()
    d_col = (cols[:, None] - cols[None, :]).abs()
    return d_row * window_size + d_col


class Attention(nn.Module):
    """Pre-norm multi-head self-attention within one window, with a learned offset bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # One bias per head and absolute offset; symmetric, so only ws² values per head.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Derived from window_size alone: not part of the state dict (nor of TinyViT's).
        self.register_buffer(
            "attention_bias_idxs", relative_offset_index(window_size), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) tokens of B windows of N = window_size² tokens -> (B, N, dim)."""
        batch, tokens, dim = x.shape
        # The weights lay out q, k and v next to each other per head: (head, [q|k|v]).
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each (B, heads, N, head_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise 3x3 conv mixing neighbouring windows, then an MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(
            dim, dim, kernel_size=local_conv_size, padding=local_conv_size // 2, groups=dim
        )

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), attention within non-overlapping windows."""
        ws = self.window_size
        windows, padded = window_partition(x, ws)  # (B * nWin, ws, ws, C)
        attended = self.attn(windows.flatten(1, 2)).view(windows.shape)
        return window_unpartition(attended, ws, padded, x.shape[1:3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) channels-last -> (B, H, W, C)."""
        if _inference(self):
            return self._forward_inference(x)
        x = x + self.window_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: :meth:`window_attention` over real tokens, MLP in place over chunks."""
        height, width = x.shape[1:3]
        x = x + self._padded_window_attention(x)[:, :height, :width]
        # A channels-last convolution: both permutes are views, the result is contiguous.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        mlp = self.mlp
        return mlp_(mlp.norm, mlp.fc1, mlp.act, mlp.fc2, x)

    def _padded_window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: :meth:`window_attention` on the padded grid, ``(B, H, W, C) -> (B, Hp, Wp, C)``.

        Padding tokens are zero before the attention's norm, so the norm and the qkv layer
        only see real tokens (see :func:`~napari_sam.model.windows.window_attention`).
        """
        attn = self.attn
        bias = attn.attention_biases[:, attn.attention_bias_idxs].to(x.dtype)[None]  # (1, heads, N, N)
        out = window_attention(
            x,
            self.window_size,
            attn.num_heads,
            qkv=lambda tokens: linear(attn.qkv, attn.norm(tokens)),
            attend=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
            heads_outer=True,
        )
        return linear(attn.proj, out)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        downsample: PatchMerging | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, C', H', W'), downsampled when the stage merges."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViT(nn.Module):
    """MobileSAM's image encoder: preprocessed images -> SAM image embeddings.

    Parameters
    ----------
    img_size : int
        Side of the square input the model is meant for (1024 for MobileSAM).
    in_chans : int
        Input channels.
    embed_dims : sequence of int
        Channels of each stage.
    depths : sequence of int
        Blocks per stage; the first stage is convolutional, the others attention.
    num_heads : sequence of int
        Attention heads per stage (the entry of the convolutional stage is unused).
    window_sizes : sequence of int
        Attention window side per stage (the entry of the convolutional stage is unused).
    mlp_ratio : float
        MLP hidden width relative to the stage width.
    mbconv_expand_ratio : float
        Hidden width of the MBConv blocks relative to their width.
    local_conv_size : int
        Kernel side of the depthwise convolution inside each attention block.
    out_chans : int
        Channels of the output embedding (SAM's prompt dimension, 256).
    num_classes : int
        Outputs of the classification head. The head (`norm_head`, `head`) is never used
        here; it exists because MobileSAM's checkpoints carry it and must load strictly.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if not len(embed_dims) == len(num_heads) == len(window_sizes) == num_stages:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage, "
                f"got {len(embed_dims)}, {num_stages}, {len(num_heads)}, {len(window_sizes)}"
            )
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])

        self.layers = nn.ModuleList()
        for i in range(num_stages):
            downsample = None
            if i < num_stages - 1:
                # Stride 4 from the stem, x2 x2 from the first two merges = 16, SAM's
                # patch size; the last merge only changes the width.
                stride = 2 if i < num_stages - 2 else 1
                downsample = PatchMerging(embed_dims[i], embed_dims[i + 1], stride=stride)
            if i == 0:
                layer = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    downsample,
                )
            self.layers.append(layer)

        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S) preprocessed images -> (B, out_chans, S/16, S/16) embeddings."""
        if _inference(self):
            if x.shape[0] > 1:  # one image at a time keeps temporaries within the chunk budget
                return torch.cat([self(image[None]) for image in x])
            # Channels-last convolutions are about twice as fast on a CPU, and the
            # attention stages' (B, H, W, C) views of them are contiguous.
            x = _channels_last(x)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return run_sequential(self.neck, x)


def build_tiny_vit_encoder(img_size: int = 1024) -> TinyViT:
    """TinyViT with MobileSAM's configuration (TinyViT-5M widths, 256-channel neck)."""
    return TinyViT(
        img_size=img_size,
        in_chans=3,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        out_chans=256,
        num_classes=1000,
    )
