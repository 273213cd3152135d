"""Loading and saving models: the one checkpoint loader of napari-sam.

::

    from napari_sam import load_model, save_model
    sam = load_model("vit_b")                 # downloaded once into the cache, verified
    sam = load_model("/data/finetuned.pt")    # official, MobileSAM or micro-sam files
    save_model(sam, "/data/mine.pt", metadata={"trained_on": "nuclei"})

Everything that goes wrong with a file raises :class:`CheckpointError` with a message
naming the file and saying what to do.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..device import select_device
from ..files import atomic_torch_save, atomic_write_bytes
from .architecture import Architecture, architecture_from_config, detect_architecture, named_configs
from .download import fetch_weights
from .errors import LIST_LIMIT, CheckpointError
from .metadata import metadata_path, read_paired_metadata, sidecar_json
from .reading import PAIRING_KEY, read_weights
from .registry import MODELS, ModelSpec

if TYPE_CHECKING:
    from ..model import Sam

__all__ = ["load_model", "save_model"]


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    model_type: str | None = None,
) -> Sam:
    """Load a Segment Anything model, in eval mode, on the selected device.

    Parameters
    ----------
    name_or_path : str or path
        A named model (``"default"``, ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``;
        downloaded into :func:`cache_dir` on first use), or the path of a checkpoint file:
        an official SAM or MobileSAM file, a micro-sam / torch_em training checkpoint, or
        a file written by :func:`save_model`.
    device : str or torch.device, optional
        See :func:`napari_sam.device.select_device`.
    model_type : str, optional
        The architecture (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``). By default
        the sidecar JSON's ``model_type``/``config``, else the named model's, else
        detected from the file's keys and tensor shapes.

    Returns
    -------
    Sam
        With ``model.metadata``: the sidecar JSON's content plus ``model_type``,
        ``config``, ``checkpoint`` (the file read) and ``name`` (for named models).

    Raises
    ------
    CheckpointError
        Unsafe, corrupt or non-checkpoint file; or weights that do not fit the
        architecture (the message lists missing and unexpected keys and shape mismatches).
    DownloadError
        A named model that is not cached and cannot be downloaded.
    FileNotFoundError
        No such file (or the bundled default model is not installed).
    """
    from ..model import build_sam

    target_device = select_device(device)  # fail on a bad device before reading gigabytes
    spec, path = _resolve(name_or_path)
    state, pairing = read_weights(path)
    _refuse_non_finite(state, path)
    from ..model.sam2 import is_sam2_state_dict, load_sam2_checkpoint

    if is_sam2_state_dict(state):  # SAM 2.1 files: their own family and detection
        return load_sam2_checkpoint(state, path, target_device, spec.name if spec is not None else None)
    metadata, metadata_file = read_paired_metadata(path, pairing)
    architecture, origin = _choose_architecture(state, path, model_type, metadata, metadata_file, spec)
    _check_before_building(state, architecture, origin, path)

    try:
        model = build_sam(architecture.build_argument())
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"Cannot build the architecture {architecture.describe()} ({origin}) for {path}: {err}"
        ) from err
    state = _check_state_dict(model, state, architecture, origin, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(target_device)
    model.metadata = {
        **metadata,
        "model_type": architecture.model_type,
        "config": dict(architecture.config),
        "checkpoint": str(path),
        **({"name": spec.name} if spec is not None else {}),
    }
    return model


def _resolve(name_or_path: str | os.PathLike) -> tuple[ModelSpec | None, Path]:
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path], fetch_weights(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return None, path
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; give the path of a checkpoint file (.pt / .pth).")
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither a named model ({', '.join(sorted(MODELS))}) nor an "
        "existing checkpoint file."
    )


def _choose_architecture(
    state: Mapping[str, torch.Tensor],
    path: Path,
    model_type: str | None,
    metadata: Mapping[str, Any],
    metadata_file: Path | None,
    spec: ModelSpec | None,
) -> tuple[Architecture, str]:
    """The architecture to build and where that choice came from (for messages)."""
    named = named_configs()
    if model_type is not None:
        if model_type not in named:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(named)}")
        return Architecture(model_type, named[model_type]), "model_type given by the caller"

    meta_type = metadata.get("model_type")
    meta_config = metadata.get("config")
    source = f"from the metadata file {metadata_file}"
    if isinstance(meta_config, Mapping) and meta_config:
        if "encoder" not in meta_config:
            raise CheckpointError(f"The metadata file {metadata_file} has a 'config' without 'encoder'.")
        return architecture_from_config(meta_config), source
    if meta_type is not None and meta_type != "custom":
        if meta_type not in named:
            raise CheckpointError(
                f"The metadata file {metadata_file} names model_type {meta_type!r}; expected "
                f"one of {sorted(named)}, or 'custom' with a 'config'."
            )
        return Architecture(meta_type, named[meta_type]), source

    if spec is not None and spec.model_type is not None:
        return Architecture(spec.model_type, named[spec.model_type]), f"the named model {spec.name!r}"

    try:
        return detect_architecture(state), "detected from the file's keys and shapes"
    except CheckpointError as err:
        raise CheckpointError(
            f"Cannot tell which architecture {path} holds: {err}. Pass model_type=, or put "
            f"a metadata file {metadata_path(path)} next to it with 'model_type' / 'config'."
        ) from None


def _refuse_non_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged training): the model would only predict nothing."""
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
            "the model is unusable (a training that diverged?)"
        )


