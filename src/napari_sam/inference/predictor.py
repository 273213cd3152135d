"""Predictor: embed a plane once, then turn prompts into ranked masks quickly."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import transforms
from ..imaging import DEFAULT_NORMALIZATION, Normalization
from ..model.family import ModelFamily
from .encoding import Embedding, encode_plane
from .prompts import MaskPrompt, Prompts

if TYPE_CHECKING:
    from .tiling import Tile

# Cosine similarity (MiniLM space) below which a text is reported as unknown to the model.
TEXT_SIMILARITY_WARNING = 0.5


@dataclass(frozen=True)
class Candidates:
    """Candidate masks for one prompt, best first.

    Attributes
    ----------
    masks : (N, H, W) bool
    scores : (N,) float, the model's predicted IoU.
    logits : (N, h, w) float32, low-res logits in :attr:`frame` (refine with
        ``mask_input=candidates.mask_prompt(i)``).
    frame : Tile or None
        The tile whose model input the logits cover (``TiledPredictor``), or None for
        the whole plane (``Predictor``).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    frame: Tile | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def mask_prompt(self, index: int = 0) -> MaskPrompt:
        """Candidate ``index``'s logits as a mask prompt that knows its frame."""
        return MaskPrompt(np.asarray(self.logits[index], dtype=np.float32)[None], self.frame)

    @property
    def best(self) -> np.ndarray:
        """The top-ranked mask, (H, W) bool."""
        return self.masks[0]


