"""Sam: image encoder + prompt encoder + mask decoder, with the pixel statistics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.transforms import resize_rgb
from .family import InputFrame
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """The Segment Anything model; a :class:`~napari_sam.model.family.ModelFamily`.

    State-dict keys are those of the official checkpoints; the pixel statistics are
    non-persistent buffers, as there.
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.config: dict = {}  # set by build_sam; describes the architecture
        self.metadata: dict = {}  # set by load_model from a checkpoint's sidecar JSON

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return int(self.image_encoder.img_size)

    @property
    def supports_text(self) -> bool:
        return bool(self.prompt_encoder.text_dim)

    @property
    def embedding_size(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.image_embedding_size)

    @property
    def low_res_size(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.mask_input_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, 3, h, w)`` RGB in 0..255 and zero-pad to ``(B, 3, S, S)``."""
        x = (x - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    def prepare(self, rgb: np.ndarray) -> tuple[torch.Tensor, InputFrame]:
        """``(H, W, 3)`` uint8 plane -> model input ``(1, 3, S, S)`` on :attr:`device` and its frame.

        The longest side is resized to ``S`` (PIL bilinear, as the reference predictor),
        then :meth:`preprocess` normalises and pads.
        """
        resized = resize_rgb(rgb, self.image_size)
        tensor = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        frame = InputFrame(tuple(rgb.shape[:2]), tuple(resized.shape[:2]), self.image_size)
        return self.preprocess(tensor), frame

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(B, 3, S, S)`` -> image embeddings ``(B, 256, h, w)``."""
        return self.image_encoder(x)

    def decode(
        self,
        embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
        text_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode prompts against image embeddings.

        Parameters
        ----------
        embeddings : (1 or B, 256, h, w)
        point_coords : (B, N, 2) xy in model-input pixels; point_labels : (B, N)
            1 positive, 0 negative, -1 padding.
        boxes : (B, 4) xyxy in model-input pixels.
        mask_inputs : (B, 1, 4h, 4w) low-res logits.
        multimask : bool
            Three candidates (tokens 1..3) instead of one (token 0).
        text_embeddings : (B, text_dim) sentence embeddings, for models with a text path.

        Returns
        -------
        low_res_logits : (B, K, 4h, 4w); iou_predictions : (B, K).
        """
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_coords given without point_labels")
            points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, text_embeddings)
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
