"""The sidecar JSON next to a checkpoint: what wrote it, its architecture, user notes.

:func:`~napari_sam.checkpoints.save_model` writes ``<stem>.json``; loading reads
``<file>.json`` or ``<stem>.json``, whose ``model_type`` / ``config`` decide the
architecture before any guessing from the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .architecture import Architecture, architecture_from_config
from .errors import CheckpointError

__all__ = ["METADATA_FORMAT", "METADATA_VERSION", "metadata_path", "read_metadata", "sidecar_json"]

# Written into every sidecar JSON by save_model, so a file can say what wrote it.
METADATA_FORMAT = "napari-sam-checkpoint"
METADATA_VERSION = 1


def metadata_path(path: str | os.PathLike) -> Path:
    """Where :func:`~napari_sam.checkpoints.save_model` writes the sidecar JSON of ``path``: ``<stem>.json``."""
    return Path(path).with_suffix(".json")


def read_metadata(path: Path) -> tuple[dict[str, Any], Path | None]:
    """The sidecar JSON of a checkpoint (``<file>.json`` or ``<stem>.json``) and its path, or ``({}, None)``.

    Raises
    ------
    CheckpointError
        When the sidecar is not valid JSON or not a JSON object.
    """
    for candidate in (Path(f"{path}.json"), metadata_path(path)):
        if candidate != path and candidate.is_file():
            try:
                metadata = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(
                    f"The metadata file {candidate} of {path} is not valid JSON: {err}."
                ) from None
            if not isinstance(metadata, dict):
                raise CheckpointError(
                    f"The metadata file {candidate} of {path} must hold a JSON object, not "
                    f"{type(metadata).__name__}."
                )
            return metadata, candidate
    return {}, None


def sidecar_json(architecture: Architecture, metadata: Mapping[str, Any] | None) -> str:
    """The text of the sidecar JSON of a model of ``architecture``, with the user's ``metadata``.

    Raises
    ------
    ValueError
        When ``metadata``'s ``model_type`` / ``config`` disagree with ``architecture``, or
        it is not JSON-serialisable.
    """
    record: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "model_type": architecture.model_type,
        "config": architecture.config,
    }
    for key, value in (metadata or {}).items():
        if key == "model_type" and value != architecture.model_type:
            raise ValueError(
                f"metadata model_type {value!r} disagrees with the model ({architecture.model_type!r})"
            )
        if key == "config" and architecture_from_config(value) != architecture:
            raise ValueError(f"metadata config {value!r} disagrees with the model ({architecture.config!r})")
        record.setdefault(key, value)
    try:
        return json.dumps(record, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serialisable: {err}") from None
