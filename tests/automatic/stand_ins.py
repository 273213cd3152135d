"""Deterministic stand-ins for a model and an instance decoder, for exact tiling tests.

``ThresholdModel`` "embeds" a window as its thresholded first channel, padded to the model
input and never resized (tiles are at most the model input), and
``DistanceDecoder`` turns that into the three maps of a perfect decoder: foreground = the
bright pixels, centre distance = distance to the component's centroid / its largest,
boundary distance = 1 - distance to the background / its largest. Both see only the
window, so a component cut by a window edge gets wrong distances, exactly as a real
decoder lacks context there; a correct tiling never uses those pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from napari_sam.model.family import InputFrame


class ThresholdModel:
    """A ModelFamily stand-in (prepare / encode only) of input side ``image_size``."""

    mask_threshold = 0.0

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = image_size
        self.config = {"name": f"threshold-{image_size}"}
        self.metadata: dict = {}
        self.device = torch.device("cpu")
        self.encoded = 0
        self.decoded = 0

    def prepare(self, rgb: np.ndarray):
        height, width = rgb.shape[:2]
        if max(height, width) > self.image_size:
            raise ValueError(f"the stand-in does not resize: window {rgb.shape[:2]} > {self.image_size}")
        padded = np.zeros((1, 1, self.image_size, self.image_size), np.float32)
        padded[0, 0, :height, :width] = rgb[..., 0] > 127
        return torch.from_numpy(padded), InputFrame((height, width), (height, width), self.image_size)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        self.encoded += inputs.shape[0]
        return inputs.clone()

    def decode(self, features, point_coords=None, point_labels=None, boxes=None, mask_inputs=None,
               multimask=True, text_embeddings=None):
        """Each prompt's first point -> its bright component (logits +-10 at input resolution),
        three equal candidates scored 0.95, 0.9, 0.85; background -> an empty mask."""
        self.decoded += point_coords.shape[0]
        components, _ = ndimage.label(features[0, 0].numpy() > 0.5, structure=np.ones((3, 3), bool))
        logits = []
        for x, y in point_coords[:, 0].tolist():
            found = components[int(round(y)), int(round(x))]
            logits.append(np.where((components == found) & (found > 0), 10.0, -10.0))
        count = 3 if multimask else 1
        low_res = torch.from_numpy(np.stack(logits).astype(np.float32))[:, None].repeat(1, count, 1, 1)
        scores = torch.tensor([0.95, 0.9, 0.85][:count]).repeat(point_coords.shape[0], 1)
        return low_res, scores


class DistanceDecoder:
    """An InstanceDecoder stand-in: ``predict(features, frame) -> (3, H, W)`` exact maps."""

    conventions = "napari_sam"

    def predict(self, features: torch.Tensor, frame: InputFrame) -> torch.Tensor:
        h, w = frame.input_size
        fg = features[0, 0, :h, :w].numpy() > 0.5
        return torch.from_numpy(perfect_maps(fg))


def perfect_maps(foreground: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 maps of a perfect decoder for the components of ``foreground``."""
    components, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
    centre = np.ones(foreground.shape, np.float32)
    boundary = np.ones(foreground.shape, np.float32)
    inside = ndimage.distance_transform_edt(foreground)
    rows, cols = np.indices(foreground.shape)
    for index, found in enumerate(ndimage.find_objects(components), start=1):
        here = components[found] == index
        r, c = rows[found][here], cols[found][here]
        distance = np.hypot(r - r.mean(), c - c.mean())
        centre[found][here] = distance / max(distance.max(), 1e-6)
        depth = inside[found][here]
        boundary[found][here] = 1 - depth / depth.max()
    return np.stack([foreground.astype(np.float32), centre, boundary])


def discs(shape, centres, radius) -> np.ndarray:
    """uint16 image of bright discs and their exact labels (1..n in the order given)."""
    labels = np.zeros(shape, np.uint32)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    image = np.where(labels > 0, 1000, 100).astype(np.uint16)
    return image, labels
