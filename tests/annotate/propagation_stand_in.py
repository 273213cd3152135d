"""A deterministic stand-in model for propagation tests: it segments grey levels exactly.

Planes are label-like images (0 background, each object its own grey value). The
"embedding" is the plane itself; a prediction picks a grey value (under the first
positive point, else the most common one under the mask prompt, else inside the box) and
answers the connected pieces of that value touching the prompt, at plane resolution.
So a correct propagation reproduces the objects exactly, and one that jumps to a
neighbour (another grey value) is caught by the stop rules, not hidden by the model.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from napari_sam.inference import transforms
from napari_sam.inference.encoding import Embedding
from napari_sam.inference.predictor import Candidates, Predictor


class GreyLevelPredictor(Predictor):
    """Exact masks of grey-level objects; counts encoder runs in ``encoded``."""

    def __init__(self, model):
        super().__init__(model)
        self.encoded = 0
        self.decoded = 0

    def compute_embedding(self, image):
        self.encoded += 1
        plane = np.asarray(image, dtype=np.float32)
        size = self.model.image_size
        scale = size / max(plane.shape)
        input_size = (int(plane.shape[0] * scale + 0.5), int(plane.shape[1] * scale + 0.5))
        return Embedding(torch.from_numpy(plane.copy())[None, None], tuple(plane.shape), input_size, size, "grey")

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, multimask=None, text=None, *,
                prompts=None):
        self.decoded += 1
        embedding = self._require_embedding()
        prompts = self._prompts(embedding, prompts, points, point_labels, box, mask_input, text)
        plane = embedding.features[0, 0].numpy()
        shape = plane.shape
        touch = np.zeros(shape, bool)
        value = 0
        if prompts.points is not None and prompts.point_labels.any():
            rc = np.rint(prompts.points[prompts.point_labels == 1]).astype(int)
            rc = np.clip(rc, 0, np.array(shape) - 1)
            touch[rc[:, 0], rc[:, 1]] = True
            values = plane[touch]
            value = _mode(values)
        elif prompts.mask_input is not None:
            low = prompts.mask_input.logits_in((0, 0, *shape), shape)[0]
            mask = transforms.upscale_masks(torch.from_numpy(low)[None, None], embedding.input_size, shape,
                                            embedding.image_size)[0, 0].numpy()
            touch = mask
            value = _mode(plane[mask])
        if value == 0 and prompts.box is not None:
            r0, c0, r1, c1 = prompts.box
            inside = np.zeros(shape, bool)
            inside[int(np.ceil(r0)): int(np.floor(r1)) + 1, int(np.ceil(c0)): int(np.floor(c1)) + 1] = True
            touch = inside
            value = _mode(plane[inside])
        result = np.zeros(shape, bool)
        if value:
            pieces, _ = ndimage.label(plane == value)
            keep = np.unique(pieces[touch & (pieces > 0)])
            result = np.isin(pieces, keep[keep > 0])
        count = 3 if (multimask if multimask is not None else prompts.default_multimask()) else 1
        masks = np.repeat(result[None], count, axis=0)
        score = 0.95 if result.any() else 0.05
        logits = transforms.mask_to_low_res_logits(result, self.model.image_size, self.model.low_res_size)
        return Candidates(masks=masks, scores=np.full(count, score, np.float32),
                          logits=np.repeat(logits[None], count, axis=0).astype(np.float32))


def _mode(values: np.ndarray) -> int:
    values = values[values > 0].astype(np.int64)
    return int(np.bincount(values).argmax()) if len(values) else 0


def ball_stack(shape, objects) -> np.ndarray:
    """``(Z, H, W)`` uint16 labels of ellipsoids ``objects = [(label, (z, r, c), (rz, rr, rc)), ...]``."""
    z, r, c = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint16)
    for label, centre, radii in objects:
        inside = sum(((axis - m) / radius) ** 2 for axis, m, radius in zip((z, r, c), centre, radii)) <= 1
        labels[inside & (labels == 0)] = label
    return labels
