"""EmbeddingStore: image embeddings cached in memory (LRU) and on disk, with signatures.

An embedding is worth keeping: the encoder takes seconds per plane on a CPU, the decoder
milliseconds per prompt. The store answers ``get(plane)`` from, in this order, a memory
LRU sized in megabytes, a directory on disk, and finally the encoder.

Keys
----
Every entry is identified by a :class:`Signature`: a content hash of the plane's pixels
(shape, dtype and bytes), the model id and a hash of the model's weights, the
normalisation key, the encoder input size and, for a tile of a larger plane, the tile's
window ``(r0, c0, r1, c1)`` in the plane. Change any of them and the key changes.

Disk layout (a directory of small files)
----------------------------------------
::

    CACHE_DIR/
      <model id>-<first 12 hex of the weights hash>/
        <key[:2]>/<key>.pt      # one embedding, in the format of Embedding.save

Each file holds the full signature, the features, their geometry and a checksum of the
feature bytes (:mod:`napari_sam.inference.encoding` defines the format). On read the
signature and checksum are verified: a stale, mismatched, empty, truncated or otherwise
corrupt entry is never used, it is recomputed and overwritten. Files are written with
:func:`napari_sam.files.atomic_write`, so a killed process leaves either the old entry,
the new entry, or a stray ``.*.tmp`` file that is never read.

A precomputation (``napari-sam embed``) that was interrupted resumes by skipping the
entries that are already present and valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import clean_stale_temporaries
from ..imaging import DEFAULT_NORMALIZATION, Normalization
from ..lru import ByteLRU
from ..model.family import ModelFamily, model_id
from .encoding import (
    FORMAT, FORMAT_VERSION, Embedding, EmbeddingFileError, Progress, encode_plane, read_embedding, write_embedding,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "EmbeddingStore", "Signature", "content_hash", "weights_hash"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------


def content_hash(array: np.ndarray) -> str:
    """Hex digest of an array's shape, dtype and pixel values (BLAKE2b, 128 bit).

    Memory layout does not matter: a strided view hashes like its contiguous copy.
    Hashing runs at roughly 1 GB/s, i.e. ~0.2 s for a 10k x 10k uint16 plane.
    """
    array = np.asarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.flags.c_contiguous or array.ndim == 0:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    else:
        # Row by row: never a full contiguous copy of a large strided plane.
        for row in array:
            digest.update(np.ascontiguousarray(row).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


# Keyed weakly by the model; the value remembers the parameters' version counters so an
# in-place update (fine-tuning, load_state_dict) is noticed and the hash recomputed.
_WEIGHTS_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WEIGHTS_LOCK = threading.Lock()


def weights_hash(model: torch.nn.Module) -> str:
    """Hex digest (BLAKE2b, 128 bit) of a model's state dict: names, dtypes, shapes, values.

    Computed once per model (a few seconds for ViT-H) and remembered; recomputed only when
    a parameter or buffer was modified in place since.
    """
    tensors = list(model.state_dict().values())
    version = sum(t._version for t in tensors)  # bumped by every in-place write
    with _WEIGHTS_LOCK:
        cached = _WEIGHTS_HASHES.get(model)
        if cached is not None and cached[0] == version:
            return cached[1]
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(model.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(data.view(torch.uint8).numpy().data)
        value = digest.hexdigest()
        _WEIGHTS_HASHES[model] = (version, value)
        return value


# --------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """Everything an embedding depends on.

    Attributes
    ----------
    content : str
        :func:`content_hash` of the pixels embedded (the plane, or the tile's window).
    model_id : str
        Architecture name (``model.config["name"]``).
    weights : str
        :func:`weights_hash` of the model.
    normalization : str
        ``Normalization.key()`` of the store.
    image_size : int
        Side of the model input.
    tile : (r0, c0, r1, c1) or None
        The tile's window in plane pixels (end exclusive); None for a whole plane.
    """

    content: str
    model_id: str
    weights: str
    normalization: str
    image_size: int
    tile: tuple[int, int, int, int] | None = None

    def key(self) -> str:
        """A 32-hex-digit key, the entry's file name."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tile"] = None if self.tile is None else [int(v) for v in self.tile]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        tile = data.get("tile")
        return cls(
            content=str(data["content"]),
            model_id=str(data["model_id"]),
            weights=str(data["weights"]),
            normalization=str(data["normalization"]),
            image_size=int(data["image_size"]),
            tile=None if tile is None else tuple(int(v) for v in tile),
        )

    def folder(self) -> str:
        """Sub-folder of the cache for this model: ``<model id>-<weights[:12]>``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_id) or "model"
        return f"{safe}-{self.weights[:12]}"

    def with_tile(self, tile: tuple[int, int, int, int] | None) -> Signature:
        return Signature(self.content, self.model_id, self.weights, self.normalization, self.image_size,
                         None if tile is None else tuple(int(v) for v in tile))


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class EmbeddingStore:
    """Embeddings of one model and normalisation: memory LRU -> disk cache -> encoder.

    Thread-safe: a napari worker thread may compute while the GUI thread looks up.

    Parameters
    ----------
    model : ModelFamily
        The model whose embeddings are stored (its id and weights key the entries).
    normalization : Normalization
        How planes become uint8 RGB before encoding (part of the key).
    memory_mb : float
        Budget of the memory LRU, counted as the bytes of the features tensors
        (a 1024px SAM model: 4 MiB per embedding). 0 disables memory caching.
    cache_dir : path, optional
        Directory of the persistent cache (created when needed); None: memory only.
    encode : callable(plane) -> Embedding, optional
        Computes a missing embedding; default
        :func:`~napari_sam.inference.encoding.encode_plane` with ``model`` and ``normalization``.

    Attributes
    ----------
    encoder_calls : int
        How many times the encoder ran through this store.
    disk_hits, memory_hits : int
        Where lookups were answered from.
    rejected_entries : int
        Disk entries found stale, mismatched or corrupt (and so recomputed / ignored).
    write_failures : int
        Computed embeddings that could not be written to the disk cache (full or
        read-only disk ...); ``last_write_error`` says why, for the last one.

    Examples
    --------
    >>> predictor = Predictor(load_model("default"))
    >>> store = EmbeddingStore(predictor.model, predictor.normalization, cache_dir="~/sam-cache")
    >>> predictor.set_embedding(store.get(plane))
    """

    def __init__(self, model: ModelFamily, normalization: Normalization = DEFAULT_NORMALIZATION, *,
                 memory_mb: float = 1024, cache_dir=None,
                 encode: Callable[[np.ndarray], Embedding] | None = None) -> None:
        if memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0, got {memory_mb}")
        if not isinstance(model, ModelFamily):
            raise TypeError(f"EmbeddingStore takes the model, got a {type(model).__name__}: "
                            "EmbeddingStore(predictor.model, predictor.normalization, ...)")
        if not isinstance(normalization, Normalization):
            raise TypeError(f"normalization must be a Normalization, got {type(normalization).__name__}")
        self.model = model
        self.normalization = normalization
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.cache_dir is not None and self.cache_dir.is_dir():
            clean_stale_temporaries(self.cache_dir, recursive=True)  # leftovers of killed writes, older than an hour
        self._encode = encode or (lambda plane: encode_plane(model, plane, normalization))
        self.encoder_calls = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.rejected_entries = 0
        self.write_failures = 0
        self.last_write_error: str | None = None
        self._memory: ByteLRU[Embedding] = ByteLRU(int(memory_mb * 2**20), lambda embedding: embedding.nbytes)
        self._rejected: set[tuple[str, int, int]] = set()
        self._lock = threading.RLock()  # guards the counters and the rejected set
        self._compute_lock = threading.Lock()  # one encoder run at a time

    # ---- signatures -------------------------------------------------------------------

    def signature(self, plane: np.ndarray | None = None, *, content: str | None = None,
                  tile: tuple[int, int, int, int] | None = None) -> Signature:
        """The :class:`Signature` of ``plane`` (or of a precomputed ``content`` hash) for this model."""
        if content is None:
            if plane is None:
                raise ValueError("signature needs a plane or its content hash")
            content = content_hash(plane)
        return Signature(
            content=content,
            model_id=model_id(self.model),
            weights=weights_hash(self.model),
            normalization=self.normalization.key(),
            image_size=int(self.model.image_size),
            tile=None if tile is None else tuple(int(v) for v in tile),
        )

    def path(self, signature: Signature) -> Path | None:
        """Where the entry for ``signature`` lives on disk (None without a cache_dir)."""
        if self.cache_dir is None:
            return None
        key = signature.key()
        return self.cache_dir / signature.folder() / key[:2] / f"{key}.pt"

    # ---- the public API ---------------------------------------------------------------

    def get(self, plane: np.ndarray, *, progress: Progress | None = None,
            signature: Signature | None = None) -> Embedding:
        """The embedding of ``plane``: from memory, else disk, else computed (and cached).

        Parameters
        ----------
        plane : (H, W[, C]) array
            The pixels the encoder sees (a whole plane, or a tile's pixels).
        progress : callable(done, total), optional
            Called with ``(0, 1)`` before and ``(1, 1)`` after an encoder run.
        signature : Signature, optional
            Precomputed key (tiles pass the whole plane's hash plus their window); by
            default the signature of ``plane`` itself.
        """
        if signature is None:
            plane = np.asarray(plane)  # a lazy plane is read once, for the hash and the encoder
            signature = self.signature(plane)
        found = self._lookup(signature)
        if found is not None:
            return found
        with self._compute_lock:
            found = self._lookup(signature)  # another thread may have just computed it
            if found is not None:
                return found
            if progress is not None:
                progress(0, 1)
            embedding = self._compute(signature, plane)
            self._memory.put(signature.key(), embedding)
            if progress is not None:
                progress(1, 1)
            return embedding

    def lookup(self, plane: np.ndarray | None = None, *, signature: Signature | None = None) -> Embedding | None:
        """The cached embedding of ``plane`` (memory, then disk) or None; never computes."""
        if signature is None:
            signature = self.signature(plane)
        return self._lookup(signature)

    def ensure(self, plane: np.ndarray, *, signature: Signature | None = None) -> bool:
        """Make sure a valid disk entry exists, without filling the memory LRU.

        For precomputation: returns True when the encoder ran, False when a valid entry
        was already there. Needs a ``cache_dir``.
        """
        if self.cache_dir is None:
            raise ValueError("ensure() needs an EmbeddingStore with a cache_dir")
        if signature is None:
            signature = self.signature(plane)
        if self._read(signature) is not None:
            return False
        with self._compute_lock:
            if self._read(signature) is not None:
                return False
            self._compute(signature, plane)
            return True

    def clear_memory(self) -> None:
        """Forget every embedding held in memory (the disk cache stays)."""
        self._memory.clear()

    @property
    def memory_bytes(self) -> int:
        """Budget of the memory LRU in bytes; settable (a smaller budget applies from the next put)."""
        return int(self._memory.max_bytes)

    @memory_bytes.setter
    def memory_bytes(self, value: int) -> None:
        self._memory.max_bytes = int(value)

    @property
    def memory_used_mb(self) -> float:
        return self._memory.used_bytes / 2**20

    # ---- memory, encoder, disk --------------------------------------------------------

    def _lookup(self, signature: Signature) -> Embedding | None:
        key = signature.key()
        embedding = self._memory.get(key)
        if embedding is not None:
            with self._lock:
                self.memory_hits += 1
            return embedding
        embedding = self._read(signature)
        if embedding is not None:
            with self._lock:
                self.disk_hits += 1
            self._memory.put(key, embedding)
        return embedding

    def _compute(self, signature: Signature, plane: np.ndarray) -> Embedding:
        """Run the encoder (caller holds the compute lock) and write the disk entry."""
        embedding = self._encode(np.asarray(plane))
        with self._lock:
            self.encoder_calls += 1
        path = self.path(signature)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_embedding(path, embedding, signature.to_dict())
            except OSError as error:  # a full or read-only disk must not stop segmentation
                log.warning("could not write cache entry %s: %s", path, error)
                with self._lock:  # counted, so that a batch run can say nothing was stored
                    self.write_failures += 1
                    self.last_write_error = f"{path}: {error}"
        return embedding

    def _read(self, signature: Signature) -> Embedding | None:
        path = self.path(signature)
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        identity = (str(path), stat.st_mtime_ns, stat.st_size)
        if identity in self._rejected:  # already found bad; do not warn twice
            return None
        try:
            return read_embedding(path, signature.to_dict())
        except EmbeddingFileError as error:
            with self._lock:
                self.rejected_entries += 1
                self._rejected.add(identity)
            log.warning("ignoring cache entry %s (will be recomputed): %s", path, error)
            return None
