"""SAM 2's feature pyramid neck, its sine position encoding, and the image encoder.

The neck maps every Hiera stage to ``d_model`` channels with a 1x1 convolution and adds
the 2x nearest-upsampled coarser result to the levels in ``fpn_top_down_levels``. With
``scalp = 1`` the coarsest level is dropped after it fed the top-down path, leaving three
levels at strides 4, 8 and 16 (256, 128 and 64 pixels square for a 1024 input).

Parameter names: ``image_encoder.neck.convs.<i>.conv.*`` (``i = 0`` is the coarsest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import linear_weights
from .hiera import Hiera


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` of ``(B, C, H, W)``; in inference one linear layer over a channels-last
    view (the trunk's outputs are channels-last already), returned as a channels-last
    ``(B, C_out, H, W)`` view."""
    if torch.is_grad_enabled():
        return conv(x)
    pixels = x.permute(0, 2, 3, 1)
    return linear_weights(pixels, conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


class PositionEmbeddingSine(nn.Module):
    """The fixed 2D sine/cosine encoding of DETR, normalised to ``[0, 2 pi]`` per axis.

    ``num_pos_feats`` output channels: the first half encodes y, the second x, each as
    interleaved ``sin, cos`` pairs of frequencies ``temperature ** (2 floor(i / 2) / (F / 2))``.
    No parameters; cached per grid size, device and dtype.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 4:
            raise ValueError(f"num_pos_feats must be a multiple of 4, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self._cache: dict[tuple, torch.Tensor] = {}

    def encoding(self, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(1, num_pos_feats, h, w)`` encoding of an ``(h, w)`` grid."""
        key = (tuple(size), device, dtype)
        cached = self._cache.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                cached = self._cache[key] = self._compute(size, device).to(dtype)
        return cached

    def _compute(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        height, width = size
        half = self.num_pos_feats // 2
        eps, scale = 1e-6, 2 * math.pi
        # Positions 1..n normalised by the last one (+eps), as DETR.
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
        index = torch.arange(half, dtype=torch.float32, device=device)
        frequencies = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / half)

        def encode(positions: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half)
            angles = positions[:, None] / frequencies
            return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

        pos_y = encode(y)[:, None, :].expand(height, width, half)
        pos_x = encode(x)[None, :, :].expand(height, width, half)
        return torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for a ``(B, C, h, w)`` feature map: ``(B, num_pos_feats, h, w)``."""
        return self.encoding(tuple(x.shape[-2:]), x.device, x.dtype).expand(x.shape[0], -1, -1, -1)


class FpnNeck(nn.Module):
    """Lateral 1x1 convolutions to ``d_model`` channels plus a nearest-neighbour top-down path.

    Parameters
    ----------
    d_model : int
        Output channels of every level (256).
    backbone_channel_list : sequence of int
        Trunk stage widths, coarsest first (``Hiera.channel_list``).
    fpn_top_down_levels : sequence of int
        Levels (0 finest) that receive the upsampled coarser level.
    """

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int], fpn_top_down_levels: Sequence[int] = (2, 3)) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.fpn_top_down_levels = tuple(fpn_top_down_levels)
        self.convs = nn.ModuleList()
        for channels in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(channels, d_model, kernel_size=1))
            self.convs.append(lateral)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk outputs, finest first -> ``d_model``-channel maps of the same sizes, finest first."""
        count = len(self.convs)
        if len(xs) != count:
            raise ValueError(f"the neck takes {count} feature maps, got {len(xs)}")
        out: list[torch.Tensor] = [xs[0]] * count
        previous = None
        for i in range(count - 1, -1, -1):
            lateral = conv1x1(self.convs[count - 1 - i].conv, xs[i])
            if i in self.fpn_top_down_levels and previous is not None:
                previous = lateral + F.interpolate(previous.float(), scale_factor=2.0, mode="nearest")
            else:
                previous = lateral
            out[i] = previous
        return out


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck; the ``scalp`` coarsest levels are dropped from the output.

    ``forward`` returns the kept levels finest first; ``position_encoding`` gives each
    level's sine encoding (the memory attention of video propagation uses the last).
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk widths {trunk.channel_list} differ from the neck's {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        self.position_encoding = PositionEmbeddingSine(neck.d_model)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` -> ``len(stages) - scalp`` maps ``(B, d_model, S / 4 / 2^i, S / 4 / 2^i)``."""
        levels = self.neck(self.trunk(x))
        return levels[: len(levels) - self.scalp]
