"""Reading and writing instance decoders: micro-sam checkpoints and decoder files, unchanged.

Three file layouts are read, all with ``torch.load(weights_only=True)`` (through the
checkpoint reader of :mod:`napari_sam.checkpoints`; a pickle that would run code is
refused):

- a micro-sam / torch-em training checkpoint: ``{"model_state": ..., "decoder_state": ...,
  ...}`` (the SAM weights load with :func:`napari_sam.checkpoints.load_model` from the
  same file);
- a micro-sam decoder file (``vit_b_lm_decoder`` and the like): the decoder's state dict
  itself;
- a file written by :func:`save_decoder`: ``{"decoder_state": ..., "conventions": ...}``, and
  for decoders trained here (:mod:`.training`) ``"encoder_sha256"`` (the model file it was
  trained on: :func:`load_decoder` refuses it beside another), ``"watershed"`` (tuned
  :class:`~.watershed.WatershedOptions`, set as the decoder's ``watershed_options``) and
  ``"training"`` (a summary of the run).

A decoder read from a micro-sam file follows micro-sam's conventions (per-image batch-norm
statistics, min-max input scaling; see :mod:`.decoder`); one written by
:func:`save_decoder` keeps the conventions it was saved with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import CheckpointError
from ..checkpoints.reading import torch_load_data
from ..files import atomic_torch_save
from .decoder import CONVENTIONS, InstanceDecoder, decoder_from_state
from .watershed import WatershedOptions

__all__ = [
    "check_encoder", "decoder_source", "has_decoder", "load_decoder", "read_decoder_info", "read_decoder_state",
    "save_decoder",
]

_DECODER_KEY = "base.block.1.weight"  # present in every instance-decoder state


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(decoder state or None, conventions) of a checkpoint or decoder file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    loaded = torch_load_data(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a checkpoint mapping.")
    conventions = "micro_sam"
    state = loaded
    if isinstance(loaded.get("decoder_state"), Mapping):
        state = loaded["decoder_state"]
        conventions = loaded.get("conventions", "micro_sam")
        if conventions not in CONVENTIONS:
            raise CheckpointError(f"{path}: unknown decoder conventions {conventions!r}; expected one of {CONVENTIONS}")
    if _DECODER_KEY not in state:
        return None, conventions
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        raise CheckpointError(f"{path}: the decoder state holds entries that are not tensors.")
    return tensors, conventions


def has_decoder(path: str | os.PathLike) -> bool:
    """Whether the file holds an instance decoder (a ``decoder_state`` or a bare decoder state)."""
    return _read(path)[0] is not None


def read_decoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The instance decoder's state dict in a checkpoint or decoder file (CPU tensors).

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Unsafe, corrupt or unreadable file, or one without an instance decoder.
    """
    state, _ = _read(path)
    if state is None:
        raise CheckpointError(
            f"{path} holds no instance decoder: neither a 'decoder_state' entry nor a decoder state dict "
            "(micro-sam's automatic segmentation needs a checkpoint trained with its decoder, or the "
            "matching '*_decoder' file). Use the 'amg' mode, which needs no decoder."
        )
    return state


