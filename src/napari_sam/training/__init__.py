"""Fine-tuning SAM on annotated images with simulated interaction.

``finetune`` is the one entry point (used by ``napari-sam finetune`` and the napari
widget); see ``docs/training.md``.
"""

from .config import (
    DataConfig,
    InteractionConfig,
    LoRAConfig,
    LossConfig,
    OptimiserConfig,
    TextConfig,
    TrainConfig,
)
from .data import (
    Augmentation,
    Sample,
    SampleSet,
    SyntheticSet,
    find_pairs,
    load_pairs,
    samples_from_arrays,
    tile_samples,
)
from .finetuning import finetune
from .loop import Trainer, TrainingDiverged, TrainResult
from .lora import TRAIN_MODES, LoRALinear, apply_lora, merge_lora
from .losses import LossWeights, dice_loss, focal_loss, iou_mse, mask_iou, sam_loss
from .recipes import RECIPES
from .state import load_train_state, state_path_for

__all__ = [
    "TRAIN_MODES",
    "Augmentation",
    "DataConfig",
    "InteractionConfig",
    "LoRAConfig",
    "LoRALinear",
    "LossConfig",
    "LossWeights",
    "OptimiserConfig",
    "Sample",
    "SampleSet",
    "SyntheticSet",
    "RECIPES",
    "TextConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "apply_lora",
    "dice_loss",
    "find_pairs",
    "finetune",
    "focal_loss",
    "iou_mse",
    "load_pairs",
    "load_train_state",
    "mask_iou",
    "merge_lora",
    "sam_loss",
    "samples_from_arrays",
    "state_path_for",
    "tile_samples",
]
