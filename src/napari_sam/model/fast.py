"""Fast mode: a faster, approximate copy of a model for prediction.

Int8 dynamic quantisation of the image encoder's linear layers on CPU, half precision on
CUDA; the prompt encoder and mask decoder stay exact. Agreement with exact mode and speed
are measured in docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings

import torch
from torch import nn

__all__ = ["HALF_DTYPES", "fast_mode"]

logger = logging.getLogger(__name__)


HALF_DTYPES = (torch.float16, torch.bfloat16)


def fast_mode(model: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A faster, approximate copy of a :class:`~napari_sam.model.Sam`, for :class:`Predictor`.

    - CPU: the image encoder's ``nn.Linear`` layers become int8 dynamically quantised
      layers (int8 weights per output channel, activations quantised per call, FBGEMM
      kernels); where this torch has no such kernels, the encoder runs in bfloat16.
    - CUDA: the image encoder runs in float16 (its input cast on entry, its embedding
      cast back to float32 on exit).

    The prompt encoder and mask decoder stay exact float32 (they take milliseconds), and
    the original model is left untouched. Agreement with exact mode (top-mask IoU) and
    speed are measured in docs/benchmarks.md.

    Parameters
    ----------
    model : Sam
    device : optional
        Where the fast model runs; default the model's device.
    dtype : torch.float16 or torch.bfloat16, optional
        Run the image encoder in this precision instead of the choice above (SAM 2's
        official GPU path is bfloat16; both work on CUDA, bfloat16 also on CPUs with
        bfloat16 kernels). SAM 1 and SAM 2 models alike: the encoder's output, a tensor or
        SAM 2's multi-scale maps, comes back as float32.

    Returns
    -------
    Sam
        A new model in eval mode; ``config["fast_mode"]`` says what was done.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    fast = copy.deepcopy(model).to(device).eval()
    fast.config = dict(getattr(model, "config", {}))
    fast.metadata = dict(getattr(model, "metadata", {}))
    if dtype is not None:
        if dtype not in HALF_DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        _run_in(fast.image_encoder, dtype)
        fast.config["fast_mode"] = f"{str(dtype).replace('torch.', '')} image encoder"
    elif device.type == "cuda":
        _run_in(fast.image_encoder, torch.float16)
        fast.config["fast_mode"] = "float16 image encoder"
    elif device.type == "cpu" and _quantize_linears(fast):
        fast.config["fast_mode"] = f"int8 dynamic ({torch.backends.quantized.engine}) image encoder linears"
    elif device.type == "cpu" and _bfloat16_supported():
        _run_in(fast.image_encoder, torch.bfloat16)
        fast.config["fast_mode"] = "bfloat16 image encoder"
    else:
        logger.warning("fast_mode: nothing faster for %s; the model is an exact copy", device)
        fast.config["fast_mode"] = "none"
    return fast


def _quantize_linears(sam: nn.Module) -> bool:
    """Replace the image encoder's linear layers by int8 dynamic ones; False if unavailable."""
    engines = torch.backends.quantized.supported_engines
    engine = next((name for name in ("fbgemm", "x86", "onednn") if name in engines), None)
    if engine is None:
        return False
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, not yet removed.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            sam.image_encoder = quantize_dynamic(
                sam.image_encoder, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
    except (ImportError, RuntimeError, AttributeError) as error:
        logger.info("int8 dynamic quantisation unavailable: %s", error)
        return False
    return True


def _bfloat16_supported() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _run_in(module: nn.Module, dtype: torch.dtype) -> None:
    """Convert ``module`` to ``dtype``, casting its input to it and its output back to float32."""
    module.to(dtype)
    module.register_forward_pre_hook(functools.partial(_cast_input, dtype=dtype))
    module.register_forward_hook(_output_to_float32)


def _cast_input(module: nn.Module, args: tuple, dtype: torch.dtype) -> tuple:
    return (args[0].to(dtype), *args[1:])


def _output_to_float32(module: nn.Module, args: tuple, output):
    return _to_float32(output)


def _to_float32(value):
    """Floating tensors (alone or in lists, tuples and dicts: SAM 2's multi-scale features) -> float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value
