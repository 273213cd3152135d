"""Encoding: a plane -> :class:`Embedding`, and the one file format embeddings are stored in.

:func:`encode_plane` is the one way a plane becomes an embedding (``Predictor``, the
``EmbeddingStore`` cache and batch precomputation call it); :func:`encode_batch` is its
batched, gradient-capable form for the trainer. Both use only the
:class:`~napari_sam.model.family.ModelFamily` members ``prepare`` and ``encode``.

File format
-----------
``torch.save`` of a dict of tensors, str and int (loaded with ``weights_only=True``: an
embedding file is data, never code)::

    format "napari-sam-embedding", version 1, signature (JSON text, "null" for a standalone file),
    features (tensor, or dict / tuple of tensors, batch of 1), checksum (BLAKE2b of the
    feature bytes), original_size, input_size, image_size, model_id

The cache's entries and :meth:`Embedding.save` write the same format; reading verifies the
format, the checksum, the feature shapes and, when one is expected, the signature. Files
are written with :func:`napari_sam.files.atomic_write`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..imaging import DEFAULT_NORMALIZATION, Normalization, to_rgb_uint8
from ..model.family import Features, InputFrame, ModelFamily, model_id

__all__ = [
    "FORMAT", "FORMAT_VERSION", "Embedding", "EmbeddingFileError", "encode_batch", "encode_plane",
    "read_embedding", "write_embedding",
]

FORMAT = "napari-sam-embedding"
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called with (0, 1) before and (1, 1) after an encoder run."""


class EmbeddingFileError(ValueError):
    """An embedding file that cannot be used: truncated, corrupt, or for another signature."""


