"""The settings of a fine-tuning run: :class:`TrainConfig`, made of small frozen groups.

Every setting also has one flat *option name* (``lr``, ``rounds``, ``text_probability``,
...): the keyword of :func:`~napari_sam.training.finetune`, the ``napari-sam finetune``
flag, the key in :data:`~napari_sam.training.recipes.RECIPES`, in a saved training state
and in a fine-tuned model's ``training_config``. :meth:`TrainConfig.with_options` and
:meth:`TrainConfig.to_dict` translate between the two. Defaults follow SAM where it
applies; why each value was chosen is in ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .data import Augmentation
from .lora import TRAIN_MODES
from .losses import LossWeights
from .recipes import RECIPES

__all__ = [
    "DataConfig", "InteractionConfig", "LoRAConfig", "LossConfig", "OptimiserConfig", "TextConfig", "TrainConfig",
    "option_names",
]


def _option(default: Any, name: str) -> Any:
    """A field whose flat option name is ``name`` rather than its attribute name."""
    return field(default=default, metadata={"option": name})


def _at_least_one(group: Any, *names: str) -> None:
    for name in names:
        if int(getattr(group, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(group, name)}")


@dataclass(frozen=True)
class OptimiserConfig:
    """AdamW and its learning-rate schedule (SAM: weight decay 0.1, betas 0.9 / 0.999).

    Attributes
    ----------
    lr : peak learning rate.
    weight_decay, betas : AdamW's.
    warmup_fraction, warmup_max_steps : linear warm-up over this share of all steps, at
        most this many steps (SAM: 250).
    schedule : after warm-up, ``"cosine"`` (down to ``min_lr_ratio * lr``), ``"step"``
        (x0.1 at 2/3 and 0.96 of the run, like SAM's drops) or ``"constant"``.
    min_lr_ratio : end of the cosine schedule, relative to ``lr``.
    grad_clip : clip the gradient norm to this; 0 disables.
    """

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    warmup_max_steps: int = 250
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class InteractionConfig:
    """The simulated user (:mod:`.simulation`).

    Attributes
    ----------
    objects_per_step : objects of one image decoded together in a step (SAM: 64 per GPU).
    rounds : decoder calls per object (SAM: 11).
    box_probability : chance that round 1 is a box instead of a point (drawn per step).
    box_noise, box_noise_max : box jitter, std as a fraction of the side, at most this
        many pixels of a 1024-pixel input (scaled to the model's input size).
    """

    objects_per_step: int = 8
    rounds: int = 11
    box_probability: float = 0.5
    box_noise: float = 0.1
    box_noise_max: float = 20.0

    def __post_init__(self) -> None:
        _at_least_one(self, "objects_per_step", "rounds")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")


@dataclass(frozen=True)
class LossConfig:
    """The mask and IoU-head loss of every round (:func:`.losses.sam_loss`; SAM: 20, 1, 1, 0.25, 2).

    Attributes
    ----------
    focal_weight, dice_weight, iou_weight : weights of focal, dice and the IoU head's MSE.
    focal_alpha, focal_gamma : the focal term's.
    resolution : ``"low"``: on the low-res logit grid against area-downsampled targets;
        ``"input"``: on logits upsampled to the model input against full-resolution masks
        (learns edges finer than a low-res pixel). Option ``loss_resolution``.
    anchor_weight : on samples marked ``anchor``, weight of a loss that keeps the answers of
        the model the run started from (the embedding's mean squared change over its
        variance, plus the binary cross-entropy of every round's logits against that
        model's probabilities for the same prompts and the squared error of its predicted
        IoUs against that model's); 0 (default): off.
    """

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    resolution: str = _option("low", "loss_resolution")
    anchor_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.resolution not in ("low", "input"):
            raise ValueError(f"loss_resolution must be 'low' or 'input', got {self.resolution!r}")

    def weights(self) -> LossWeights:
        return LossWeights(self.focal_weight, self.dice_weight, self.iou_weight, self.focal_alpha, self.focal_gamma)


@dataclass(frozen=True)
class TextConfig:
    """Training text prompts (needs a model with a text path and data with object kinds).

    Attributes
    ----------
    probability : share of steps that also train text: the step's objects get their
        kind's phrase beside their points / boxes in every round, and each kind in the
        image (plus one absent kind, target empty) is segmented from text alone in two
        rounds. Option ``text_probability``.
    focal_weight, focal_alpha, focal_gamma : the text-only rounds' focal term; ``None``:
        the mask loss's. Options ``text_focal_weight``, ``text_focal_alpha``, ``text_focal_gamma``.
    kind_weight : weight of the auxiliary loss that keeps object kinds in the image
        embedding (a temporary head names each embedding cell's kind; needs
        ``train="all"`` and text); 0: off.
    """

    probability: float = _option(0.0, "text_probability")
    focal_weight: float | None = _option(None, "text_focal_weight")
    focal_alpha: float | None = _option(None, "text_focal_alpha")
    focal_gamma: float | None = _option(None, "text_focal_gamma")
    kind_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind_weight < 0:
            raise ValueError(f"kind_weight must be >= 0, got {self.kind_weight}")

    def weights(self, mask: LossWeights) -> LossWeights:
        """The text-only rounds' weights: ``mask`` with this group's focal settings."""
        overrides = {"focal": self.focal_weight, "focal_alpha": self.focal_alpha, "focal_gamma": self.focal_gamma}
        return dataclasses.replace(mask, **{name: value for name, value in overrides.items() if value is not None})


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters for ``train="lora"`` (:mod:`.lora`).

    Attributes
    ----------
    rank : option ``lora_rank``.
    alpha : scale numerator; ``None``: the rank. Option ``lora_alpha``.
    targets : names of the encoder's linear layers adapted. Option ``lora_targets``.
    """

    rank: int = _option(4, "lora_rank")
    alpha: float | None = _option(None, "lora_alpha")
    targets: tuple[str, ...] = _option(("qkv",), "lora_targets")

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.rank}")
        object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class DataConfig:
    """How images become training and validation objects (:mod:`.data`).

    Attributes
    ----------
    val_fraction : share of the images (one image: of its objects) that validate.
    val_max_objects : objects per validation image at most.
    min_object_pixels : objects smaller than this in the model-input frame are skipped.
    tile_large_planes : cut planes larger than the model input into input-sized crops at
        native resolution, as tiled inference sees them; off: shrink them to the input.
    synthetic_shape, synthetic_steps_per_epoch, synthetic_val_images : the procedural
        stream (``images="synthetic"``).
    """

    val_fraction: float = 0.2
    val_max_objects: int = 64
    min_object_pixels: int = 10
    tile_large_planes: bool = True
    synthetic_shape: tuple[int, int] = (256, 256)
    synthetic_steps_per_epoch: int = 50
    synthetic_val_images: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "synthetic_shape", tuple(self.synthetic_shape))


# The groups of TrainConfig, by attribute name.
GROUPS: dict[str, type] = {
    "optimiser": OptimiserConfig,
    "interaction": InteractionConfig,
    "loss": LossConfig,
    "augmentation": Augmentation,
    "text": TextConfig,
    "lora": LoRAConfig,
    "data": DataConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a fine-tuning run.

    Build one from flat option names with :meth:`from_options` (``TrainConfig.from_options(lr=1e-3,
    rounds=3)``) or :meth:`recipe`, or from groups (``TrainConfig(loss=LossConfig(focal_weight=0))``).

    Attributes
    ----------
    train : ``"decoder"``, ``"decoder+prompt"``, ``"lora"`` or ``"all"``: what is trained (:mod:`.lora`).
    epochs : passes over every training object (synthetic data: ``synthetic_steps_per_epoch`` images).
    seed : every random choice derives from it.
    device : see :func:`napari_sam.device.select_device`.
    cache_megabytes : memory for cached embeddings while the encoder is frozen.
    checkpoint_every : also write the training state every this many steps; 0: only
        after each epoch.
    optimiser, interaction, loss, augmentation, text, lora, data : the groups.
    """

    train: str = "decoder"
    epochs: int = 10
    seed: int = 0
    device: str | None = None
    cache_megabytes: int = 2048
    checkpoint_every: int = 0
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    interaction: InteractionConfig = field(default_factory=InteractionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augmentation: Augmentation = field(default_factory=Augmentation)
    text: TextConfig = field(default_factory=TextConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {TRAIN_MODES}, got {self.train!r}")
        _at_least_one(self, "epochs")

    @classmethod
    def from_options(cls, **options: Any) -> TrainConfig:
        """The defaults with flat ``options`` (``lr=1e-3``, ``loss_resolution="input"``) set."""
        return cls().with_options(**options)

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named settings of :data:`RECIPES` (``"sam"``: the paper's, the defaults;
        ``"fast"``: the most gain per CPU-minute measured here), with ``overrides``."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
        return cls.from_options(**{**RECIPES[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; options this version does not know are ignored."""
        known = option_names()
        return cls.from_options(**{name: value for name, value in values.items() if name in known})

    def with_options(self, **options: Any) -> TrainConfig:
        """A copy with flat ``options`` changed.

        Raises
        ------
        TypeError
            An option name that does not exist.
        """
        table = option_names()
        unknown = sorted(set(options) - set(table))
        if unknown:
            raise TypeError(f"unknown training options: {unknown}")
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            group, attribute = table[name]
            if group is None:
                top[attribute] = value
            else:
                groups.setdefault(group, {})[attribute] = value
        for group, values in groups.items():
            top[group] = dataclasses.replace(getattr(self, group), **values)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by flat option name, plain types only (lists for tuples), for JSON
        and the training state."""
        values = {}
        for name, (group, attribute) in option_names().items():
            value = getattr(self if group is None else getattr(self, group), attribute)
            values[name] = list(value) if isinstance(value, tuple) else value
        return values


def option_names() -> dict[str, tuple[str | None, str]]:
    """Each flat option name -> ``(group attribute or None for top-level, field name)``."""
    table: dict[str, tuple[str | None, str]] = {}
    for top in dataclasses.fields(TrainConfig):
        if top.name not in GROUPS:
            table[top.name] = (None, top.name)
            continue
        for inner in dataclasses.fields(GROUPS[top.name]):
            table[inner.metadata.get("option", inner.name)] = (top.name, inner.name)
    return table
