"""Kernels: how the encoders and the decoder compute when no gradient is recorded.

Exact mode (the default) computes what the reference computes, in float32, within the
parity tolerances of ``tests/model/test_parity.py``; it is only arranged differently when no
gradient is recorded (``not torch.is_grad_enabled()``, as under ``Predictor``):

- **bounded temporaries**: large tensors are processed in chunks (tokens for the linear
  layers, query rows for global attention, bands of window rows for windowed attention
  (:func:`napari_sam.model.windows.window_attention`), row strips for TinyViT's inverted
  residuals), so temporaries stay near
  :data:`CHUNK_BYTES`. glibc hands blocks above its mmap threshold (at most 32 MB)
  back to the OS on free; every re-allocation then page-faults on each 4 KiB page,
  which cost the reference about a third of its encoder time on a CPU. Smaller blocks
  are recycled from the heap. Global attention is the exception: CPU flash attention
  wants at least ``MIN_QUERIES`` (1024) queries per call, so its bias chunk is
  ``heads x 1024 x tokens`` floats (200 MB for vit_b), allocated once per block;
- **fused kernels**: attention through ``scaled_dot_product_attention`` with the
  relative-position bias as its mask; on CPU, float32 linear layers through oneDNN
  (:func:`linear`; about 25 % faster than the MKL path on an AVX-512 EPYC) with the
  GELU fused where one follows; TinyViT's batch norms folded into their convolutions;
- **in-place** residual sums and GELUs on tensors the forward pass itself created;
- **channels-last** convolutions in TinyViT (about twice as fast on a CPU);
- **less work in the decoder**: the dense positional encoding is cached; attention
  between the few prompt tokens and the 4096 image tokens projects the few instead of
  the many (``transformer.Attention``); the output upscaling and the mask product run
  per pixel as three matrix products, for the requested masks only; the low-res logits
  are upsampled only where the plane is (``transforms.upscale_logits``).

The autograd path (training) is the plain, unchunked code; tests/model/test_kernels.py
checks that both paths agree. :func:`napari_sam.model.fast.fast_mode` trades
exactness for speed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d

logger = logging.getLogger(__name__)

#: Largest temporary (bytes) an inference chunk aims for. glibc serves blocks above its
#: mmap threshold (which adapts up to 32 MB) with fresh pages and gives the top of its
#: heap back once more than twice the threshold is free there, so the few temporaries
#: of one chunk together must stay well below 32 MB to be recycled. 16 MB measured
#: fastest on a 2-core EPYC (8 and 30 MB: up to 2 % and 10 % slower); smaller chunks
#: mean more kernel launches, and on a busy machine every parallel kernel waits for
#: both threads to be scheduled.
CHUNK_BYTES = 16 << 20

#: The budget on other devices: CUDA's caching allocator recycles freed blocks itself,
#: so chunks only need to fit in memory, and fewer, larger kernels run faster.
DEVICE_CHUNK_BYTES = 1 << 30

_ONEDNN_LINEAR: bool | None = None  # None: not probed yet


def chunk_length(
    total: int, bytes_per_item: int, budget: int | None = None, device: torch.device | None = None
) -> int:
    """Items per chunk when ``total`` items of ``bytes_per_item`` each are cut into the
    fewest chunks of at most ``budget`` bytes (at least one item per chunk), as even as
    possible. The default budget is :data:`CHUNK_BYTES` on the CPU (or with no
    ``device``), :data:`DEVICE_CHUNK_BYTES` elsewhere."""
    if budget is None:
        budget = CHUNK_BYTES if device is None or device.type == "cpu" else DEVICE_CHUNK_BYTES
    largest = max(1, budget // max(1, bytes_per_item))
    chunks = -(-total // largest)
    return max(1, -(-total // chunks))


def _onednn_linear_available() -> bool:
    """Whether oneDNN's fused linear op exists here and agrees with ``F.linear`` (probed once)."""
    global _ONEDNN_LINEAR
    if _ONEDNN_LINEAR is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(5, 16, generator=generator)
            weight = torch.randn(24, 16, generator=generator)
            bias = torch.randn(24, generator=generator)
            with torch.no_grad():
                plain = op(x, weight, bias, "none", [], "")
                fused = op(x, weight, bias, "gelu", [], "none")
            expected = F.linear(x, weight, bias)
            _ONEDNN_LINEAR = bool(
                torch.backends.mkldnn.is_available()
                and torch.allclose(plain, expected, atol=1e-5, rtol=1e-5)
                and torch.allclose(fused, F.gelu(expected), atol=1e-5, rtol=1e-5)
            )
        except (AttributeError, RuntimeError) as error:  # op missing in this torch build
            logger.debug("oneDNN linear unavailable: %s", error)
            _ONEDNN_LINEAR = False
    return _ONEDNN_LINEAR


def linear(layer: nn.Module, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, followed by an exact (erf) GELU when ``gelu``; for inference.

    A plain float32 ``nn.Linear`` on CPU runs as one oneDNN call with the GELU fused;
    anything else (LoRA or quantised layers, other devices and dtypes, recorded
    gradients) calls the module itself.
    """
    if type(layer) is nn.Linear:
        return linear_weights(x, layer.weight, layer.bias, gelu)
    y = layer(x)
    return F.gelu(y) if gelu else y


def linear_weights(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then an exact GELU when ``gelu``; oneDNN on CPU."""
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and _onednn_linear_available()
    ):
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place (no second buffer of ``x``'s size); returns ``x``."""
    inplace = getattr(torch._C._nn, "gelu_", None)
    if inplace is None or torch.is_grad_enabled():
        return x.copy_(F.gelu(x))
    return inplace(x)


def mlp_(norm: nn.Module, lin1: nn.Module, act: nn.Module, lin2: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x += lin2(act(lin1(norm(x))))`` in place, over chunks of tokens; returns ``x``.

    ``x`` is ``(..., dim)`` and contiguous; the hidden layer, the widest temporary of a
    transformer block, never holds more than :data:`CHUNK_BYTES`.
    """
    flat = x.view(-1, x.shape[-1])
    fused_gelu = type(act) is nn.GELU and act.approximate == "none"
    step = chunk_length(flat.shape[0], lin1.out_features * flat.element_size(), device=x.device)
    for start in range(0, flat.shape[0], step):
        part = flat[start : start + step]
        hidden = linear(lin1, norm(part), gelu=fused_gelu)
        if not fused_gelu:
            hidden = act(hidden)
        part += linear(lin2, hidden)
    return x


def run_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``; without autograd, each ``LayerNorm2d`` runs as one fused layer norm
    over a channels-last view (instead of nine elementwise kernels) and each exact GELU
    in place on the tensor the previous layer made."""
    if torch.is_grad_enabled():
        return layers(x)
    owned = False  # whether x was made here (the caller's tensor is never modified)
    for layer in layers:
        if isinstance(layer, LayerNorm2d):
            channels_last = x.permute(0, 2, 3, 1)
            x = F.layer_norm(channels_last, channels_last.shape[-1:], layer.weight, layer.bias, layer.eps)
            x = x.permute(0, 3, 1, 2)
        elif owned and type(layer) is nn.GELU and layer.approximate == "none":
            x = gelu_(x)
        else:
            x = layer(x)
        owned = True
    return x
