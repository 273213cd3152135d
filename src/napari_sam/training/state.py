"""The training state on disk: what ``--resume`` continues from.

A state is a dict of tensors, dicts, lists, numbers and strings only, so that
``torch.load(path, weights_only=True)`` reads it (the keys are listed in
``docs/training.md``, "Files"). It is written with
:func:`napari_sam.files.atomic_torch_save`: a crash leaves the previous state or the new
one, never half of one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_torch_save

STATE_FORMAT = "napari-sam-train-state"
STATE_VERSION = 1


def state_path_for(out: str | os.PathLike) -> Path:
    """The training-state file that goes with a model file: ``model.pt`` -> ``model.state.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def save_train_state(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (from :meth:`Trainer.state_dict`) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(state, path)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :class:`~napari_sam.training.Trainer` (``weights_only=True``).

    Raises
    ------
    ValueError
        The file is not a napari-sam training state.
    """
    from ..checkpoints import CheckpointError
    from ..checkpoints.reading import torch_load_data

    try:  # weights_only, and one line for an empty, truncated or malicious file
        state = torch_load_data(Path(path))
    except CheckpointError as err:
        reason = "it holds Python objects, refused" if str(err).startswith("Refused") else "damaged or not a state"
        raise ValueError(f"cannot resume from {path}: {reason}; delete it or run without --resume") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a napari-sam training state")
    return state


def fingerprint(params: Sequence[torch.Tensor]) -> float:
    """A cheap checksum of the frozen weights: resume must start from the same base model."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() + p.detach().double().abs().sum().item() for p in params))


def check_resumable(state: dict[str, Any], param_names: Sequence[str], base_fingerprint: float, train: str) -> None:
    """Raise ``ValueError`` unless ``state`` trains ``param_names`` of the same base model.

    ``train`` is this run's training mode, named in the message.
    """
    if state.get("format") != STATE_FORMAT:
        raise ValueError("not a napari-sam training state")
    if set(state["trainable"]) != set(param_names):
        raise ValueError(
            "the training state trains other parameters than this run "
            f"(train={state['config'].get('train')!r} there, {train!r} here)"
        )
    if not math.isclose(state["base_fingerprint"], base_fingerprint, rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError("the training state was made from another base model; resume with the same --base")


def copy_tensors(named: dict[str, torch.Tensor], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached CPU copies of ``named[name]`` for ``names`` (default: all)."""
    return {name: named[name].detach().cpu().clone() for name in (named if names is None else names)}


def assign(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` (parameter name -> tensor) into ``module``'s parameters in place."""
    named = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            named[name].copy_(value)
