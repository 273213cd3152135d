"""The sidecar JSON next to a checkpoint: what wrote it, its architecture, user notes.

:func:`~napari_sam.checkpoints.save_model` writes ``<stem>.json``; loading reads
``<file>.json`` or ``<stem>.json``, whose ``model_type`` / ``config`` decide the
architecture before any guessing from the weights.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .architecture import Architecture, architecture_from_config
from .errors import CheckpointError

__all__ = [
    "METADATA_FORMAT", "METADATA_VERSION", "metadata_path", "read_metadata", "read_paired_metadata", "sidecar_json",
]

log = logging.getLogger(__name__)

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


def read_paired_metadata(path: Path, pairing: Mapping[str, str] | None) -> tuple[dict[str, Any], Path | None]:
    """The metadata that belongs to the weights in ``path``, and the file it came from.

    ``pairing`` is :func:`~napari_sam.checkpoints.reading.read_weights`'s record. A sidecar
    whose ``weights_id`` is the weights file's is read as is (hand edits kept). One that
    is not (a save interrupted between its two files, or a weights file copied over
    another) is never used with the wrong weights: the copy the weights file carries
    stands in for it, with a logged warning; a file without a copy loads without the sidecar.

    Raises
    ------
    CheckpointError
        When the sidecar is not valid JSON and the weights file carries no copy.
    """
    try:
        sidecar, sidecar_file = read_metadata(path)
    except CheckpointError:
        if pairing is None:
            raise
        sidecar, sidecar_file = {}, metadata_path(path)
    if pairing is None:
        if "weights_id" not in sidecar:
            return sidecar, sidecar_file
        log.warning("napari-sam: %s was written for other weights than %s; it is ignored", sidecar_file, path)
        return {}, None
    if sidecar_file is not None and sidecar.get("weights_id") == pairing["weights_id"]:
        return sidecar, sidecar_file
    try:
        embedded = json.loads(pairing["sidecar"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the metadata stored in the file is not valid JSON: {err}.") from None
    if not isinstance(embedded, dict):
        raise CheckpointError(f"{path}: the metadata stored in the file is not a JSON object.")
    if sidecar_file is not None:
        log.warning("napari-sam: %s belongs to other weights than %s (a save interrupted between the two "
                    "files?); using the metadata stored in %s", sidecar_file, path, path.name)
    return embedded, path


def sidecar_json(architecture: Architecture, metadata: Mapping[str, Any] | None, weights_id: str | None = None) -> str:
    """The text of the sidecar JSON of a model of ``architecture``, with the user's ``metadata``.

    ``weights_id`` (written by :func:`~napari_sam.checkpoints.save_model`) ties the sidecar
    to its weights file, which carries the same id.

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
        **({"weights_id": weights_id} if weights_id else {}),
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
