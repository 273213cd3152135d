"""The model-family boundary: what inference and training need from a segmentation model.

A *model family* turns a plane into model input, encodes it once, and decodes prompts
against the features many times. SAM 1, MobileSAM and the default model implement it in
:class:`~napari_sam.model.sam.Sam`; SAM 2 implements it in ``model/sam2/``. Everything
above this line (``Predictor``, ``TiledPredictor``, ``EmbeddingStore``, the trainer) uses
only the members of :class:`ModelFamily`.

Frames
------
plane
    The normalised ``(H, W, 3)`` uint8 RGB plane, ``original_size = (H, W)``.
model input
    What the encoder sees: ``(1, 3, S, S)`` with ``S = image_size``. The plane resized to
    ``input_size = (h, w)`` and padded to the square; SAM keeps the aspect ratio (longest
    side ``S``), a family may stretch instead (``input_size == (S, S)``). Point and box
    prompts are ``xy`` in these pixels; :class:`InputFrame` records the geometry.
low-res
    Mask logits of ``low_res_size`` covering the padded square model input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch

__all__ = ["Features", "InputFrame", "ModelFamily", "model_id"]

Features = Union[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]
"""What :meth:`ModelFamily.encode` returns: one tensor (SAM: ``(B, 256, h, w)``) or, for a
family with multi-scale features (SAM 2), a dict or tuple of tensors, each with the batch
as its first dimension. Callers store it opaquely and give it back to ``decode``."""


@dataclass(frozen=True)
class InputFrame:
    """Where a plane sits in the model input.

    Attributes
    ----------
    original_size : (H, W)
        The plane, in pixels.
    input_size : (h, w)
        The plane resized for the model, before padding to ``image_size``.
    image_size : int
        Side ``S`` of the square model input.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int


@runtime_checkable
class ModelFamily(Protocol):
    """The members a model family provides (a ``torch.nn.Module`` in practice).

    Attributes
    ----------
    image_size : int
        Side ``S`` of the square model input, pixels.
    embedding_size : (h, w)
        The image-embedding grid (SAM 1024px: ``(64, 64)``).
    low_res_size : (4h, 4w)
        Size of the low-res logits ``decode`` returns and ``mask_inputs`` it takes.
    mask_threshold : float
        Logit above which a pixel is in the mask (0.0).
    supports_text : bool
        Whether ``decode`` accepts ``text_embeddings``.
    config : dict
        Describes the architecture; ``config["name"]`` identifies it (cache keys).
    metadata : dict
        From a checkpoint's sidecar (e.g. ``text_classes``); may be empty.
    device : torch.device
        Where the parameters live; ``prepare`` puts its tensor there.
    """

    @property
    def image_size(self) -> int: ...

    @property
    def embedding_size(self) -> tuple[int, int]: ...

    @property
    def low_res_size(self) -> tuple[int, int]: ...

    @property
    def supports_text(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    mask_threshold: float
    config: dict
    metadata: dict

    def prepare(self, rgb: np.ndarray) -> tuple[torch.Tensor, InputFrame]:
        """A normalised plane -> the encoder's input and its frame.

        Parameters
        ----------
        rgb : (H, W, 3) uint8
            The plane after :func:`napari_sam.imaging.to_rgb_uint8`.

        Returns
        -------
        inputs : (1, 3, S, S) float32 on :attr:`device`
            Resized, normalised with the family's pixel statistics, padded.
        frame : InputFrame
        """
        ...

    def encode(self, inputs: torch.Tensor) -> Features:
        """``(B, 3, S, S)`` from :meth:`prepare` (concatenated) -> :data:`Features` of B images.

        Runs under the caller's grad mode (inference callers use ``torch.inference_mode``;
        the trainer may need gradients).
        """
        ...

    def decode(
        self,
        features: Features,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
        text_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in model-input ``xy`` -> low-res logits and predicted IoU.

        Parameters
        ----------
        features : Features of 1 image (shared by all B prompts) or of B images.
        point_coords : (B, N, 2) float xy in model-input pixels; point_labels : (B, N)
            1 positive, 0 negative, -1 padding.
        boxes : (B, 4) float xyxy in model-input pixels.
        mask_inputs : (B, 1, *low_res_size) logits from an earlier decode.
        multimask : bool
            Three candidates instead of one.
        text_embeddings : (B, text_dim), only when :attr:`supports_text`.

        Returns
        -------
        low_res_logits : (B, K, *low_res_size); iou : (B, K), K = 3 or 1.
        """
        ...

    def state_dict(self) -> Mapping[str, Any]:
        """Named tensors that determine the features (hashed into cache keys)."""
        ...

    def eval(self) -> ModelFamily:
        """Inference mode (dropout off); returns self."""
        ...


def model_id(model: ModelFamily) -> str:
    """The architecture name a model's embeddings and cache entries are tagged with."""
    return str(model.config.get("name", ""))
