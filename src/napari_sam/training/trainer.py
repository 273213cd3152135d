"""Fine-tuning SAM with simulated interaction: :class:`TrainConfig`, :class:`Trainer`, :func:`finetune`.

One optimisation step takes one (augmented) image and up to ``objects_per_step`` of its
objects, batched through the decoder against one shared embedding, and runs the
``rounds``-round interaction of :mod:`.simulation` on them; every round's loss
(:func:`.losses.sam_loss`, averaged over rounds) is back-propagated, the mask fed to the
next round is detached, and the optimizer steps once per image. See ``docs/training.md``.

Losses are computed on the low-res logits (``sam.low_res_size``, 256 x 256 for the
official models), cropped to the unpadded image region, against each target mask
area-downsampled to that grid and thresholded at one half. SAM computes them on logits
upsampled to the input resolution; the low-res grid is 16 times cheaper, which matters on
a CPU, and is the grid the mask prompt is fed back on. Corrective clicks and validation
IoU use the full model-input resolution.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import data as data_mod
from .data import Augmentation, Prepared, Sample, SampleSet, Step, SyntheticSet
from .lora import TRAIN_MODES, configure_trainable, encoder_is_trained, merge_lora
from .losses import LossWeights, mask_iou, sam_loss
from .recipes import RECIPES
from .simulation import (
    jitter_boxes,
    make_schedule,
    object_boxes,
    sample_correction_points,
    sample_points_inside,
)

STATE_FORMAT = "napari-sam-train-state"
STATE_VERSION = 1


@dataclass
class TrainConfig:
    """Every hyper-parameter of a fine-tuning run; defaults follow SAM where it applies.

    Attributes
    ----------
    train : "decoder", "decoder+prompt", "lora" or "all"
        What is trained (see :mod:`.lora`).
    epochs : int
        Passes over every training object (synthetic data: ``synthetic_steps_per_epoch``
        images per epoch).
    lr, weight_decay, betas : AdamW settings (SAM: wd 0.1, betas 0.9 / 0.999).
    warmup_fraction, warmup_max_steps : linear warm-up over this fraction of all steps,
        at most this many steps (SAM: 250).
    schedule : "cosine" (to ``min_lr_ratio * lr``), "step" (x0.1 at 2/3 and 0.96 of the
        run, like SAM's drops) or "constant", after warm-up.
    grad_clip : float
        Clip the gradient norm to this; 0 disables.
    objects_per_step : int
        Objects of one image decoded together in a step (SAM: 64 per GPU).
    rounds : int
        Interaction rounds per object (SAM: 11).
    box_probability : float
        Chance that round 1 is a box instead of a point (drawn per step).
    box_noise, box_noise_max : box jitter std as a fraction of the side, at most this many
        pixels of a 1024-pixel input (scaled to the model's input size).
    focal_weight, dice_weight, iou_weight, focal_alpha, focal_gamma : loss (SAM: 20, 1, 1,
        0.25, 2).
    val_fraction : float
        Share of the images (one image: of its objects) used for validation.
    val_max_objects : int
        Objects per validation image at most.
    seed : int
        Every random choice derives from it.
    device : str or None
        See :func:`napari_sam.device.select_device`.
    flips, rotations, intensity, intensity_variants : augmentation (see
        :class:`.data.Augmentation`).
    min_object_pixels : int
        Objects smaller than this in the model-input frame are skipped.
    lora_rank, lora_alpha, lora_targets : LoRA settings; alpha defaults to the rank.
    cache_megabytes : int
        Memory for cached embeddings when the encoder is frozen.
    checkpoint_every : int
        Also write the training state every this many steps; 0: only after each epoch.
    synthetic_shape, synthetic_steps_per_epoch, synthetic_val_images : synthetic data.
    text_probability : float
        Share of steps that also train text prompts (needs a model with a text path and
        data with object kinds): the step's objects get their kind's phrase beside their
        points / boxes in every round, and each kind in the image (plus one absent kind,
        whose target is empty) is segmented from text alone in two rounds, the second
        refining the first's mask.
    tile_large_planes : bool
        Planes larger than the model input are cut into input-sized crops at native
        resolution (:func:`.data.tile_samples`), as tiled inference sees them, after the
        train / validation split; off: every plane is shrunk to the input, as SAM does.
    text_focal_weight : float or None
        Focal weight of the text-only rounds (default: ``focal_weight``). Dice alone lets a
        text path that answers "nothing" everywhere drive its logits so negative that the
        sigmoid saturates and no gradient is left; the focal term keeps one.
    text_focal_alpha, text_focal_gamma : float or None
        The text-only rounds' focal alpha and gamma (default: ``focal_alpha``,
        ``focal_gamma``); 0.5 and 0 make the term plain (halved) binary cross-entropy, which
        does not favour the background as SAM's 0.25 does when a kind is hard to tell apart.
    kind_weight : float
        Weight of an auxiliary loss that keeps object kinds in the image embedding, for
        text alone (needs ``train="all"`` and text, ``text_probability > 0``): a temporary
        linear head on the embedding names the kind of each embedding cell (background or
        one of the text kinds; :func:`.data.patch_kinds`), cross-entropy. SAM's decoder
        has no attention among image positions, so the mask from a kind's name alone can
        follow the kind only where the embedding tells it; the head is not part of the
        saved model. 0: off.
    loss_resolution : "low" or "input"
        Where the mask loss and the IoU head's target IoU are computed: on the low-res
        logit grid against area-downsampled targets (``"low"``; 4x coarser than the input for
        16-px patches as in SAM, 2x for the default model's 8-px patches),
        or on the logits bilinearly upsampled to the model input against the full-resolution
        masks (``"input"``, as predictions are used; teaches edges finer than a low-res
        pixel, which matters for objects only a few low-res pixels wide).
    """

    train: str = "decoder"
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    warmup_max_steps: int = 250
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    objects_per_step: int = 8
    rounds: int = 11
    box_probability: float = 0.5
    box_noise: float = 0.1
    box_noise_max: float = 20.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    val_fraction: float = 0.2
    val_max_objects: int = 64
    seed: int = 0
    device: str | None = None
    flips: bool = True
    rotations: bool = True
    intensity: float = 0.2
    intensity_variants: int = 2
    min_object_pixels: int = 10
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ("qkv",)
    cache_megabytes: int = 2048
    checkpoint_every: int = 0
    synthetic_shape: tuple[int, int] = (256, 256)
    synthetic_steps_per_epoch: int = 50
    synthetic_val_images: int = 4
    text_probability: float = 0.0
    text_focal_weight: float | None = None
    text_focal_alpha: float | None = None
    text_focal_gamma: float | None = None
    tile_large_planes: bool = True
    loss_resolution: str = "low"
    kind_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {TRAIN_MODES}, got {self.train!r}")
        if self.loss_resolution not in ("low", "input"):
            raise ValueError(f"loss_resolution must be 'low' or 'input', got {self.loss_resolution!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        for name in ("epochs", "objects_per_step", "rounds", "lora_rank"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kind_weight < 0:
            raise ValueError(f"kind_weight must be >= 0, got {self.kind_weight}")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")
        self.betas = tuple(self.betas)
        self.lora_targets = tuple(self.lora_targets)
        self.synthetic_shape = tuple(self.synthetic_shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), for the training state and metadata JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named settings of :data:`RECIPES` (``"sam"``: the paper's, the defaults;
        ``"fast"``: the most gain per CPU-minute measured here), with ``overrides``."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
        return cls(**{**RECIPES[name], **overrides})

    def augmentation(self) -> Augmentation:
        return Augmentation(self.flips, self.rotations, self.intensity, self.intensity_variants)

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.focal_weight, self.dice_weight, self.iou_weight, self.focal_alpha, self.focal_gamma)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` / :func:`finetune` return.

    ``model`` is the best model (by validation score) with LoRA merged; ``history`` has
    ``train`` (one entry per step) and ``val`` (one per epoch); ``model_path`` is the
    saved model, if any.
    """

    model: torch.nn.Module
    history: dict[str, list[dict[str, Any]]]
    best: dict[str, Any] | None
    step: int
    total_steps: int
    cancelled: bool = False
    state_path: Path | None = None
    model_path: Path | None = None


# --- helpers ---------------------------------------------------------------------------


def _lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = min(config.warmup_max_steps, int(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "step":
            return 1.0 if progress < 2 / 3 else (0.1 if progress < 0.96 else 0.01)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _present_kinds(prepared: Prepared) -> list[str]:
    """The object kinds with at least one labelled object in ``prepared``, sorted."""
    return sorted({prepared.classes[int(i)] for i in np.unique(prepared.labels) if int(i) in prepared.classes})


def _kind_masks(prepared: Prepared, kinds: list[str]) -> np.ndarray:
    """``(len(kinds), h, w)`` bool: the union of each kind's objects (empty for an absent kind)."""
    return np.stack([
        np.isin(prepared.labels, [label for label, kind_of in prepared.classes.items() if kind_of == kind])
        for kind in kinds
    ])


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :class:`Trainer` (``weights_only=True``)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a napari-sam training state")
    return state


def _fingerprint(params: Sequence[torch.Tensor]) -> float:
    """A cheap checksum of the frozen weights: resume must start from the same base model."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() + p.detach().double().abs().sum().item() for p in params))


def _point_in_object(mask: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the object pixel farthest from the background (distance-transform max)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    distance = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(r) - 1 + int(rows[0]), int(c) - 1 + int(cols[0])


class _EmbeddingCache:
    """Least-recently-used embeddings, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[Any, torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: Any) -> torch.Tensor | None:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: Any, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        while self.items and self.bytes + size > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self.items[key] = value
        self.bytes += size


# --- trainer ---------------------------------------------------------------------------


class Trainer:
    """Runs a fine-tuning: steps, validation, checkpoints, resume, cancellation.

    Parameters
    ----------
    sam : Sam
        The base model; modified in place (frozen parts, LoRA layers, trained weights).
    config : TrainConfig
    train_set : SampleSet or SyntheticSet
    val_samples : list of Sample
        Never empty.
    state_path : path, optional
        Where the training state is written (atomically) after every epoch, every
        ``config.checkpoint_every`` steps and on cancellation; ``None``: nowhere.
    on_progress : callable(dict), optional
        Called with ``{"event": "step", "epoch", "step", "total_steps", "loss", "lr",
        "seconds"}`` after each step, ``{"event": "epoch", ..., "val": {...}}`` after each
        validation, and ``{"event": "cancelled" | "done", ...}`` at the end.
    cancel : threading.Event or callable() -> bool, optional
        Checked before every step; when set, the state is saved and :meth:`fit` returns.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        config: TrainConfig,
        train_set: SampleSet | SyntheticSet,
        val_samples: Sequence[Sample],
        state_path: str | os.PathLike | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> None:
        if not val_samples:
            raise ValueError("validation needs at least one sample")
        from ..device import select_device

        self.config = config
        self.device = select_device(config.device)
        self.sam = sam.to(self.device).eval()  # SAM has no dropout; TinyViT's BatchNorm stays frozen
        torch.manual_seed(config.seed)  # LoRA's initial weights
        frozen = [p for p in self.sam.parameters()]
        self.params = configure_trainable(
            self.sam, config.train, config.lora_rank, config.lora_alpha, config.lora_targets
        )
        trainable_ids = {id(p) for p in self.params}
        self.base_fingerprint = _fingerprint([p for p in frozen if id(p) not in trainable_ids])
        self.param_names = [n for n, p in self.sam.named_parameters() if p.requires_grad]
        self.encoder_trained = encoder_is_trained(config.train)
        self.train_set = train_set
        self.val_set = SampleSet(list(val_samples), self.sam.image_size, config.min_object_pixels)
        if self.val_set.object_count() == 0:
            raise ValueError(
                f"no validation object has at least {config.min_object_pixels} pixels at the model's input size"
            )
        self.augmentation = config.augmentation()
        self.weights = config.loss_weights()
        text_overrides = {"focal": config.text_focal_weight, "focal_alpha": config.text_focal_alpha,
                          "focal_gamma": config.text_focal_gamma}
        self.text_weights = dataclasses.replace(
            self.weights, **{name: value for name, value in text_overrides.items() if value is not None}
        )
        self.state_path = Path(state_path) if state_path is not None else None
        self.on_progress = on_progress
        self.cancel = cancel
        self.cache = _EmbeddingCache(int(config.cache_megabytes) * 2**20)
        self.phrases = None
        if config.text_probability > 0:
            if not getattr(self.sam, "supports_text", False):
                raise ValueError("text_probability > 0 needs a model with a text path (config text_dim)")
            from .text_prompts import PhraseBank

            self.phrases = PhraseBank(device=self.device)
        self.kind_head = None
        if config.kind_weight > 0:
            if self.phrases is None or not self.encoder_trained:
                raise ValueError("kind_weight > 0 needs text (text_probability > 0) and a trained encoder (train='all')")
            # One logit per text kind and one for background, on each embedding cell.
            self.kind_head = torch.nn.Conv2d(int(self.sam.prompt_encoder.embed_dim), len(self.phrases.kinds()) + 1, 1)
            self.kind_head.to(self.device)

        self.steps_per_epoch = max(1, train_set.steps_per_epoch(config.objects_per_step))
        self.total_steps = config.epochs * self.steps_per_epoch
        head_params = list(self.kind_head.parameters()) if self.kind_head is not None else []
        self.optimizer = torch.optim.AdamW(
            self.params + head_params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config, self.total_steps))
        self.step = 0
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
        self.best: dict[str, Any] | None = None
        self.best_params: dict[str, torch.Tensor] | None = None

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training state: only tensors, dicts, lists, numbers and strings."""
        named = dict(self.sam.named_parameters())
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "base_fingerprint": self.base_fingerprint,
            "trainable": {n: named[n].detach().cpu().clone() for n in self.param_names},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "total_steps": self.total_steps,
            "rng": {"torch": torch.get_rng_state()},
            "history": self.history,
            "best": self.best,
            "best_trainable": self.best_params,
            "kind_head": None if self.kind_head is None else {
                k: v.detach().cpu().clone() for k, v in self.kind_head.state_dict().items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state written by :meth:`state_dict` (same base model and data)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError("not a napari-sam training state")
        if set(state["trainable"]) != set(self.param_names):
            raise ValueError(
                "the training state trains other parameters than this run "
                f"(train={state['config'].get('train')!r} there, {self.config.train!r} here)"
            )
        if not math.isclose(state["base_fingerprint"], self.base_fingerprint, rel_tol=1e-9, abs_tol=1e-6):
            raise ValueError("the training state was made from another base model; resume with the same --base")
        named = dict(self.sam.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        if self.kind_head is not None:
            if state.get("kind_head") is None:
                raise ValueError("the training state has no kind head; resume with the same kind_weight")
            self.kind_head.load_state_dict(state["kind_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The LR follows this run's schedule, which differs from the saved one only when
        # the number of epochs was changed on resume.
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.step = int(state["step"])
        self.history = {"train": list(state["history"]["train"]), "val": list(state["history"]["val"])}
        self.best = state["best"]
        self.best_params = state["best_trainable"]
        torch.set_rng_state(state["rng"]["torch"])

    def save_state(self) -> None:
        if self.state_path is not None:
            atomic_torch_save(self.state_dict(), self.state_path)

    # -- embeddings -------------------------------------------------------------------

    def _embed(self, image: np.ndarray, key: Any, grad: bool) -> torch.Tensor:
        """``(1, 256, h, w)`` embedding of a ``(h, w, 3)`` uint8 model-input image."""
        if not grad:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        with torch.set_grad_enabled(grad):
            embedding = self.sam.encode(self.sam.preprocess(tensor))
        if not grad and key is not None:
            self.cache.put(key, embedding)
        return embedding

    # -- geometry ---------------------------------------------------------------------

    def _low_res_targets(self, masks: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, h, w)`` bool model-input masks -> ``(B, 1, lh, lw)`` float on the low-res
        grid, and the grid's unpadded extent ``(vh, vw)``."""
        size = self.sam.image_size
        low_h, low_w = self.sam.low_res_size
        tensor = torch.from_numpy(masks).to(self.device, torch.float32)[:, None]
        tensor = F.pad(tensor, (0, size - masks.shape[2], 0, size - masks.shape[1]))
        low = (F.interpolate(tensor, (low_h, low_w), mode="area") >= 0.5).float()
        valid = (math.ceil(masks.shape[1] * low_h / size), math.ceil(masks.shape[2] * low_w / size))
        return low, valid

    def _loss_targets(self, masks: np.ndarray) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Targets of ``(B, h, w)`` bool model-input masks for the loss, at
        ``config.loss_resolution``, and the function that brings low-res logits to them."""
        if self.config.loss_resolution == "input":
            shape = masks.shape[1:]
            targets = torch.from_numpy(masks).to(self.device, torch.float32)[:, None]
            return targets, lambda logits: self._masks_at_input(logits, shape)
        targets, (vh, vw) = self._low_res_targets(masks)
        return targets[..., :vh, :vw], lambda logits: logits[..., :vh, :vw]

    def _masks_at_input(self, low_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """``(B, K, lh, lw)`` logits -> ``(B, K, h, w)`` logits on the unpadded model input."""
        size = self.sam.image_size
        logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        return logits[..., : shape[0], : shape[1]]

    # -- one step ---------------------------------------------------------------------

    def train_step(self, step: Step, rng: np.random.Generator) -> dict[str, float] | None:
        """One optimisation step on some objects of one image; ``None`` if it has none."""
        config = self.config
        prepared = self.train_set.prepared(step.sample)
        ids = np.asarray(step.object_ids, np.int64)
        if ids.size == 0:
            ids = np.sort(rng.permutation(prepared.object_ids)[: config.objects_per_step])
        if ids.size == 0:
            return None
        variant = int(rng.integers(self.augmentation.count))
        augmented = self.augmentation.apply(prepared, variant, config.seed, step.sample)
        shape = augmented.labels.shape
        masks = augmented.labels[None] == ids[:, None, None]
        targets, at_targets = self._loss_targets(masks)
        batch = ids.size

        key = ("train", step.sample, variant) if self.train_set.cacheable else None
        embedding = self._embed(augmented.image, key, grad=self.encoder_trained)
        if self.encoder_trained:
            # Each round back-propagates into this leaf; the encoder runs backward once.
            encoder_output, embedding = embedding, embedding.detach().requires_grad_(True)

        text = None
        use_text = bool(self.phrases is not None and augmented.classes and rng.random() < config.text_probability)
        if use_text:
            kinds = [augmented.classes.get(int(i)) for i in ids]
            if all(kind in self.phrases.phrases for kind in kinds):
                text = self.phrases.sample(kinds, rng)

        first_is_box = bool(rng.random() < config.box_probability)
        schedule = make_schedule(rng, config.rounds, first_is_box)
        boxes = None
        coords = np.zeros((batch, 0, 2))
        labels = np.zeros((batch, 0), np.int64)
        if first_is_box:
            max_noise = config.box_noise_max * self.sam.image_size / 1024
            boxes = torch.as_tensor(
                jitter_boxes(object_boxes(masks), rng, shape, config.box_noise, max_noise),
                dtype=torch.float32, device=self.device,
            )
        else:
            coords = sample_points_inside(masks, rng)[:, None]
            labels = np.ones((batch, 1), np.int64)

        mask_input = None
        round_losses, first_mask_loss, last_mask_loss = [], 0.0, 0.0
        for round_ in schedule:
            if round_.new_point:
                predicted = (self._masks_at_input(mask_input, shape)[:, 0] > 0).cpu().numpy()
                new_points, new_labels = sample_correction_points(predicted, masks, rng)
                coords = np.concatenate([coords, new_points[:, None]], axis=1)
                labels = np.concatenate([labels, new_labels[:, None]], axis=1)
            point_coords = point_labels = None
            if coords.shape[1]:
                point_coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
                point_labels = torch.as_tensor(labels, device=self.device)
            logits, iou = self.sam.decode(
                embedding, point_coords, point_labels, boxes, mask_input, round_.multimask, text_embeddings=text
            )
            loss = sam_loss(at_targets(logits), iou, targets, self.weights)
            (loss.total / len(schedule)).backward()
            mask_input = logits[torch.arange(batch, device=logits.device), loss.best][:, None].detach()
            round_losses.append(float(loss.total.detach()))
            if round_.index == 0:
                first_mask_loss = float(loss.mask.detach())
            last_mask_loss = float(loss.mask.detach())

        text_only_loss = self._text_only_rounds(embedding, augmented, rng) if use_text else float("nan")
        kind_loss = self._kind_loss(embedding, augmented) if self.kind_head is not None else float("nan")

        if self.encoder_trained:
            encoder_output.backward(embedding.grad)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {
            "loss": float(np.mean(round_losses)),
            "first_round_mask_loss": first_mask_loss,
            "last_round_mask_loss": last_mask_loss,
            "objects": int(batch),
            "box_first": first_is_box,
            "text_only_loss": text_only_loss,
            "kind_loss": kind_loss,
        }

    def _text_only_rounds(self, embedding: torch.Tensor, prepared: Prepared, rng: np.random.Generator) -> float:
        """Segment every kind present (and one absent) from text alone; back-propagate.

        The target of a kind is the union of its objects; an absent kind's is empty, which
        teaches the model to say "none here" rather than segment whatever is there.
        """
        present = _present_kinds(prepared)
        kinds = [kind for kind in present if kind in self.phrases.phrases]
        absent = [kind for kind in self.phrases.kinds() if kind not in present]
        if absent:
            kinds.append(absent[int(rng.integers(len(absent)))])
        if not kinds:
            return float("nan")
        targets, at_targets = self._loss_targets(_kind_masks(prepared, kinds))
        text = self.phrases.sample(kinds, rng)
        mask_input, losses = None, []
        for _ in range(2):
            logits, iou = self.sam.decode(embedding, mask_inputs=mask_input, multimask=False, text_embeddings=text)
            loss = sam_loss(at_targets(logits), iou, targets, self.text_weights)
            (loss.total / 2).backward()
            mask_input = logits.detach()
            losses.append(float(loss.total.detach()))
        return float(np.mean(losses))

    def _kind_loss(self, embedding: torch.Tensor, prepared: Prepared) -> float:
        """The auxiliary kind loss (``config.kind_weight``) on one embedding; back-propagated."""
        if not prepared.classes:
            return float("nan")
        stride = self.sam.image_size // embedding.shape[-1]
        cells = data_mod.patch_kinds(prepared.labels, prepared.classes, self.phrases.kinds(), stride)
        if cells.size == 0:
            return float("nan")
        target = torch.from_numpy(cells).to(self.device)[None]
        logits = self.kind_head(embedding)[..., : cells.shape[0], : cells.shape[1]]
        loss = F.cross_entropy(logits, target)
        (self.config.kind_weight * loss).backward()
        return float(loss.detach())

    # -- validation -------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean IoU over validation objects from one point (the distance-transform maximum,
        top-ranked of 3 candidates) and from the tight box (single mask); ``score`` is
        their mean.

        When text is trained and the validation images have object kinds, also
        ``text_miou``: the mean IoU of the mask from a kind's name alone against the union
        of that kind's objects, over the kinds present in each image; ``score`` is then
        the mean of the three. ``text_miou_mixed`` is the same over images with two or more
        kinds only: in a one-kind image the kind's name asks for the whole foreground, which
        a model that cannot tell kinds apart also gets right.
        """
        point_ious, box_ious, text_ious, mixed_text_ious = [], [], [], []
        for index in range(len(self.val_set)):
            prepared: Prepared = self.val_set.prepared(index)
            ids = prepared.object_ids[: self.config.val_max_objects]
            if ids.size == 0:
                continue
            key = None if self.encoder_trained else ("val", index)
            embedding = self._embed(prepared.image, key, grad=False)
            shape = prepared.labels.shape
            for start in range(0, ids.size, 32):
                chunk = ids[start : start + 32]
                masks = prepared.labels[None] == chunk[:, None, None]
                target = torch.from_numpy(masks).to(self.device)
                points = np.array([_point_in_object(m)[::-1] for m in masks], np.float64)[:, None]
                logits, scores = self.sam.decode(
                    embedding,
                    torch.as_tensor(points, dtype=torch.float32, device=self.device),
                    torch.ones(chunk.size, 1, dtype=torch.int64, device=self.device),
                    multimask=True,
                )
                top = logits[torch.arange(chunk.size, device=logits.device), scores.argmax(dim=1)][:, None]
                point_ious += mask_iou(self._masks_at_input(top, shape), target).flatten().tolist()
                boxes = torch.as_tensor(object_boxes(masks), dtype=torch.float32, device=self.device)
                logits, _ = self.sam.decode(embedding, boxes=boxes, multimask=False)
                box_ious += mask_iou(self._masks_at_input(logits, shape), target).flatten().tolist()
            if self.phrases is not None and prepared.classes:
                ious = self._validate_text(embedding, prepared)
                text_ious += ious
                if len(ious) > 1:
                    mixed_text_ious += ious
        if not point_ious:
            raise ValueError("no validation object is large enough (min_object_pixels)")
        point, box = float(np.mean(point_ious)), float(np.mean(box_ious))
        result = {"point_miou": point, "box_miou": box, "score": (point + box) / 2, "objects": len(point_ious)}
        if text_ious:
            result["text_miou"] = float(np.mean(text_ious))
            result["score"] = (point + box + result["text_miou"]) / 3
        if mixed_text_ious:
            result["text_miou_mixed"] = float(np.mean(mixed_text_ious))
        return result

    def _validate_text(self, embedding: torch.Tensor, prepared: Prepared) -> list[float]:
        """IoU of the mask from each present kind's name alone with the union of its objects."""
        kinds = [kind for kind in _present_kinds(prepared) if kind in self.phrases.phrases]
        if not kinds:
            return []
        targets = _kind_masks(prepared, kinds)
        names = torch.stack([self.phrases.vectors[kind][0] for kind in kinds])  # the kind's own name
        logits, _ = self.sam.decode(embedding, multimask=False, text_embeddings=names)
        masks = self._masks_at_input(logits, prepared.labels.shape)
        return mask_iou(masks, torch.from_numpy(targets).to(self.device)).flatten().tolist()

    # -- loop -------------------------------------------------------------------------

    def _cancelled(self) -> bool:
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_progress is not None:
            self.on_progress(event)

    def fit(self) -> TrainResult:
        """Train from ``self.step`` to the end (or until cancelled); return the best model."""
        config = self.config
        cancelled = False
        while self.step < self.total_steps and not cancelled:
            epoch, within = divmod(self.step, self.steps_per_epoch)
            plan = self.train_set.epoch_plan(epoch, config.objects_per_step, config.seed)
            plan = plan + [None] * (self.steps_per_epoch - len(plan))
            for planned in plan[within:]:
                if self._cancelled():
                    cancelled = True
                    break
                started = time.perf_counter()
                rng = np.random.default_rng([config.seed, 11, self.step])
                metrics = self.train_step(planned, rng) if planned is not None else None
                if metrics is None:
                    self.scheduler.step()  # keep the LR schedule aligned with the step count
                self.step += 1
                entry = {"step": self.step, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                entry.update(metrics or {"loss": float("nan")})
                self.history["train"].append(entry)
                self._emit({"event": "step", "total_steps": self.total_steps,
                            "seconds": time.perf_counter() - started, **entry})
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_state()
            if cancelled:
                break
            val = self.validate()
            record = {"epoch": epoch, "step": self.step, **val}
            self.history["val"].append(record)
            if self.best is None or val["score"] > self.best["score"]:
                self.best = dict(record)
                named = dict(self.sam.named_parameters())
                self.best_params = {n: named[n].detach().cpu().clone() for n in self.param_names}
            self.save_state()
            self._emit({"event": "epoch", "epoch": epoch, "step": self.step, "total_steps": self.total_steps,
                        "loss": _mean_loss(self.history["train"][-self.steps_per_epoch:]), "val": val,
                        "best": self.best})
        if cancelled:
            self.save_state()
        self._emit({"event": "cancelled" if cancelled else "done", "step": self.step,
                    "total_steps": self.total_steps, "best": self.best})
        return TrainResult(
            model=self.final_model(), history=self.history, best=self.best, step=self.step,
            total_steps=self.total_steps, cancelled=cancelled, state_path=self.state_path,
        )

    def final_model(self) -> torch.nn.Module:
        """The model with the best validated weights (the current ones if none), LoRA merged."""
        if self.best_params is not None:
            named = dict(self.sam.named_parameters())
            with torch.no_grad():
                for name, value in self.best_params.items():
                    named[name].copy_(value)
        merge_lora(self.sam)
        self.sam.requires_grad_(False)
        return self.sam.eval()


def _mean_loss(entries: list[dict[str, Any]]) -> float:
    losses = [e["loss"] for e in entries if not math.isnan(e["loss"])]
    return float(np.mean(losses)) if losses else float("nan")


# --- entry point -----------------------------------------------------------------------


def state_path_for(out: str | os.PathLike) -> Path:
    """The training-state file that goes with a model file: ``model.pt`` -> ``model.state.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def _load_data(images: Any, labels: Any, config: TrainConfig, image_size: int):
    """-> (train set, validation samples, description)."""
    if isinstance(images, str) and images == "synthetic":
        train = SyntheticSet(image_size, config.seed, config.synthetic_shape, config.synthetic_steps_per_epoch,
                             config.min_object_pixels)
        val = train.validation(config.synthetic_val_images)
        return train, val, train.describe()
    if isinstance(images, (str, os.PathLike)):
        pairs = data_mod.find_pairs(images, labels)
        samples = data_mod.load_pairs(pairs)
        source = f"{len(pairs)} image files from {images}"
    elif isinstance(images, (list, tuple)) and images and isinstance(images[0], Sample):
        samples = list(images)  # ready-made samples, e.g. with object kinds for text prompts
        source = "samples"
    elif images is not None and labels is not None:
        samples = data_mod.samples_from_arrays(images, labels)
        source = "arrays"
    else:
        raise ValueError("images must be a folder, 'synthetic', or arrays with matching labels")
    rng = np.random.default_rng([config.seed, 3])
    train, val, split = data_mod.split_samples(samples, config.val_fraction, rng)
    if config.tile_large_planes:
        planes = len(train) + len(val)
        train, val = data_mod.tile_samples(train, image_size), data_mod.tile_samples(val, image_size)
        if len(train) + len(val) != planes:
            split += f"; cut into {len(train)} / {len(val)} crops of {image_size} px"
    train_set = SampleSet(train, image_size, config.min_object_pixels)
    if train_set.object_count() == 0:
        raise ValueError(f"no training object has at least {config.min_object_pixels} pixels at the model's input size")
    return train_set, val, f"{source}: {len(samples)} planes; {split}"


def finetune(
    images: Any,
    labels: Any = None,
    base: str | os.PathLike | torch.nn.Module = "default",
    train: str | None = None,
    epochs: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    state_path: str | os.PathLike | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    config: TrainConfig | None = None,
    **options: Any,
) -> TrainResult:
    """Fine-tune a SAM model on annotated images: the one entry point of the CLI and the widget.

    Parameters
    ----------
    images : folder, array, list of arrays, or ``"synthetic"``
        A folder of image files (with ``labels``, see :func:`.data.find_pairs`), image
        arrays (planes or stacks; napari Image layer data), or procedural images.
    labels : folder or array(s), optional
        Instance labels matching ``images``.
    base : str, path or Sam
        Model to start from: a name or file for :func:`napari_sam.checkpoints.load_model`, or
        a model object (used in place).
    train : "decoder", "decoder+prompt", "lora" or "all", optional
        Default: ``config.train`` (``"decoder"``).
    epochs : int, optional
        Default: ``config.epochs`` (10); on resume, the saved run's.
    out : path, optional
        Where the final (best) model goes, via :func:`napari_sam.checkpoints.save_model`; its
        training state goes to ``state_path`` (default ``<out stem>.state.pt``).
    resume : bool
        Continue from ``state_path``: its saved hyper-parameters are used (``epochs`` may
        extend the run).
    on_progress, cancel : see :class:`Trainer`.
    config : TrainConfig, optional
        All hyper-parameters; ``options`` override single fields (``lr=1e-5``, ``seed=1``).

    Returns
    -------
    TrainResult
    """
    from ..checkpoints import load_model, save_model

    if state_path is None and out is not None:
        state_path = state_path_for(out)
    saved = None
    if resume:
        if state_path is None or not Path(state_path).exists():
            raise FileNotFoundError(f"cannot resume: no training state at {state_path}")
        saved = load_train_state(state_path)
        # The run's own hyper-parameters; only the length and the device may change.
        overrides = {"epochs": epochs, "device": options.get("device")}
        config = TrainConfig.from_dict({**saved["config"], **{k: v for k, v in overrides.items() if v is not None}})
    else:
        unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise TypeError(f"unknown training options: {sorted(unknown)}")
        values = (config or TrainConfig()).to_dict()
        values.update({k: v for k, v in {"train": train, "epochs": epochs}.items() if v is not None}, **options)
        config = TrainConfig.from_dict(values)

    if isinstance(base, torch.nn.Module):
        sam, base_name = base, str(getattr(base, "config", {}).get("name", "custom"))
    else:
        sam, base_name = load_model(base, device=config.device), str(base)
    base_metadata = dict(getattr(sam, "metadata", {}) or {})

    train_set, val_samples, description = _load_data(images, labels, config, sam.image_size)
    trainer = Trainer(sam, config, train_set, val_samples, state_path, on_progress, cancel)
    if saved is not None:
        trainer.load_state_dict(saved)
    result = trainer.fit()

    if out is not None and result.best is not None:
        metadata = {
            "base_model": base_name,
            "base_checkpoint": base_metadata.get("checkpoint"),
            "trained": config.train,
            "data": description,
            "metrics": result.best,
            "epochs_completed": result.step / trainer.steps_per_epoch,
            "complete": not result.cancelled,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_config": config.to_dict(),
        }
        result.model_path = save_model(result.model, out, metadata)
    return result