def _check_before_building(
    state: Mapping[str, torch.Tensor], architecture: Architecture, origin: str, path: Path
) -> None:
    """Check the file's keys and shapes against ``architecture`` without allocating it.

    The architecture is built on the ``meta`` device (shapes only, no memory), so a sidecar
    naming another or an absurd architecture (``img_size: 320000``) fails here, not after
    allocating gigabytes. A config ``build_sam`` rejects is reported by the real build.
    """
    from ..model import build_sam

    try:
        with torch.device("meta"):
            skeleton = build_sam(architecture.build_argument())
    except (ValueError, TypeError, KeyError):
        return
    _check_state_dict(skeleton, state, architecture, origin, path, values=False)


def _check_state_dict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    architecture: Architecture,
    origin: str,
    path: Path,
    *,
    values: bool = True,
) -> dict[str, torch.Tensor]:
    """Compare keys and shapes before loading, to say exactly what does not fit.

    Returns the state dict without entries for the model's non-persistent buffers (e.g.
    the pixel statistics, which some exports include), once checked to equal the model's
    (``values=False``: shapes only, for a model on the ``meta`` device).
    """
    expected = model.state_dict()
    derived = {name: buf for name, buf in model.named_buffers() if name not in expected}
    state = dict(state)
    mismatched = []
    for name in [n for n in state if n in derived]:
        value, fixed = state.pop(name), derived[name]
        if not values:
            if value.shape != fixed.shape:
                mismatched.append(f"{name}: file {tuple(value.shape)} vs model {tuple(fixed.shape)}")
            continue
        fixed = fixed.cpu()
        same = value.shape == fixed.shape and (
            torch.allclose(value.to(fixed.dtype), fixed)
            if fixed.is_floating_point()
            else torch.equal(value.to(fixed.dtype), fixed)
        )
        if not same:
            mismatched.append(f"{name}: the file's values differ from the model's fixed buffer")

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    for name in sorted(set(expected) & set(state)):
        if state[name].shape != expected[name].shape:
            mismatched.append(
                f"{name}: file {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
            )
    if not (missing or unexpected or mismatched):
        return state

    lines = [f"{path} does not fit the architecture {architecture.describe()} ({origin}):"]
    for label, items in (
        ("missing keys (in the model, not in the file)", missing),
        ("unexpected keys (in the file, not in the model)", unexpected),
        ("mismatched tensors", mismatched),
    ):
        if items:
            shown = "\n    ".join(items[:LIST_LIMIT])
            more = f"\n    ... and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
            lines.append(f"  {len(items)} {label}:\n    {shown}{more}")
    try:
        detected = detect_architecture(state)
    except CheckpointError:
        detected = None
    if detected is not None and detected != architecture:
        if origin.startswith("model_type"):
            remedy = "leave model_type unset to detect it"
        elif origin.startswith("the named model"):
            remedy = "the file is not that model's; delete it to download it again"
        else:
            remedy = "fix or remove the metadata file"
        lines.append(f"The file's keys and shapes look like {detected.describe()}: {remedy}.")
    raise CheckpointError("\n".join(lines))


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model's state dict and its sidecar JSON, each atomically, as a pair.

    The state dict goes to ``path`` (a plain state dict, readable by :func:`load_model`
    and by ``torch.load(weights_only=True)``); the metadata goes to ``<stem>.json`` with
    ``model_type`` and ``config``, so compact project-trained models load without guessing.
    Each file is written to a temporary file in the same folder and renamed over the
    target, so a crash never leaves a half-written file under the final name.

    The two renames cannot be one, so the pair is tied instead: both files carry a
    ``weights_id`` (a digest of the weights and the metadata), and the weights file also
    carries the sidecar's text (in the state dict's ``_metadata``, which loading a state
    dict ignores). The weights are renamed first: a crash between the two renames leaves
    the new weights beside the old sidecar, which :func:`load_model` recognises as not
    theirs and replaces by the stored copy. Any crash thus leaves the old pair or the new
    one, never a silently mismatched one.

    Parameters
    ----------
    model : Sam
    path : str or path
        Target file, conventionally ``.pt`` or ``.pth``.
    metadata : mapping, optional
        JSON-serialisable extra information (training data, date, ...). Its
        ``model_type`` / ``config``, if given, must agree with the model.

    Returns
    -------
    Path of the checkpoint file.
    """
    path = Path(path).expanduser()
    if path.suffix == ".json":
        raise ValueError(f"{path}: a checkpoint needs a suffix other than .json (e.g. .pt)")
    state = OrderedDict((name, tensor.detach().cpu()) for name, tensor in model.state_dict().items())
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and config.get("encoder"):
        architecture = architecture_from_config(config)
    else:
        architecture = detect_architecture(state)

    weights_id = _weights_digest(state, sidecar_json(architecture, metadata))
    text = sidecar_json(architecture, metadata, weights_id=weights_id)
    state._metadata = OrderedDict([(PAIRING_KEY, {"weights_id": weights_id, "sidecar": text})])

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    atomic_write_bytes(metadata_path(path), text.encode("utf-8"))
    return path


def _weights_digest(state: Mapping[str, torch.Tensor], text: str) -> str:
    """sha256 (hex, first 32 digits) of every tensor's name, dtype, shape and bytes, and ``text``.

    Deterministic, so saving the same model twice writes the same files.
    """
    digest = hashlib.sha256(text.encode("utf-8"))
    for name, tensor in state.items():
        flat = tensor.detach().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:32]
