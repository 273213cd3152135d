"""Predictor: embed a plane once, then turn prompts into ranked masks quickly.

The documented entry point: a plane larger than the model input goes through native-resolution
tiles (:class:`~.tiling.TiledPredictor`, the path of the napari widget and ``napari-sam
segment``), so every path gives the same masks; the whole plane resized to the model input
only when asked (``mode="whole"``).
"""

from __future__ import annotations

import copy
import warnings
from collections import deque
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
    from .embeddings import EmbeddingStore, Progress
    from .tiling import Tile, TiledPredictor

MODES = ("tiles", "whole")
# How many earlier tiled results a raw ``mask_input`` array is recognised from (their frame).
_REMEMBERED_RESULTS = 8

# Cosine similarity (MiniLM space) below which a text is reported as unknown to the model.
TEXT_SIMILARITY_WARNING = 0.5


def _is_plane(image) -> bool:
    """Whether ``image`` (numpy or lazy, not read) has the shape and dtype of a plane the
    normaliser takes: ``(H, W)`` or ``(H, W, 1|3|4)``, not empty, numeric."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None or dtype is None:
        return False
    shape = tuple(shape)
    return ((len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))) and min(shape[:2]) >= 1
            and np.dtype(dtype).kind in "biuf")


RANKINGS = ("iou", "iou+stability")
#: The ranking of a model by its sidecar's ``"name"`` when the sidecar gives no ``"ranking"``
#: (docs/models.md, "Ranking"; default-broad's sidecar says it); every other model ranks by
#: predicted IoU, as SAM does.
RANKING_PRESETS = {"default": "iou+stability"}
STABILITY_OFFSET = 1.0  # logits, SAM's stability_score_offset


def stability_scores(logits: torch.Tensor, threshold: float = 0.0, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """SAM's stability score of each mask: the IoU of the masks thresholded at
    ``threshold + offset`` and ``threshold - offset``; ``(K, h, w)`` -> ``(K,)`` float32
    (0 for a mask empty at the lower threshold)."""
    high = (logits > threshold + offset).flatten(1).sum(1)
    low = (logits > threshold - offset).flatten(1).sum(1)
    return torch.where(low > 0, high.float() / low.clamp(min=1).float(), torch.zeros_like(high, dtype=torch.float))


def ranking_keys(model: ModelFamily, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """What candidates are ranked by: the predicted IoU ``scores`` (K,), or, for a model
    whose sidecar says ``"ranking": "iou+stability"`` (or whose name has that preset in
    :data:`RANKING_PRESETS`), predicted IoU + stability score of the low-res ``logits``
    (K, h, w) (docs/models.md: the default model's IoU head often ties a part of an object
    with the whole, and the whole is the stabler mask)."""
    metadata = getattr(model, "metadata", None) or {}
    ranking = metadata.get("ranking", RANKING_PRESETS.get(metadata.get("name"), "iou"))
    if ranking not in RANKINGS:
        raise ValueError(f"the model's sidecar has ranking {ranking!r}; expected one of {RANKINGS}")
    if ranking == "iou":
        return scores
    return scores.float() + stability_scores(logits.float(), float(model.mask_threshold)).to(scores.device)


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
        The tile whose model input the logits cover (a tiled plane), or None for the
        whole plane (a plane that fits the model input, or ``mode="whole"``).
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
    """Segment a 2D plane from point, box, mask and text prompts.

    >>> predictor = Predictor(load_model("default"))
    >>> predictor.set_image(plane)
    >>> candidates = predictor.predict(points=[(120, 80)])   # (row, col)
    >>> mask = candidates.best

    A plane larger than ``tile_size`` (default the model input) on either side is segmented
    in native-resolution tiles, exactly as the napari widget and ``napari-sam segment`` do:
    a tile around the prompts, every tile for text alone (see :mod:`.tiling`). A plane
    that fits is embedded whole. ``mode="whole"`` resizes any plane to the model input
    instead (SAM's behaviour; small objects of a large plane get lost).

    Parameters
    ----------
    model : ModelFamily
    normalization : Normalization
    mode : {"tiles", "whole"}
    store : EmbeddingStore, optional
        Embedding cache (memory, optional disk) of ``model`` and ``normalization``, used by
        :meth:`set_image` for tiles and whole planes; default: tiles in a memory-only
        store, whole planes not cached.
    tile_size, halo : int, optional
        Tiles of ``mode="tiles"``, defaults those of :class:`~.tiling.TiledPredictor`
        (the model input; ``tile_size // 8``), the widget's and the CLI's.

    Attributes
    ----------
    embedding : Embedding or None
        The current plane's embedding when it is embedded whole.
    tiled : TiledPredictor or None
        Over the current plane when it is tiled (e.g. ``predictor.tiled.precompute()``
        embeds every tile now instead of when a prompt first needs it).
    """

    def __init__(self, model: ModelFamily, normalization: Normalization = DEFAULT_NORMALIZATION, *,
                 mode: str = "tiles", store: EmbeddingStore | None = None, tile_size: int | None = None,
                 halo: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'tiles' (native-resolution tiles) or 'whole' (the plane resized "
                             f"to the model input), got {mode!r}")
        if mode == "whole" and (tile_size is not None or halo is not None):
            raise ValueError("tile_size and halo are for mode='tiles'")
        self.model = model.eval()
        self.normalization = normalization
        self.mode = mode
        if store is not None and (store.model is not model or store.normalization != normalization):
            raise ValueError("the store is for another model or normalisation: build it as "
                             "EmbeddingStore(model, normalization, ...)")
        self.store = store
        self.tile_size = int(tile_size if tile_size is not None else model.image_size)
        self.halo = halo
        if mode == "tiles":
            from .tiling import axis_split

            halo = self.tile_size // 8 if halo is None else int(halo)
            axis_split(self.tile_size + 1, self.tile_size, halo)  # refuse bad tiles now, not at set_image
        self.embedding: Embedding | None = None
        self.tiled: TiledPredictor | None = None
        self._tiler: TiledPredictor | None = None
        self._recent: deque = deque(maxlen=_REMEMBERED_RESULTS)  # (logits, frame) of tiled results

    @property
    def device(self) -> torch.device:
        return self.model.device

    def compute_embedding(self, image: np.ndarray) -> Embedding:
        """Embed a 2D plane (grayscale, RGB or RGBA, any dtype) whole, without making it current."""
        return encode_plane(self.model, image, self.normalization)

    def set_image(self, image) -> Embedding | None:
        """Make a 2D plane ``(H, W[, C])`` current (any dtype; numpy, or lazy for tiles).

        Returns
        -------
        Embedding or None
            The plane's embedding when it is embedded whole (it fits ``tile_size``, or
            ``mode="whole"``); None when it is tiled: each tile is read and embedded when a
            prompt first needs it (:attr:`tiled`).
        """
        self.tiled, self.embedding = None, None
        self._recent.clear()
        if not hasattr(image, "shape") or isinstance(image, torch.Tensor):  # lists, PIL images, CPU tensors
            image = np.asarray(image)
        if self.mode == "tiles" and _is_plane(image):  # anything else: the normaliser's error below
            tiler = self._tiled_predictor()
            tiler.set_plane(image)
            if len(tiler.grid) > 1:
                self.tiled = tiler
                return None
        image = np.asarray(image)
        embedding = self.compute_embedding(image) if self.store is None else self.store.get(image)
        return self.set_embedding(embedding)

    def set_embedding(self, embedding: Embedding) -> Embedding:
        """Use a precomputed (e.g. cached or loaded) whole-plane embedding as the current one."""
        if embedding.image_size != self.model.image_size:
            raise ValueError(
                f"embedding was made for a {embedding.image_size}px model input, "
                f"this model takes {self.model.image_size}px"
            )
        self.tiled = None
        self._recent.clear()
        self.embedding = embedding.to(self.device)
        return self.embedding

    def _tiled_predictor(self) -> TiledPredictor:
        """The tiler of ``mode="tiles"``, built once. It decodes each tile with a twin of
        this predictor (same class, model and state) that embeds whole: this one keeps the plane."""
        if self._tiler is None:
            from .tiling import TiledPredictor

            twin = copy.copy(self)
            twin.mode, twin.tiled, twin.embedding, twin._tiler = "whole", None, None, None
            twin._recent = deque(maxlen=_REMEMBERED_RESULTS)
            self._tiler = TiledPredictor(twin, self.store, tile_size=self.tile_size, halo=self.halo)
        return self._tiler

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
        progress: Progress | None = None,
    ) -> Candidates:
        """Segment one object of the current plane (or, for text alone, every object of a kind).

        Parameters
        ----------
        points : (N, 2) array-like of (row, col), optional
        point_labels : (N,) of 1 (positive) / 0 (negative); default all positive.
        box : (r0, c0, r1, c1), optional
        mask_input : MaskPrompt or (h, w) low-res logits, optional
            ``candidates.mask_prompt(i)`` of an earlier result (refines in the tile it came
            from, re-sampled if the new prompt needs another), or low-res logits over the
            whole plane. On a tiled plane, ``candidates.logits[i]`` of one of the last
            results of this predictor is recognised as that candidate's (its tile).
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
        progress : callable (done, total), optional
            Tiles embedded and decoded so far, for text alone on a tiled plane.

        Returns
        -------
        Candidates, sorted by predicted IoU, best first; masks ``(N, H, W)`` over the whole plane.
        """
        if self.tiled is not None:
            result = self.tiled.predict(points, point_labels, box, self._known_frame(mask_input), multimask, text,
                                        prompts=prompts, progress=progress)
            self._recent.append((result.logits, result.frame))
            return result
        embedding = self._require_embedding()
        prompts = self._prompts(embedding, prompts, points, point_labels, box, mask_input, text)
        if multimask is None:
            multimask = prompts.default_multimask()
        elif not isinstance(multimask, (bool, np.bool_)):  # "no" would be truthy
            raise TypeError(f"multimask must be True, False or None, got {multimask!r}")
        low_res, scores = self._decode(embedding, prompts, multimask)
        return self._rank(embedding, low_res[0], scores[0])

    def _known_frame(self, mask_input):
        """A raw logits array taken from a recent tiled result, as a mask prompt in its tile."""
        if not isinstance(mask_input, np.ndarray):
            return mask_input
        for logits, frame in reversed(self._recent):
            if np.may_share_memory(mask_input, logits) and mask_input.shape[-2:] == logits.shape[-2:]:
                return MaskPrompt(np.asarray(mask_input, np.float32).reshape(1, *logits.shape[-2:]), frame)
        return mask_input

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
        box-only :class:`Prompts` built for this plane (trusted). On a tiled plane, boxes
        that one tile holds are decoded in one batch per tile (``TiledPredictor.predict_boxes``).
        """
        if self.tiled is not None:
            if len(boxes) and all(isinstance(box, Prompts) for box in boxes):
                boxes = [box.box for box in boxes]
            results = self.tiled.predict_boxes(boxes)
            self._recent.extend((result.logits, result.frame) for result in results)
            return results
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
        """``low_res (K, h, w)``, ``scores (K,)`` -> Candidates at plane resolution, best first
        (by :func:`ranking_keys`)."""
        order = torch.argsort(ranking_keys(self.model, low_res, scores), descending=True)
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
