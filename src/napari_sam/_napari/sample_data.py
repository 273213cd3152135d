"""File > Open Sample > napari-sam: synthetic fluorescence nuclei with their true labels."""

from __future__ import annotations

import numpy as np

from ..synthetic import sample_nuclei

STACK_PLANES = 5


def nuclei_sample() -> list[tuple]:
    """A 256x256 image of nuclei and its exact instance labels (hidden)."""
    sample = sample_nuclei((256, 256), seed=0)
    return [
        (sample.image, {"name": "nuclei"}, "image"),
        (sample.labels, {"name": "nuclei ground truth", "visible": False}, "labels"),
    ]


def nuclei_stack_sample() -> list[tuple]:
    """A stack of five different 256x256 nuclei planes, to try slice-by-slice annotation."""
    samples = [sample_nuclei((256, 256), seed=seed) for seed in range(STACK_PLANES)]
    return [
        (np.stack([s.image for s in samples]), {"name": "nuclei stack"}, "image"),
        (np.stack([s.labels for s in samples]), {"name": "nuclei stack ground truth", "visible": False}, "labels"),
    ]
