"""DiskPredictor: the tiny model's encoder and a decoder that answers a disk (annotation tests)."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam.inference import transforms
from napari_sam.inference.predictor import Predictor
from napari_sam.inference.prompts import Prompts


class DiskPredictor(Predictor):
    """The tiny model's encoder, and a decoder that answers a disk around the prompt.

    The disk (``radius`` model-input pixels) is centred on the first positive point, else
    the box centre, else the model input's centre (text alone); candidates are ranked
    0.9, 0.8, 0.7, each wider than the one before. Every decoded ``Prompts`` is recorded in ``calls`` (in the frame of
    the tile decoded).
    """

    def __init__(self, model, radius: float = 6.0):
        super().__init__(model)
        self.radius = radius
        self.calls = []

    def _decode(self, embedding, prompts, multimask):
        self.calls.append(prompts)
        size = embedding.image_size
        if prompts.points is not None and prompts.point_labels.any():
            centre = transforms.points_rc_to_model_xy(prompts.points[prompts.point_labels == 1][:1],
                                                      embedding.original_size, size)[0]
        elif prompts.box is not None:
            x0, y0, x1, y1 = transforms.boxes_rc_to_model_xyxy(prompts.box, embedding.original_size, size)
            centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        else:
            centre = (size / 2, size / 2)
        low = self.model.low_res_size
        ys, xs = np.mgrid[: low[0], : low[1]] * (size / low[0]) + size / low[0] / 2
        distance = np.hypot(xs - centre[0], ys - centre[1])
        count = 3 if multimask else 1
        # Candidates differ: the k-th disk is 3k model-input pixels wider.
        logits = np.stack([np.where(distance <= self.radius + 3 * k, 8.0, -8.0) for k in range(count)])
        return torch.from_numpy(logits.astype(np.float32))[None], torch.linspace(0.9, 0.7, count)[None]

    def predict_boxes(self, boxes):  # the real one calls the model's batched decoder directly
        if len(boxes) and isinstance(boxes[0], Prompts):  # validated already (TiledPredictor)
            return [self.predict(prompts=prompts, multimask=False) for prompts in boxes]
        return [self.predict(box=box, multimask=False) for box in np.asarray(boxes).reshape(-1, 4)]
