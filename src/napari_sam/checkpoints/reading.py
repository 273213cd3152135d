"""Reading checkpoint files safely into plain SAM state dicts.

Files are read with ``torch.load(weights_only=True)`` only: a checkpoint is data, and a
pickle that would run code is refused, never executed. Training checkpoints are unwrapped
and the key prefixes other tools add are stripped.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import LIST_LIMIT, CheckpointError

__all__ = ["PAIRING_KEY", "STATE_DICT_ENTRIES", "WRAPPER_PREFIXES", "read_state_dict", "read_weights"]

# Leading key prefixes other tools add: micro-sam / torch_em wrap SAM as `sam.`,
# DistributedDataParallel adds `module.`, torch.compile adds `_orig_mod.`.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "sam.")

# Top-level entries whose value is the model's state dict in training checkpoints
# (micro-sam / torch_em use "model_state"; PyTorch Lightning and others "state_dict").
STATE_DICT_ENTRIES = ("model_state", "state_dict", "model")


# save_model stores the sidecar's record in the state dict's ``_metadata`` (which torch
# pickles with an OrderedDict and ``load_state_dict`` ignores for unknown prefixes), so the
# weights file can tell whether a sidecar beside it is its own.
PAIRING_KEY = "napari_sam"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain SAM state dict (on the CPU). See :func:`read_weights`."""
    return read_weights(path)[0]


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """Read a checkpoint file into a plain SAM state dict (on the CPU) and its pairing record.

    Accepts plain state dicts (the official and MobileSAM files), training checkpoints
    that wrap the weights in ``model_state`` / ``state_dict`` next to other entries
    (micro-sam / torch_em: ``optimizer_state``, ``decoder_state``, ``config``, ...; these
    are ignored), and keys prefixed by ``sam.``, ``module.`` or ``_orig_mod.`` (stripped).

    Returns
    -------
    state : dict of str to Tensor
    pairing : dict or None
        For files written by :func:`~napari_sam.checkpoints.save_model`:
        ``{"weights_id": str, "sidecar": str}`` (the id also in its sidecar JSON, and the
        sidecar's text); None for any other file.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    CheckpointError
        When the file would run code when unpickled (refused, never executed), is
        truncated or not a PyTorch file, or does not hold a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    loaded = torch_load_data(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)."
        )
    state = _unwrap(loaded, path)
    return _strip_prefixes(state, path), _pairing(loaded)


def _pairing(loaded: Any) -> dict[str, str] | None:
    """The record :func:`~napari_sam.checkpoints.save_model` embeds, when well formed (else None)."""
    record = getattr(loaded, "_metadata", None)
    record = record.get(PAIRING_KEY) if isinstance(record, Mapping) else None
    if not isinstance(record, Mapping):
        return None
    weights_id, sidecar = record.get("weights_id"), record.get("sidecar")
    if not (isinstance(weights_id, str) and weights_id and isinstance(sidecar, str)):
        return None
    return {"weights_id": weights_id, "sidecar": sidecar}


def torch_load_data(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything else than data is a :class:`CheckpointError`."""
    try:
        with warnings.catch_warnings():
            # Plain pickles (not torch.save zip files) trigger a protocol warning; the
            # outcome is reported below either way.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise CheckpointError(
                f"Refused to load {path}: it contains a Python object ({blocked.group(1)}) "
                "besides tensors and plain containers, and unpickling it could run arbitrary "
                "code. napari-sam only reads weights (torch.load with weights_only=True). If "
                "this is a training checkpoint from a source you trust, re-save just its "
                "weights (e.g. its 'model_state' entry) with torch.save and load that file."
            ) from None
        raise CheckpointError(
            f"Cannot read {path}: it is not a PyTorch checkpoint, or uses pickle features "
            "that are refused because they could run code."
        ) from None
    except OSError:  # permissions and the like: about the file system, not the content
        raise
    except Exception as err:  # a damaged file can fail inside torch or pickle in many ways
        size = path.stat().st_size
        raise CheckpointError(
            f"Cannot read {path} ({size} bytes): the file is truncated, corrupt, or not a "
            f"PyTorch checkpoint ({type(err).__name__}: {_first_line(err)}). If it was "
            "downloaded, download it again."
        ) from None


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    text = str(err).strip()
    if not text:
        return "no details"
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def _holds_tensors(mapping: Mapping) -> bool:
    return any(isinstance(value, torch.Tensor) for value in mapping.values())


def _unwrap(loaded: Mapping, path: Path) -> Mapping:
    """The state dict itself: ``loaded``, or its first :data:`STATE_DICT_ENTRIES` entry with tensors."""
    if _holds_tensors(loaded):
        return loaded
    for entry in STATE_DICT_ENTRIES:
        value = loaded.get(entry)
        if isinstance(value, Mapping) and _holds_tensors(value):
            return value
    entries = ", ".join(repr(k) for k in list(loaded)[:LIST_LIMIT])
    raise CheckpointError(
        f"{path} does not hold model weights: no tensors at its top level and no "
        f"{' / '.join(repr(e) for e in STATE_DICT_ENTRIES)} entry with tensors "
        f"(top-level entries: {entries or 'none'})."
    )


def _strip_prefix(key: str) -> str:
    """``key`` without any leading :data:`WRAPPER_PREFIXES`, however nested (``module.sam.``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                stripped = True
    return key


def _strip_prefixes(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            not_tensors.append(key if isinstance(key, str) else repr(key))
            continue
        name = _strip_prefix(key)
        if name in result:
            raise CheckpointError(
                f"{path} holds the parameter {name!r} twice (with and without a "
                f"{'/'.join(WRAPPER_PREFIXES)} prefix); it is not one model's state dict."
            )
        result[name] = value
    if not_tensors:
        raise CheckpointError(
            f"{path} is not a mapping of tensors: {len(not_tensors)} entries are not tensors, "
            f"e.g. {', '.join(not_tensors[:LIST_LIMIT])}."
        )
    return result
