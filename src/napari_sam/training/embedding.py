"""Image embeddings during training: inference's encoder path, cached while the encoder is frozen."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch

from ..lru import ByteLRU, tensor_bytes


def encode_input(sam: torch.nn.Module, image: np.ndarray, grad: bool) -> torch.Tensor:
    """``(1, C, h, w)`` embedding of a ``(h, w, 3)`` uint8 model-input image.

    The model family's ``prepare`` (no resize: the image is already in the model-input
    frame) and ``encode``, under ``grad``; the one place the trainer runs the encoder.
    """
    inputs, _ = sam.prepare(image)
    with torch.set_grad_enabled(grad):
        return sam.encode(inputs)


class Embedder:
    """Embeddings of model-input images, the frozen encoder's kept in a byte-bounded LRU.

    Parameters
    ----------
    sam : Sam
    max_bytes : int
        Memory for cached embeddings.
    """

    def __init__(self, sam: torch.nn.Module, max_bytes: int) -> None:
        self.sam = sam
        self.cache: ByteLRU[torch.Tensor] = ByteLRU(max_bytes, tensor_bytes)

    def __call__(self, image: np.ndarray, key: Hashable | None, grad: bool) -> torch.Tensor:
        """The embedding of ``image``; with ``grad`` it keeps the graph and is never cached,
        without it ``key`` (``None``: not cacheable) names the image in the cache."""
        if not grad and key is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        embedding = encode_input(self.sam, image, grad)
        if not grad and key is not None:
            self.cache.put(key, embedding)
        return embedding
