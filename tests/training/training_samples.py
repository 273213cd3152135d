"""Small training data for the tests: noisy discs, two-kind images, a recording trainer.

Everything runs on :data:`tiny.TINY_TRAINING` (64-pixel input, 8x8 embedding grid,
32-wide decoder), so each test takes seconds on a CPU.
"""

from __future__ import annotations

import numpy as np

from tiny import TINY_TRAINING, build_tiny


def tiny_sam(seed: int = 0, **extra):
    """A random :data:`tiny.TINY_TRAINING` model (``extra``: config additions, e.g. ``text_dim``)."""
    return build_tiny({**TINY_TRAINING, **extra}, seed=seed)


def disc_image(seed: int, size: int = 64, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Bright noisy discs (radius 6-11 px) on a dark background, with exact instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for label in range(1, count + 1):
        for _ in range(50):
            r = rng.uniform(6, 11)
            cy, cx = rng.uniform(r, size - r, size=2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if not (labels[disc] > 0).any():
                labels[disc] = label
                break
    image = np.where(labels > 0, 180.0, 40.0) + rng.normal(0, 15, (size, size))
    return image.astype(np.float32), labels


def disc_images(count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` disc images (seeds 0 ..) and their labels, as two lists."""
    images, labels = zip(*(disc_image(seed) for seed in range(count)))
    return list(images), list(labels)


def two_kind_samples(count: int = 2) -> list:
    """Generated images with nuclei and elongated cells, their kinds in ``Sample.classes``."""
    from napari_sam.imaging import to_rgb_uint8
    from napari_sam.synthetic import generate
    from napari_sam.training.data import Sample

    samples = []
    for seed in range(count):
        image = generate((64, 64), kinds=("nucleus", "elongated cell"), size_range=(8, 14), seed=seed)
        classes = {int(k): str(v) for k, v in image.classes.items()}
        samples.append(Sample(to_rgb_uint8(image.image), image.labels.astype(np.int64), f"kinds[{seed}]", classes))
    return samples


def recording_trainer(config, sam=None, samples=None):
    """A :class:`Trainer` on one disc image whose ``sam.decode`` records every call.

    Returns the trainer and the list of calls: dicts with ``points`` (points per prompt),
    ``labels``, ``box``, ``mask`` (the mask prompt), ``multimask`` and ``text``.
    """
    from napari_sam.training import Trainer
    from napari_sam.training.data import SampleSet, samples_from_arrays

    samples = samples if samples is not None else samples_from_arrays(*disc_image(0))
    trainer = Trainer(sam if sam is not None else tiny_sam(), config, SampleSet(samples, 64), samples)
    calls: list[dict] = []
    decode = trainer.sam.decode

    def recording(embeddings, point_coords=None, point_labels=None, boxes=None, mask_inputs=None, multimask=True,
                  text_embeddings=None):
        calls.append({
            "points": 0 if point_coords is None else point_coords.shape[1],
            "labels": None if point_labels is None else point_labels.clone(),
            "box": boxes is not None,
            "mask": mask_inputs,
            "multimask": multimask,
            "text": text_embeddings is not None,
        })
        return decode(embeddings, point_coords, point_labels, boxes, mask_inputs, multimask,
                      text_embeddings=text_embeddings)

    trainer.sam.decode = recording
    return trainer, calls