class Predictor:
    """Segment a 2D plane from point, box and mask prompts.

    >>> predictor = Predictor(load_model("default"))
    >>> predictor.set_image(plane)
    >>> candidates = predictor.predict(points=[(120, 80)])   # (row, col)
    >>> mask = candidates.best
    """

    def __init__(self, model: ModelFamily, normalization: Normalization = DEFAULT_NORMALIZATION) -> None:
        self.model = model.eval()
        self.normalization = normalization
        self.embedding: Embedding | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def compute_embedding(self, image: np.ndarray) -> Embedding:
        """Embed a 2D plane (grayscale, RGB or RGBA, any dtype) without making it current."""
        return encode_plane(self.model, image, self.normalization)

    def set_image(self, image: np.ndarray) -> Embedding:
        """Embed a 2D plane and make it the current one; returns the :class:`Embedding`."""
        return self.set_embedding(self.compute_embedding(image))

    def set_embedding(self, embedding: Embedding) -> Embedding:
        """Use a precomputed (e.g. cached or loaded) embedding as the current one."""
        if embedding.image_size != self.model.image_size:
            raise ValueError(
                f"embedding was made for a {embedding.image_size}px model input, "
                f"this model takes {self.model.image_size}px"
            )
        self.embedding = embedding.to(self.device)
        return self.embedding

    def _require_embedding(self) -> Embedding:
        if self.embedding is None:
            raise RuntimeError("no image set: call set_image(image) or set_embedding(embedding) first")
        return self.embedding

    @torch.inference_mode()
    def predict(
        self,
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask: bool | None = None,
        text: str | None = None,
        *,
        prompts: Prompts | None = None,
    ) -> Candidates:
        """Segment one object of the current plane.

        Parameters
        ----------
        points : (N, 2) array-like of (row, col), optional
        point_labels : (N,) of 1 (positive) / 0 (negative); default all positive.
        box : (r0, c0, r1, c1), optional
        mask_input : MaskPrompt or (h, w) low-res logits, optional
            ``candidates.mask_prompt(i)`` of an earlier result (re-sampled if its frame
            is a tile), or low-res logits over the whole plane.
        multimask : bool, optional
            Three candidates instead of one. Default as SAM: three for a single point
            and no other prompt, one otherwise.
        text : str, optional
            The kind of object (models with a text path, e.g. the default model). Alone,
            it asks for every object of that kind as one mask; with a point or box, it
            says which object is meant.
        prompts : Prompts, optional
            Instead of the arguments above: prompts already validated for this plane
            (``Prompts.build``); they are not validated again.

        Returns
        -------
        Candidates, sorted by predicted IoU, best first.
        """
        embedding = self._require_embedding()
        prompts = self._prompts(embedding, prompts, points, point_labels, box, mask_input, text)
        if multimask is None:
            multimask = prompts.default_multimask()
        elif not isinstance(multimask, (bool, np.bool_)):  # "no" would be truthy
            raise TypeError(f"multimask must be True, False or None, got {multimask!r}")
        low_res, scores = self._decode(embedding, prompts, multimask)
        return self._rank(embedding, low_res[0], scores[0])

    def _prompts(self, embedding: Embedding, prompts: Prompts | None, *raw) -> Prompts:
        """The one validation of a prediction's prompts (or the check that ready ones fit)."""
        if prompts is None:
            return Prompts.build(embedding.original_size, self.model.low_res_size, *raw)
        if any(value is not None for value in raw):
            raise ValueError("give either prompts=Prompts(...) or points / box / mask_input / text, not both")
        if prompts.shape is not None and tuple(prompts.shape) != tuple(embedding.original_size):
            raise ValueError(
                f"prompts were built for a {prompts.shape[0]}x{prompts.shape[1]} plane, "
                f"the current plane is {embedding.original_size[0]}x{embedding.original_size[1]}"
            )
        return prompts

    @torch.inference_mode()
    def predict_boxes(self, boxes) -> list[Candidates]:
        """Segment one object per box in one batch.

        ``boxes``: ``(N, 4)`` array-like of (r0, c0, r1, c1), validated; or a sequence of
        box-only :class:`Prompts` built for this plane (trusted).
        """
        embedding = self._require_embedding()
        if len(boxes) and all(isinstance(box, Prompts) for box in boxes):
            boxes = np.stack([self._prompts(embedding, box).box for box in boxes])
        else:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            for box in boxes:
                Prompts.build(embedding.original_size, self.model.low_res_size, box=box)
        boxes_xyxy = transforms.boxes_rc_to_model_xyxy(
            boxes, embedding.original_size, embedding.image_size, embedding.input_size
        )
        low_res, scores = self.model.decode(
            embedding.features, boxes=torch.as_tensor(boxes_xyxy, dtype=torch.float32, device=self.device),
            multimask=False,
        )
        return [self._rank(embedding, low_res[i], scores[i]) for i in range(len(boxes))]

    def _decode(self, embedding: Embedding, prompts: Prompts, multimask: bool):
        device = self.device
        coords = labels = boxes = masks = text = None
        if prompts.points is not None:
            xy = transforms.points_rc_to_model_xy(
                prompts.points, embedding.original_size, embedding.image_size, embedding.input_size
            )
            coords = torch.as_tensor(xy, dtype=torch.float32, device=device)[None]
            labels = torch.as_tensor(prompts.point_labels, device=device)[None]
        if prompts.box is not None:
            xyxy = transforms.boxes_rc_to_model_xyxy(
                prompts.box, embedding.original_size, embedding.image_size, embedding.input_size
            )
            boxes = torch.as_tensor(xyxy, dtype=torch.float32, device=device)[None]
        if prompts.mask_input is not None:
            shape = embedding.original_size
            logits = prompts.mask_input.logits_in((0, 0, *shape), shape)
            masks = torch.as_tensor(logits, device=device)[None]
        if prompts.text is not None:
            # A copy: the cached sentence vector is read-only (torch warns on sharing it).
            text = torch.tensor(self._embed_text(prompts.text), device=device)[None]
        return self.model.decode(
            embedding.features, coords, labels, boxes, masks, multimask=multimask, text_embeddings=text
        )

    def _embed_text(self, text: str) -> np.ndarray:
        if not self.model.supports_text:
            raise ValueError(
                f"model {self.model.config.get('name', '')!r} has no text path (official SAM, MobileSAM and "
                "micro-sam checkpoints have none); use the default model or one fine-tuned with text"
            )
        from .text import embed_text

        vector = embed_text(text)
        known = self.model.metadata.get("text_classes") or {}
        if known:
            names = [name for synonyms in known.values() for name in synonyms]
            similarity = float(np.max(embed_text(names) @ vector))
            if similarity < TEXT_SIMILARITY_WARNING:
                warnings.warn(
                    f"text {text!r} is unlike anything this model was trained on "
                    f"({', '.join(sorted(known))}); the mask may be meaningless",
                    UserWarning,
                    stacklevel=4,
                )
        return vector

    def _rank(self, embedding: Embedding, low_res: torch.Tensor, scores: torch.Tensor) -> Candidates:
        """``low_res (K, h, w)``, ``scores (K,)`` -> Candidates at plane resolution, best first."""
        order = torch.argsort(scores, descending=True)
        low_res, scores = low_res[order], scores[order]
        masks = transforms.upscale_masks(
            low_res[None], embedding.input_size, embedding.original_size, embedding.image_size,
            self.model.mask_threshold,
        )[0]
        return Candidates(
            masks=masks.cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            logits=low_res.float().cpu().numpy(),
        )
