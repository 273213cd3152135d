"""Attention within non-overlapping square windows, as SAM's ViT and TinyViT use it.

The grid is zero-padded at its end to whole windows, and padding tokens take part as keys
(no mask): the trained weights of both encoders expect exactly that.
:func:`window_partition` / :func:`window_unpartition` serve the autograd path;
:func:`window_attention` is the inference path, in bands of window rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .kernels import chunk_length

__all__ = ["window_attention", "window_partition", "window_unpartition"]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * nWin, window, window, C)``, zero-padding H and W.

    Returns the windows (row-major over the window grid) and the padded ``(Hp, Wp)``.
    """
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_size: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nWin, window, window, C) -> (B, H, W, C)``, padding dropped."""
    padded_h, padded_w = padded_size
    height, width = size
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    x = windows.view(batch, padded_h // window, padded_w // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def window_attention(
    x: torch.Tensor,
    window: int,
    heads: int,
    qkv: Callable[[torch.Tensor], torch.Tensor],
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    heads_outer: bool = False,
) -> torch.Tensor:
    """Inference: windowed self-attention of ``x (B, H, W, C)``, in bands of window rows.

    Returns the attended values on the padded grid, ``(B, Hp, Wp, C)``, before the output
    projection. Padding tokens are zero, so their q, k and v are ``qkv`` of a zero token,
    computed once: ``qkv`` only sees real tokens. A band holds as many window rows as fit
    in :data:`~napari_sam.model.kernels.CHUNK_BYTES` of q, k and v.

    Parameters
    ----------
    x : (B, H, W, C) tensor
        Tokens, as the attention's ``qkv`` takes them.
    window : int
        Side of a window in tokens.
    heads : int
        Attention heads; ``C`` is a multiple of it.
    qkv : callable
        Tokens ``(..., C) -> (..., 3C)``: the attention's input projection (and its input
        norm, where the attention has one).
    attend : callable
        ``q, k, v (nWin, heads, window², C / heads) -> (nWin, heads, window², C / heads)``.
    heads_outer : bool
        How ``qkv`` lays out its output features: ``(heads, [q|k|v], C / heads)`` when True
        (TinyViT), ``([q|k|v], heads, C / heads)`` when False (SAM's ViT).
    """
    batch, height, width, dim = x.shape
    head_dim = dim // heads
    padded_h, padded_w = height + (-height % window), width + (-width % window)
    grid_w = padded_w // window
    pad_value = qkv(x.new_zeros(1, dim))[0]
    row_bytes = batch * window * padded_w * 3 * dim * x.element_size()
    band = window * chunk_length(padded_h // window, row_bytes, device=x.device)
    out = x.new_empty(batch, padded_h, padded_w, dim)
    if heads_outer:  # (B, gh, ws, gw, ws, heads, 3, C) -> (3, B, gh, gw, heads, ws, ws, C)
        layout, order = (heads, 3), (6, 0, 1, 3, 5, 2, 4, 7)
    else:  # (B, gh, ws, gw, ws, 3, heads, C) -> (3, B, gh, gw, heads, ws, ws, C)
        layout, order = (3, heads), (5, 0, 1, 3, 6, 2, 4, 7)
    for row in range(0, padded_h, band):
        rows = min(padded_h - row, band)  # padded rows in this band
        real = max(0, min(height - row, rows))
        features = qkv(x[:, row : row + real])
        if (real, width) != (rows, padded_w):
            padded = pad_value.expand(batch, rows, padded_w, 3 * dim).clone()
            padded[:, :real, :width] = features
            features = padded
        grid_h = rows // window
        # -> (3, windows, heads, ws * ws, C)
        q, k, v = (
            features.view(batch, grid_h, window, grid_w, window, *layout, head_dim)
            .permute(*order)
            .reshape(3, batch * grid_h * grid_w, heads, window * window, head_dim)
            .unbind(0)
        )
        attended = attend(q, k, v)  # (windows, heads, ws * ws, C)
        # -> (B, gh, ws, gw, ws, heads, C), the band's rows of the padded grid
        out[:, row : row + rows].view(batch, grid_h, window, grid_w, window, heads, head_dim).copy_(
            attended.view(batch, grid_h, grid_w, heads, window, window, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        )
    return out
