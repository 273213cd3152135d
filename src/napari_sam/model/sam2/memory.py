"""SAM 2's memory: the memory encoder and the memory attention (Ravi et al. 2024, sec. 4).

- The **memory encoder** turns a frame's predicted mask and its image features into a
  memory: the mask (sigmoid, scaled) is downsampled 16x by strided convolutions, added to
  a projection of the image features, fused by two ConvNeXt blocks and projected to
  ``mem_dim`` (64) channels, with a 2D sine position encoding.
- The **memory attention** conditions the current frame's image features on the memories
  of earlier frames and on object pointers (the decoder's output tokens of earlier frames,
  split into ``C / mem_dim`` tokens each): pre-norm layers of self-attention, cross-
  attention to the memories and an MLP. Both attentions use 2D rotary position
  encodings (RoPE) over the feature grid; the object-pointer keys are not rotated.

Parameter names: ``memory_encoder.*`` and ``memory_attention.*`` of the official files.
Tokens are batch first, ``(B, N, C)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from .neck import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """``(B, 1, S, S)`` mask -> ``(B, embed_dim, S/16, S/16)``: four 3x3 stride-2 convs
    (channels x4 each) with LayerNorm2d + GELU, then a 1x1 conv (``encoder.<i>``)."""

    def __init__(self, embed_dim: int = 256, layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(layers):
            self.encoder.append(nn.Conv2d(channels, channels * 4, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(channels * 4))
            self.encoder.append(nn.GELU())
            channels *= 4
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm, MLP (x4) with GELU, layer scale ``gamma``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """``num_layers`` :class:`CXBlock` (``layers.<i>``)."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features ``(B, C, h, w)`` + mask ``(B, 1, 16h, 16w)`` (already scaled) ->
    memory ``(B, mem_dim, h, w)`` and its position encoding ``(B, mem_dim, h, w)``."""

    def __init__(self, dim: int = 256, mem_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim)
        self.out_proj = nn.Conv2d(dim, mem_dim, kernel_size=1)
        self.position_encoding = PositionEmbeddingSine(mem_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pix_feat_proj(features) + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)


def axial_rotations(dim: int, width: int, height: int, theta: float = 10000.0) -> torch.Tensor:
    """2D RoPE rotations of a ``height x width`` grid (row-major tokens): complex ``(h * w, dim / 2)``.

    The first ``dim / 4`` channel pairs rotate with the column, the rest with the row, at
    frequencies ``theta ** (-4 k / dim)``.
    """
    frequencies = 1.0 / theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim)
    index = torch.arange(width * height, dtype=torch.float32)
    cols, rows = index % width, torch.div(index, width, rounding_mode="floor")
    angles = torch.cat([torch.outer(cols, frequencies), torch.outer(rows, frequencies)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``(B, heads, N, d)``: channel pairs ``(2i, 2i+1)`` times ``rotations (N, d/2)``."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(3).type_as(x)


class RoPEAttention(nn.Module):
    """Multi-head attention with 2D rotary encodings of queries and keys.

    Keys may hold several frames of the query grid (``repeat_keys``), followed by
    ``exclude`` tokens (object pointers) that are not rotated.
    """

    def __init__(self, dim: int, num_heads: int = 1, kv_in_dim: int | None = None, repeat_keys: bool = False,
                 theta: float = 10000.0) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim or dim
        self.num_heads = num_heads
        self.repeat_keys = repeat_keys
        self.theta = theta
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in_dim, dim)
        self.v_proj = nn.Linear(kv_in_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self._rotations: dict[tuple, torch.Tensor] = {}

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def rotations(self, tokens: int, head_dim: int, device: torch.device) -> torch.Tensor:
        """Rotations of a square grid of ``tokens`` (cached)."""
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"RoPE needs a square token grid, got {tokens} tokens")
        key = (tokens, head_dim, device)
        if key not in self._rotations:
            with torch.inference_mode(False):
                self._rotations[key] = axial_rotations(head_dim, side, side, self.theta).to(device)
        return self._rotations[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, exclude: int = 0) -> torch.Tensor:
        """``q (B, N, C)`` on a square grid; ``k, v (B, M, kv_in_dim)`` -> ``(B, N, C)``."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        rotations = self.rotations(q.shape[2], q.shape[3], q.device)
        q = rotate(q, rotations)
        rotated = k.shape[2] - exclude
        if rotated:
            frames = rotated // q.shape[2]
            if frames != 1 and not self.repeat_keys:
                raise ValueError("keys longer than the query grid need repeat_keys")
            keys = rotate(k[:, :, :rotated], rotations.expand(frames, -1, -1).reshape(-1, rotations.shape[-1]))
            k = torch.cat([keys, k[:, :, rotated:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: self-attention (RoPE), cross-attention to memories (RoPE on the memory
    grid, the memory PE added to the keys), ReLU MLP."""

    def __init__(self, dim: int = 256, mem_dim: int = 64, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim)
        self.cross_attn_image = RoPEAttention(dim, kv_in_dim=mem_dim, repeat_keys=True)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, exclude: int) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        x = x + self.cross_attn_image(self.norm2(x), memory + memory_pos, memory, exclude)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    """``num_layers`` :class:`MemoryAttentionLayer` and a final LayerNorm (``layers.<i>``, ``norm``)."""

    def __init__(self, dim: int = 256, mem_dim: int = 64, num_layers: int = 4, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, mlp_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, current: torch.Tensor, current_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, num_pointer_tokens: int = 0) -> torch.Tensor:
        """``current, current_pos (B, hw, C)``; ``memory, memory_pos (B, M, mem_dim)`` whose
        last ``num_pointer_tokens`` are object pointers -> conditioned features ``(B, hw, C)``."""
        x = current + 0.1 * current_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_pointer_tokens)
        return self.norm(x)


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, dim)``: sines then cosines at ``temperature ** (2 floor(i/2) / (dim/2))``."""
    half = dim // 2
    index = torch.arange(half, dtype=torch.float32, device=positions.device)
    frequencies = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / half)
    angles = positions[:, None] / frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
