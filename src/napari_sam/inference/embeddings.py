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
        <key[:2]>/<key>.pt      # one embedding: torch.save of a dict of tensors and str/int

Each file holds the full signature, the features, their geometry and a checksum of the
feature bytes. On read the signature and checksum are verified: a stale, mismatched,
truncated or otherwise corrupt entry is never used, it is recomputed and overwritten.
Files are written to a temporary name in the same folder and renamed with
``os.replace``, so a killed process leaves either the old entry, the new entry, or a
stray ``.*.tmp`` file that is never read. Files are loaded with
``torch.load(weights_only=True)``: a cache entry is data, never code.

A precomputation (``napari-sam embed``) that was interrupted resumes by skipping the
entries that are already present and valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .predictor import Embedding, Predictor

__all__ = ["FORMAT", "FORMAT_VERSION", "EmbeddingStore", "Signature", "content_hash", "weights_hash"]

log = logging.getLogger(__name__)

FORMAT = "napari-sam-embedding"
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called before (0, n) and after (n, n) each encoder run."""


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
        ``Normalization.key()`` of the predictor.
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


class CacheEntryError(ValueError):
    """A cache file that cannot be used: truncated, corrupt, or for another signature."""


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class EmbeddingStore:
    """Embeddings of one predictor's model: memory LRU -> disk cache -> encoder.

    Thread-safe: a napari worker thread may compute while the GUI thread looks up.

    Parameters
    ----------
    predictor : Predictor
        Its model and normalisation make the embeddings.
    memory_mb : float
        Budget of the memory LRU, counted as the bytes of the features tensors
        (a 1024px SAM model: 4 MiB per embedding). 0 disables memory caching.
    cache_dir : path, optional
        Directory of the persistent cache (created when needed); None: memory only.

    Attributes
    ----------
    encoder_calls : int
        How many times the encoder ran through this store.
    disk_hits, memory_hits : int
        Where lookups were answered from.
    rejected_entries : int
        Disk entries found stale, mismatched or corrupt (and so recomputed / ignored).

    Examples
    --------
    >>> store = EmbeddingStore(Predictor(load_model("default")), cache_dir="~/sam-cache")
    >>> store.predictor.set_embedding(store.get(plane))
    """

    def __init__(self, predictor: Predictor, *, memory_mb: float = 1024, cache_dir=None) -> None:
        if memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0, got {memory_mb}")
        self.predictor = predictor
        self.memory_bytes = int(memory_mb * 2**20)
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.encoder_calls = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.rejected_entries = 0
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._memory_used = 0
        self._rejected: set[tuple[str, int, int]] = set()
        self._lock = threading.RLock()  # guards the LRU and the counters
        self._compute_lock = threading.Lock()  # one encoder run at a time

    # ---- signatures -------------------------------------------------------------------

    def signature(self, plane: np.ndarray | None = None, *, content: str | None = None,
                  tile: tuple[int, int, int, int] | None = None) -> Signature:
        """The :class:`Signature` of ``plane`` (or of a precomputed ``content`` hash) for this model."""
        if content is None:
            if plane is None:
                raise ValueError("signature needs a plane or its content hash")
            content = content_hash(plane)
        model = self.predictor.model
        return Signature(
            content=content,
            model_id=str(model.config.get("name", "")),
            weights=weights_hash(model),
            normalization=self.predictor.normalization.key(),
            image_size=int(model.image_size),
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
            embedding = self.predictor.compute_embedding(np.asarray(plane))
            with self._lock:
                self.encoder_calls += 1
            self._write(signature, embedding)
            self._remember(signature.key(), embedding)
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
            embedding = self.predictor.compute_embedding(np.asarray(plane))
            with self._lock:
                self.encoder_calls += 1
            self._write(signature, embedding)
            return True

    def clear_memory(self) -> None:
        """Forget every embedding held in memory (the disk cache stays)."""
        with self._lock:
            self._memory.clear()
            self._memory_used = 0

    @property
    def memory_used_mb(self) -> float:
        return self._memory_used / 2**20

    # ---- memory LRU -------------------------------------------------------------------

    def _lookup(self, signature: Signature) -> Embedding | None:
        key = signature.key()
        with self._lock:
            embedding = self._memory.get(key)
            if embedding is not None:
                self._memory.move_to_end(key)
                self.memory_hits += 1
                return embedding
        embedding = self._read(signature)
        if embedding is not None:
            with self._lock:
                self.disk_hits += 1
            self._remember(key, embedding)
        return embedding

    def _remember(self, key: str, embedding: Embedding) -> None:
        size = embedding.features.numel() * embedding.features.element_size()
        with self._lock:
            if size > self.memory_bytes:
                return
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_used -= old.features.numel() * old.features.element_size()
            self._memory[key] = embedding
            self._memory_used += size
            while self._memory_used > self.memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._memory_used -= dropped.features.numel() * dropped.features.element_size()

    # ---- disk -------------------------------------------------------------------------

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
            return read_entry(path, signature)
        except CacheEntryError as error:
            with self._lock:
                self.rejected_entries += 1
                self._rejected.add(identity)
            log.warning("ignoring cache entry %s (will be recomputed): %s", path, error)
            return None

    def _write(self, signature: Signature, embedding: Embedding) -> None:
        path = self.path(signature)
        if path is None:
            return
        try:
            write_entry(path, signature, embedding)
        except OSError as error:  # a full or read-only disk must not stop segmentation
            log.warning("could not write cache entry %s: %s", path, error)


def _features_checksum(features: torch.Tensor) -> str:
    data = features.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data.data, digest_size=16).hexdigest()


def write_entry(path: str | os.PathLike, signature: Signature, embedding: Embedding) -> None:
    """Write one cache entry atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = embedding.features.detach().to("cpu").contiguous()
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "signature": json.dumps(signature.to_dict(), sort_keys=True),
        "features": features,
        "checksum": _features_checksum(features),
        "original_size": [int(v) for v in embedding.original_size],
        "input_size": [int(v) for v in embedding.input_size],
        "image_size": int(embedding.image_size),
        "model_id": str(embedding.model_id),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: str | os.PathLike, signature: Signature | None = None) -> Embedding:
    """Read and verify one cache entry; raise :class:`CacheEntryError` if it is unusable.

    Verifies the format, the signature (when given), the feature checksum and the
    geometry. The features come back on the CPU.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, garbage bytes, unpickling refused
        raise CacheEntryError(f"unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CacheEntryError("not a napari-sam embedding entry")
    if payload.get("version") != FORMAT_VERSION:
        raise CacheEntryError(f"format version {payload.get('version')}, expected {FORMAT_VERSION}")
    try:
        stored = Signature.from_dict(json.loads(payload["signature"]))
        features = payload["features"]
        embedding = Embedding(
            features=features,
            original_size=tuple(int(v) for v in payload["original_size"]),
            input_size=tuple(int(v) for v in payload["input_size"]),
            image_size=int(payload["image_size"]),
            model_id=str(payload["model_id"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CacheEntryError(f"malformed entry: {error}") from None
    if signature is not None and stored != signature:
        raise CacheEntryError(f"signature mismatch: stored {stored}, wanted {signature}")
    if not isinstance(features, torch.Tensor) or features.ndim != 4 or features.shape[0] != 1:
        raise CacheEntryError(f"features have the wrong shape {getattr(features, 'shape', None)}")
    if _features_checksum(features) != payload.get("checksum"):
        raise CacheEntryError("feature checksum mismatch (corrupt file)")
    if embedding.image_size != stored.image_size:
        raise CacheEntryError("image_size disagrees with the signature")
    return embedding
