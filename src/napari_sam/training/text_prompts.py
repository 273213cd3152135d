"""What text prompts say during training: object kinds and the phrases for each.

Training draws a random phrase of an object's kind, so the learned projection answers a
neighbourhood of the sentence-embedding space rather than one vector. Some common
synonyms ("nuclei", "bacterium") are held out on purpose: they reach the right kind only
through the text encoder, which the tests check.
"""

from __future__ import annotations

import numpy as np
import torch

TRAINING_PHRASES: dict[str, tuple[str, ...]] = {
    "nucleus": ("nucleus", "cell nucleus", "nuclear stain", "dapi nucleus", "hoechst stained nucleus"),
    "cell": ("cell", "whole cell", "cell body", "cytoplasm", "round cell"),
    "elongated cell": ("elongated cell", "rod-shaped cell", "bacteria", "rod", "elongated bacterial cell"),
    "small spot": ("small spot", "spot", "punctum", "puncta", "foci", "small dot"),
}

HELD_OUT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "nucleus": ("nuclei",),
    "elongated cell": ("bacterium",),
}


class PhraseBank:
    """Sentence embeddings of every training phrase, computed once."""

    def __init__(self, phrases: dict[str, tuple[str, ...]] = TRAINING_PHRASES, device: torch.device | str = "cpu"):
        from ..inference.text import embed_text

        self.phrases = {kind: tuple(options) for kind, options in phrases.items()}
        self.vectors = {
            kind: torch.as_tensor(embed_text(list(options)), device=device) for kind, options in self.phrases.items()
        }

    def kinds(self) -> list[str]:
        return list(self.phrases)

    def sample(self, kinds: list[str], rng: np.random.Generator) -> torch.Tensor:
        """One random phrase embedding per entry of ``kinds``: ``(len(kinds), 384)``."""
        rows = []
        for kind in kinds:
            options = self.vectors[kind]
            rows.append(options[int(rng.integers(len(options)))])
        return torch.stack(rows)
