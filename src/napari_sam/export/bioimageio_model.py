"""The torch module a BioImage.IO model package names as its architecture.

A consumer (``bioimageio.core``, or any tool that reads the package's ``rdf.yaml``) builds
:class:`BioimageioSam` from the ``kwargs`` in the package, loads ``weights.pt`` into it and
calls it with the package's input tensors. Inside, it is exactly the plugin's path:
:class:`napari_sam.Predictor` (the one normaliser, the one resize, the one prompt mapping).

Tensors (the axes the package declares)::

    image        (1, 3, H, W)  float32  RGB, any range; grayscale repeated to 3 channels
    points       (1, N, 2)     float32  (row, col) in image pixels
    point_labels (1, N)        int64    1 positive, 0 negative
    box          (1, 4)        float32  (r0, c0, r1, c1), optional
    -> masks     (1, 3, H, W)  uint8    three candidate masks (0/1), best first
    -> scores    (1, 3)        float32  predicted IoU of each candidate
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: Number of candidate masks the package's outputs carry (SAM's multimask output).
CANDIDATES = 3


class BioimageioSam(nn.Module):
    """Segment Anything as one call: image and prompts in, ranked candidate masks out.

    Parameters
    ----------
    config : dict
        The architecture, as ``model.config`` of a loaded model (``build_sam`` reads it).

    Notes
    -----
    The state dict is that of the SAM model under the prefix ``sam.`` (official key names
    after it), so ``weights.pt`` is a plain tensor dictionary (``weights_only=True``).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from ..model import build_sam

        self.sam = build_sam(dict(config))

    @classmethod
    def wrapping(cls, sam: nn.Module) -> BioimageioSam:
        """Wrap an already built (e.g. loaded or fine-tuned) model without building another."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.sam = sam
        return module

    def forward(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment one object per image of the batch.

        Parameters
        ----------
        image : (B, 3, H, W) tensor
            RGB of any real dtype and range; normalised as the plugin does (uint8 as is,
            anything else from its 0.5 / 99.5 percentiles to 0..255).
        points : (B, N, 2) tensor
            (row, col) in image pixels.
        point_labels : (B, N) tensor
            1 positive, 0 negative.
        box : (B, 4) tensor, optional
            (r0, c0, r1, c1) in image pixels.

        Returns
        -------
        masks : (B, 3, H, W) uint8 tensor
            Candidate masks (1 inside), sorted by predicted IoU, best first.
        scores : (B, 3) float32 tensor
            Predicted IoU of each candidate.
        """
        from ..inference.predictor import Predictor
        from ..inference.transforms import box_meets_plane_rc, clip_to_plane_rc, inside_plane_rc

        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        shape = tuple(image.shape[-2:])
        predictor = Predictor(self.sam)
        masks, scores = [], []
        for index in range(image.shape[0]):
            # A tool that runs the model tile by tile passes every prompt to every tile:
            # prompts off this image are not for it (no prompt left: empty candidates).
            rc, labels = _numpy(points[index]).astype(np.float64), _numpy(point_labels[index]).astype(np.int64)
            keep = inside_plane_rc(rc, shape)
            rc, labels = rc[keep], labels[keep]
            corners = None if box is None else _numpy(box[index]).astype(np.float64)
            if corners is not None and box_meets_plane_rc(corners, shape):
                corners = clip_to_plane_rc(corners, shape)
            else:
                corners = None
            if len(rc) == 0 and corners is None:
                masks.append(torch.zeros((CANDIDATES, *shape), dtype=torch.uint8))
                scores.append(torch.zeros(CANDIDATES, dtype=torch.float32))
                continue
            predictor.set_image(image[index].permute(1, 2, 0).detach().cpu().numpy())
            candidates = predictor.predict(
                points=rc if len(rc) else None,
                point_labels=labels if len(rc) else None,
                box=corners,
                multimask=True,
            )
            masks.append(torch.from_numpy(candidates.masks.astype(np.uint8)))
            scores.append(torch.from_numpy(candidates.scores.astype(np.float32)))
        return torch.stack(masks).to(image.device), torch.stack(scores).to(image.device)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