@dataclass(frozen=True)
class Embedding:
    """The encoder's output for one plane plus the geometry needed to decode against it.

    Attributes
    ----------
    features : Features of one image
        SAM: ``(1, 256, h, w)`` tensor; a multi-scale family: a dict or tuple of tensors.
    original_size : (H, W) of the plane.
    input_size : (h, w) of the plane resized for the model (before padding).
    image_size : side of the padded model input.
    model_id : identifies the model that made it (architecture name).
    """

    features: Features
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int
    model_id: str = ""

    @property
    def frame(self) -> InputFrame:
        return InputFrame(self.original_size, self.input_size, self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the feature tensors."""
        return sum(t.numel() * t.element_size() for t in _tensors(self.features))

    def to(self, device: torch.device | str) -> Embedding:
        return replace(self, features=_map(self.features, lambda t: t.to(device)))

    def save(self, path: str | os.PathLike, signature: Mapping | None = None) -> None:
        """Write atomically in the verified format (see the module docstring).

        ``signature``: what the embedding depends on (the cache's ``Signature.to_dict()``),
        checked again on load; None for a standalone file.
        """
        write_embedding(path, self, signature)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Embedding:
        """Read a file written by :meth:`save` (or by napari-sam <= 0.1's unverified format).

        Raises
        ------
        EmbeddingFileError (a ValueError)
            The file is not a readable, intact napari-sam embedding.
        """
        try:
            return read_embedding(path, legacy=True).to(device)
        except EmbeddingFileError as error:
            raise EmbeddingFileError(f"{path} is not a napari-sam embedding file: {error}") from None


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


@torch.inference_mode()
def encode_plane(
    model: ModelFamily,
    plane: np.ndarray,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> Embedding:
    """Embed one 2D plane: normalise to uint8 RGB, ``model.prepare``, ``model.encode``.

    Parameters
    ----------
    model : ModelFamily
    plane : (H, W), (H, W, 3) or (H, W, 4) array of any dtype
    normalization : Normalization
        How intensities become uint8 (:func:`napari_sam.imaging.to_rgb_uint8`).
    device : optional
        Where the returned features live; default the model's device.
    progress : callable(done, total), optional
        Called with ``(0, 1)`` before and ``(1, 1)`` after the encoder.
    """
    rgb = to_rgb_uint8(np.asarray(plane), normalization)
    inputs, frame = model.prepare(rgb)
    if progress is not None:
        progress(0, 1)
    features = model.encode(inputs)
    if progress is not None:
        progress(1, 1)
    embedding = Embedding(features, frame.original_size, frame.input_size, frame.image_size, model_id(model))
    return embedding if device is None else embedding.to(device)


def encode_batch(
    model: ModelFamily, images: Sequence[np.ndarray], *, grad: bool = False
) -> tuple[Features, list[InputFrame]]:
    """Embed several uint8 RGB images in one encoder call (the trainer's path).

    Parameters
    ----------
    model : ModelFamily
    images : sequence of B ``(H, W, 3)`` uint8 arrays, already normalised
    grad : bool
        Keep the autograd graph (to train the encoder); otherwise no gradients.

    Returns
    -------
    features : Features of B images on the model's device; frames : one InputFrame per image.
    """
    if len(images) == 0:
        raise ValueError("encode_batch needs at least one image")
    prepared = [model.prepare(np.asarray(image)) for image in images]
    inputs = torch.cat([tensor for tensor, _ in prepared])
    with torch.set_grad_enabled(grad):
        features = model.encode(inputs)
    return features, [frame for _, frame in prepared]


# --------------------------------------------------------------------------------------
# The file format
# --------------------------------------------------------------------------------------


def write_embedding(path: str | os.PathLike, embedding: Embedding, signature: Mapping | None = None) -> Path:
    """Write ``embedding`` to ``path`` (its folder must exist) atomically; returns the path."""
    features = _map(embedding.features, lambda t: t.detach().to("cpu").contiguous())
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "signature": _canonical(signature),
        "features": features,
        "checksum": _checksum(features),
        "original_size": [int(v) for v in embedding.original_size],
        "input_size": [int(v) for v in embedding.input_size],
        "image_size": int(embedding.image_size),
        "model_id": str(embedding.model_id),
    }
    return atomic_write(path, lambda stream: torch.save(payload, stream))


def read_embedding(path: str | os.PathLike, signature: Mapping | None = None, *, legacy: bool = False) -> Embedding:
    """Read and verify an embedding file; the features come back on the CPU.

    Parameters
    ----------
    path : the file.
    signature : mapping, optional
        The signature the file must have been written with (JSON-comparable).
    legacy : bool
        Also accept the unverified format of napari-sam <= 0.1's ``Embedding.save``
        (standalone files; never a cache entry).

    Raises
    ------
    EmbeddingFileError
        Unreadable (empty, truncated, garbage), another format or version, malformed,
        another signature, wrong feature shapes or a checksum mismatch.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # empty or truncated zip, garbage bytes, unpickling refused
        raise EmbeddingFileError(f"unreadable ({type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(payload, dict):
        raise EmbeddingFileError("not a napari-sam embedding")
    is_legacy = "format" not in payload and {"features", "original_size", "input_size"} <= payload.keys()
    if is_legacy and legacy and signature is None:
        return _embedding(payload)
    if payload.get("format") != FORMAT:
        raise EmbeddingFileError("not a napari-sam embedding")
    if payload.get("version") != FORMAT_VERSION:
        raise EmbeddingFileError(f"format version {payload.get('version')}, expected {FORMAT_VERSION}")
    embedding = _embedding(payload)
    stored = payload.get("signature")
    if signature is not None and stored != _canonical(signature):
        raise EmbeddingFileError(f"signature mismatch: stored {stored}, wanted {_canonical(signature)}")
    tensors = list(_tensors(embedding.features))
    if not tensors or any(t.ndim != 4 or t.shape[0] != 1 for t in tensors):
        raise EmbeddingFileError(f"features have the wrong shape {[tuple(t.shape) for t in tensors]}")
    if _checksum(embedding.features) != payload.get("checksum"):
        raise EmbeddingFileError("feature checksum mismatch (corrupt file)")
    try:
        stored_signature = json.loads(stored) if isinstance(stored, str) else None
    except ValueError:
        raise EmbeddingFileError("malformed signature") from None
    size = stored_signature.get("image_size") if isinstance(stored_signature, dict) else None
    if size is not None and size != embedding.image_size:
        raise EmbeddingFileError("image_size disagrees with the signature")
    return embedding


def _embedding(payload: dict) -> Embedding:
    try:
        return Embedding(
            features=payload["features"],
            original_size=tuple(int(v) for v in payload["original_size"]),
            input_size=tuple(int(v) for v in payload["input_size"]),
            image_size=int(payload["image_size"]),
            model_id=str(payload["model_id"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise EmbeddingFileError(f"malformed ({type(error).__name__}: {_first_line(error)})") from None


def _canonical(signature: Mapping | None) -> str:
    return json.dumps(None if signature is None else dict(signature), sort_keys=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else "no message"


def _tensors(features: Features) -> Iterator[torch.Tensor]:
    """The tensors of ``features`` in a fixed order (dict keys sorted)."""
    if isinstance(features, torch.Tensor):
        yield features
    elif isinstance(features, dict):
        for key in sorted(features):
            yield from _tensors(features[key])
    elif isinstance(features, (tuple, list)):
        for item in features:
            yield from _tensors(item)
    else:
        raise EmbeddingFileError(f"features of type {type(features).__name__}")


def _map(features: Features, function: Callable[[torch.Tensor], torch.Tensor]) -> Features:
    if isinstance(features, torch.Tensor):
        return function(features)
    if isinstance(features, dict):
        return {key: _map(value, function) for key, value in features.items()}
    return tuple(_map(item, function) for item in features)


def _checksum(features: Features) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in _tensors(features):
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()
