"""Checkpoints: named models, download with hash checks, safe reading, loading and saving.

One module per concern:

- :mod:`.registry`: the named models (:data:`MODELS`, :class:`ModelSpec`), their instance
  decoders (:data:`DECODERS`) and :func:`cache_dir`;
- :mod:`.download`: :func:`fetch_weights`, :func:`fetch_decoder` (pooch, sha256 or xxh128);
- :mod:`.reading`: :func:`read_state_dict` (``torch.load(weights_only=True)``, unwrapping);
- :mod:`.metadata`: the sidecar JSON (:func:`metadata_path`);
- :mod:`.architecture`: :class:`Architecture`, :func:`detect_architecture`;
- :mod:`.loading`: :func:`load_model`, :func:`save_model`;
- :mod:`.errors`: :class:`CheckpointError`, :class:`DownloadError`.

A pickle that would run code is refused, never executed. Everything that goes wrong with
a file raises :class:`CheckpointError` with a message naming the file and saying what to
do; a download that cannot reach its server raises :class:`DownloadError` with the exact
URL and the path to put a manually downloaded copy at.
"""

from .architecture import Architecture, detect_architecture
from .download import fetch_decoder, fetch_weights
from .errors import CheckpointError, DownloadError
from .loading import load_model, save_model
from .metadata import metadata_path
from .reading import read_state_dict
from .registry import CACHE_ENV_VAR, DECODERS, MODELS, ModelSpec, cache_dir

__all__ = [
    "CACHE_ENV_VAR",
    "DECODERS",
    "MODELS",
    "Architecture",
    "CheckpointError",
    "DownloadError",
    "ModelSpec",
    "cache_dir",
    "detect_architecture",
    "fetch_decoder",
    "fetch_weights",
    "load_model",
    "metadata_path",
    "read_state_dict",
    "save_model",
]
