"""Image embeddings during training: inference's encoder path, cached while the encoder is frozen."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch

from ..inference.encoding import encode_batch
from ..lru import ByteLRU, tensor_bytes


class Embedder:
    """Embeddings of model-input images, the frozen encoder's kept in a byte-bounded LRU.

    Images are already in the model-input frame, so the model family's ``prepare`` does
    not resize them; :func:`napari_sam.inference.encoding.encode_batch` is the one
    encoder call, with gradients when the encoder is trained.

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
        embedding, _ = encode_batch(self.sam, [image], grad=grad)
        if not grad and key is not None:
            self.cache.put(key, embedding)
        return embedding
