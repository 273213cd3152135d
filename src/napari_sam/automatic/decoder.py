"""The learned instance decoder (micro-sam's "AIS" design) on top of a SAM image embedding.

A UNETR-style convolutional decoder upsamples the image embedding ``(B, C, h, w)`` by 16
to three maps at model-input resolution, each in 0..1 (sigmoid):

- channel 0: foreground probability,
- channel 1: distance to the object's centre (small near the centre),
- channel 2: distance to the object's boundary, inverted (small deep inside the object).

:mod:`napari_sam.automatic.watershed` turns the three maps into instances.

Layout (facts of micro-sam's decoder, so its ``decoder_state`` loads unchanged; the widths
``F = (8f, 4f, 2f, f)`` with ``f = 64``)::

    z12 = embedding                                   (B, C, h, w)
    z9  = deconv1(z12)      C  -> 8f                  x2
    z6  = deconv2(z9)       8f -> 4f                  x4
    z3  = deconv3(z6)       4f -> 2f                  x8
    z0  = deconv4(z3)       2f -> f                   x16
    x   = base(z12)         C  -> 8f                  x1
    x   = decoder(x, [z9, z6, z3])  each level: upsample x2, concatenate with the middle
                            channels of the skip tensor, double conv      -> f, x8
    x   = deconv_out(x)     f -> f                    x16
    x   = decoder_head(cat(x, z0))  2f -> f
    out = sigmoid(out_conv(x))      f -> 3

``deconvN`` is upsample -> 3x3 conv -> batch norm -> ReLU; ``base``, ``decoder.blocks``
and ``decoder_head`` are (instance norm -> 3x3 conv -> ReLU) twice, the instance norms
without parameters; an upsample is bilinear x2 then a 1x1 conv (``.conv``), or a 2x2
transposed convolution of stride 2 (``.block``), as the state dict says.

Conventions: micro-sam's decoders (``conventions="micro_sam"``, what :func:`decoder_from_state`
builds by default) differ from an ordinary eval-mode network in two ways that decide parity:

- micro-sam never puts its decoder in eval mode, so its batch norms normalise with each
  image's own statistics; here that is done one image of the batch at a time, so batching
  tiles does not mix their statistics (the running statistics are never used);
- micro-sam scales each image min-max per channel to uint8 by truncation before its
  encoder (:func:`napari_sam.automatic.ais.minmax_uint8`), not with the percentile
  normaliser of :mod:`napari_sam.imaging`.

With ``conventions="napari_sam"`` (decoders trained here) the batch norms use the running
statistics and planes go through the project's one normaliser.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..model.family import InputFrame

__all__ = ["CONVENTIONS", "InstanceDecoder", "decoder_from_state", "maps_to_plane", "MAP_NAMES"]

CONVENTIONS = ("micro_sam", "napari_sam")

MAP_NAMES = ("foreground", "center_distances", "boundary_distances")
"""The three output channels, in order."""

_LEVELS = 3  # upsampling levels inside ``decoder`` (x2 each), plus ``deconv_out``


class _Upsample(nn.Module):
    """x2 bilinear (half-pixel centres) then a 1x1 convolution: ``(B, in, h, w) -> (B, out, 2h, 2w)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class _TransposedUpsample(nn.Module):
    """A 2x2 transposed convolution of stride 2: ``(B, in, h, w) -> (B, out, 2h, 2w)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsample(in_channels: int, out_channels: int, transposed: bool) -> nn.Module:
    return (_TransposedUpsample if transposed else _Upsample)(in_channels, out_channels)


class _Conv3x3(nn.Module):
    """A padded 3x3 convolution (its own module so the state-dict key is ``...block.weight``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _ImageBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that can normalise every image with its own statistics.

    With ``per_image_statistics`` each sample of the batch is normalised over its own
    ``(h, w)`` (biased variance), exactly as a train-mode batch norm on a batch of one;
    the running statistics are neither used nor updated. Otherwise the running
    statistics are used, whatever the module's training flag.
    """

    per_image_statistics: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_image_statistics:
            # F.batch_norm per image (not instance_norm) gives micro-sam's numbers exactly.
            return torch.cat([
                F.batch_norm(x[i : i + 1], None, None, self.weight, self.bias, True, 0.0, self.eps)
                for i in range(x.shape[0])
            ])
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class _UpBlock(nn.Module):
    """Upsample x2 -> 3x3 conv -> batch norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsample(in_channels, out_channels, transposed),
            _Conv3x3(out_channels, out_channels),
            _ImageBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _DoubleConv(nn.Module):
    """(instance norm -> 3x3 conv -> ReLU) x 2; the instance norms carry no parameters."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Levels(nn.Module):
    """The upsampling path: at each level, x2, concatenate a skip tensor, double conv."""

    def __init__(self, widths: tuple[int, ...], transposed: bool) -> None:
        super().__init__()
        pairs = list(zip(widths[:-1], widths[1:]))
        # Each block sees the upsampled x (out channels) plus as many skip channels.
        self.blocks = nn.ModuleList([_DoubleConv(2 * out, out) for _, out in pairs])
        self.samplers = nn.ModuleList([_upsample(inc, out, transposed) for inc, out in pairs])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _centre_channels(skip, x.shape[1])], dim=1))
        return x


def _centre_channels(skip: torch.Tensor, count: int) -> torch.Tensor:
    """The middle ``count`` channels of ``skip`` (B, C, h, w): the skip tensors carry twice
    the channels a level concatenates, and micro-sam's decoder crops them centrally."""
    start = (skip.shape[1] - count) // 2
    return skip[:, start : start + count]


class InstanceDecoder(nn.Module):
    """Image embedding -> foreground, centre-distance and boundary-distance maps.

    Parameters
    ----------
    embed_dim : int
        Channels ``C`` of the image embedding (256 for every SAM model).
    initial_features : int
        Width ``f`` of the finest level; micro-sam uses 64.
    out_channels : int
        Output maps (3: see :data:`MAP_NAMES`).
    transposed : bool
        Upsample with 2x2 transposed convolutions instead of bilinear + 1x1 conv.
    conventions : {"micro_sam", "napari_sam"}
        ``"micro_sam"``: batch norms use each image's own statistics and planes are scaled
        min-max to uint8 before the encoder; ``"napari_sam"``: running statistics and the
        project's normaliser (see the module docstring).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        initial_features: int = 64,
        out_channels: int = 3,
        transposed: bool = False,
        conventions: str = "micro_sam",
    ) -> None:
        super().__init__()
        widths = tuple(initial_features * 2**i for i in range(_LEVELS + 1))[::-1]  # (8f, 4f, 2f, f)
        self.embed_dim = int(embed_dim)
        self.initial_features = int(initial_features)
        self.transposed = bool(transposed)
        self.deconv1 = _UpBlock(embed_dim, widths[0], transposed)
        self.deconv2 = _UpBlock(widths[0], widths[1], transposed)
        self.deconv3 = _UpBlock(widths[1], widths[2], transposed)
        self.deconv4 = _UpBlock(widths[2], widths[3], transposed)
        self.base = _DoubleConv(embed_dim, widths[0])
        self.decoder = _Levels(widths, transposed)
        self.deconv_out = _upsample(widths[-1], widths[-1], transposed)
        self.decoder_head = _DoubleConv(2 * widths[-1], widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], out_channels, 1)
        self.conventions = conventions

    @property
    def conventions(self) -> str:
        return self._conventions

    @conventions.setter
    def conventions(self, value: str) -> None:
        if value not in CONVENTIONS:
            raise ValueError(f"conventions must be one of {CONVENTIONS}, got {value!r}")
        self._conventions = value
        for module in self.modules():
            if isinstance(module, _ImageBatchNorm):
                module.per_image_statistics = value == "micro_sam"

    @property
    def upsampling(self) -> int:
        """Output pixels per embedding cell along each axis (16)."""
        return 2 ** (_LEVELS + 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` image embeddings -> ``(B, 3, 16h, 16w)`` maps in 0..1."""
        if embedding.ndim != 4 or embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"embedding must be (B, {self.embed_dim}, h, w), got {tuple(embedding.shape)}"
            )
        z9 = self.deconv1(embedding)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(embedding), [z9, z6, z3])
        x = self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))
        return torch.sigmoid(self.out_conv(x))

    def predict(self, embedding: torch.Tensor, frame: InputFrame) -> torch.Tensor:
        """Maps for one embedded plane, at the plane's resolution.

        Parameters
        ----------
        embedding : (1, C, h, w) tensor (moved to the decoder's device)
        frame : InputFrame of the embedding (original and resized sizes).

        Returns
        -------
        (3, H, W) float32 tensor on the decoder's device; channels :data:`MAP_NAMES`.
        """
        embedding = embedding.to(device=self.out_conv.weight.device, dtype=self.out_conv.weight.dtype)
        return maps_to_plane(self(embedding), frame)[0]