def load_decoder(path: str | os.PathLike, device: str | torch.device | None = None, *, model=None) -> InstanceDecoder:
    """An :class:`InstanceDecoder` from a checkpoint or decoder file, in eval mode.

    The architecture comes from the tensors (:func:`~.decoder.decoder_from_state`); the
    conventions from the file (micro-sam's unless it was written by :func:`save_decoder`);
    tuned watershed options, when the file has them, become ``decoder.watershed_options``
    (else the attribute is None).

    Parameters
    ----------
    model : ModelFamily, optional
        The model the decoder will run on: a decoder that records the sha256 of the model
        file it was trained on is refused with another file (:func:`check_encoder`).

    Raises
    ------
    FileNotFoundError, CheckpointError
        As :func:`read_decoder_state`; CheckpointError also when the tensors do not fit or
        the decoder was trained on another encoder.
    """
    state, conventions = _read(path)
    if state is None:
        read_decoder_state(path)  # raises with the full message
    info = read_decoder_info(path)
    if model is not None:
        check_encoder(path, info, model)
    try:
        decoder = decoder_from_state(state, conventions=conventions)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        decoder.watershed_options = None if info["watershed"] is None else WatershedOptions(**info["watershed"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable watershed options ({error})") from None
    decoder.object_size = info["object_size"]
    if device is not None:
        decoder.to(device)
    return decoder


def read_decoder_info(path: str | os.PathLike) -> dict:
    """What a decoder file says besides its tensors: ``{"encoder_sha256": str | None,
    "watershed": dict | None, "object_size": float | None, "training": dict | None}`` (all
    None for micro-sam's files). ``object_size``: the object diameter, in model-input
    pixels, at which the decoder works best (:mod:`.scale`)."""
    loaded = torch_load_data(Path(path))
    loaded = loaded if isinstance(loaded, Mapping) else {}
    info = {key: loaded.get(key) for key in ("encoder_sha256", "watershed", "object_size", "training")}
    size = info["object_size"]
    if size is not None and not (isinstance(size, (int, float)) and not isinstance(size, bool) and 1 <= size <= 1024):
        raise CheckpointError(f"{path}: 'object_size' must be a number of pixels within 1..1024, got {size!r}")
    info["object_size"] = None if size is None else float(size)
    if info["encoder_sha256"] is not None and not isinstance(info["encoder_sha256"], str):
        raise CheckpointError(f"{path}: 'encoder_sha256' must be a hex string")
    if info["watershed"] is not None and not isinstance(info["watershed"], Mapping):
        raise CheckpointError(f"{path}: 'watershed' must be a mapping of WatershedOptions fields")
    return info


def check_encoder(path: str | os.PathLike, info: Mapping, model) -> None:
    """Refuse a decoder trained on another model file than ``model``'s (one line).

    Nothing is checked when the decoder records no hash (micro-sam's files) or the model
    was not read from a file (built in memory).
    """
    expected = info.get("encoder_sha256")
    checkpoint = (getattr(model, "metadata", None) or {}).get("checkpoint")
    if not expected or not checkpoint or not os.path.isfile(checkpoint):
        return
    from ..checkpoints.download import sha256_of

    actual = sha256_of(Path(checkpoint))
    if actual != expected:
        raise CheckpointError(
            f"the instance decoder {path} was trained on another encoder (model file sha256 {expected[:12]}..., "
            f"but {checkpoint} has {actual[:12]}...): retrain it with `python -m napari_sam.automatic.training "
            f"--model {checkpoint} --out {path}`, or use --mode amg"
        )


def sizing_decoder(model, device=None):
    """The instance decoder that says at what object size ``model`` works, when it is at hand
    without a download and records one (:mod:`.scale`): a bundled decoder trained here (the
    default model's), or the model file's own ``decoder_state`` if its file says so. AMG
    uses it only to measure objects; None otherwise (micro-sam's and official models)."""
    from ..checkpoints.download import file_spec, model_spec
    from ..checkpoints.registry import MODELS

    metadata = getattr(model, "metadata", None) or {}
    name = metadata.get("name")
    if name in MODELS:
        paired = model_spec(name).decoder
        if paired is None or not file_spec(paired).bundled:
            return None  # a download: not for a size
    source = decoder_source(model)
    decoder = None if source is None else load_decoder(source, device=device, model=model)
    return decoder if getattr(decoder, "object_size", None) is not None else None


def decoder_source(model, mode: str | None = None) -> Path | None:
    """The file of ``model``'s own instance decoder, or None (then AMG is the only mode).

    In order: the decoder paired with a named model in the registry (micro-sam's
    ``vit_b_lm`` -> ``vit_b_lm_decoder``, downloaded and hash-checked on first use; the
    default model's bundled ``default_decoder.pt`` when this installation has it), then
    the ``decoder_state`` of the model's own checkpoint file. None when ``mode == "amg"``.

    Parameters
    ----------
    model : ModelFamily
        A model from :func:`napari_sam.checkpoints.load_model` (reads ``model.metadata``).
    mode : {"ais", "amg"}, optional
    """
    from ..checkpoints.download import fetch_decoder
    from ..checkpoints.registry import MODELS

    if mode == "amg":
        return None
    metadata = getattr(model, "metadata", None) or {}
    name = metadata.get("name")
    if name in MODELS:
        paired = fetch_decoder(name)
        if paired is not None:
            return paired
    checkpoint = metadata.get("checkpoint")
    if checkpoint and os.path.isfile(checkpoint) and has_decoder(checkpoint):
        return Path(checkpoint)
    return None


def save_decoder(decoder: InstanceDecoder, path: str | os.PathLike, *, encoder_sha256: str | None = None,
                 watershed: WatershedOptions | None = None, info: Mapping | None = None,
                 object_size: float | None = None) -> Path:
    """Write ``decoder`` atomically as ``{"decoder_state", "conventions"}`` (tensors and a str),
    plus, when given, ``"encoder_sha256"``, ``"watershed"`` (the options as a dict),
    ``"object_size"`` (preferred object diameter in model-input pixels) and
    ``"training"`` (``info``: plain values only, read back with ``weights_only=True``)."""
    state = {k: v.detach().cpu() for k, v in decoder.state_dict().items()}
    payload = {"decoder_state": state, "conventions": decoder.conventions}
    if encoder_sha256 is not None:
        payload["encoder_sha256"] = str(encoder_sha256)
    if watershed is not None:
        payload["watershed"] = watershed.to_dict()
    if object_size is not None:
        payload["object_size"] = float(object_size)
    if info is not None:
        payload["training"] = dict(info)
    return atomic_torch_save(payload, path)