def maps_to_plane(maps: torch.Tensor, frame: InputFrame) -> torch.Tensor:
    """Decoder output ``(B, K, 16h, 16w)`` -> ``(B, K, H, W)`` in the plane's pixels.

    Bilinear (half-pixel centres) to the square model input ``(S, S)``, crop the resized
    plane ``input_size`` (the rest is padding), bilinear to ``original_size``: the same
    three steps micro-sam takes, so the maps agree with its own to float rounding.
    """
    size = frame.image_size
    maps = F.interpolate(maps, (size, size), mode="bilinear", align_corners=False)
    maps = maps[..., : frame.input_size[0], : frame.input_size[1]]
    return F.interpolate(maps, tuple(frame.original_size), mode="bilinear", align_corners=False)


def decoder_from_state(state: Mapping[str, torch.Tensor], *, conventions: str = "micro_sam") -> InstanceDecoder:
    """Build an :class:`InstanceDecoder` whose parameters are ``state`` (a micro-sam ``decoder_state``).

    The architecture is read from the tensors: the embedding width and ``f`` from
    ``base.block.1.weight``, transposed upsampling from ``decoder.samplers.*.block.*``
    keys, the output channels from ``out_conv.weight``. Keys of the image encoder
    (``encoder.*``), which some micro-sam files carry too, are ignored.

    Raises
    ------
    ValueError
        When a tensor is missing, unexpected or of the wrong shape (names them).
    """
    state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    for key in ("base.block.1.weight", "out_conv.weight"):
        if key not in state:
            raise ValueError(f"not an instance-decoder state: no {key!r} (keys start {sorted(state)[:3]})")
    base = state["base.block.1.weight"]  # (8f, C, 3, 3)
    transposed = any(k.startswith("decoder.samplers.") and ".block." in k for k in state)
    decoder = InstanceDecoder(
        embed_dim=int(base.shape[1]),
        initial_features=int(base.shape[0]) // 2**_LEVELS,
        out_channels=int(state["out_conv.weight"].shape[0]),
        transposed=transposed,
        conventions=conventions,
    )
    expected = decoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            "instance-decoder state does not fit the architecture it describes: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    decoder.load_state_dict(state)
    return decoder.eval()
