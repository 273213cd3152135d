"""SAM 2.1 (Hiera image encoder, FPN neck, SAM 2 prompt encoder and mask decoder) in pure
PyTorch, as a model family of this project; tensor names match the official checkpoints."""

from .build import (
    SAM2_CONFIGS,
    VIDEO_PREFIXES,
    build_sam2,
    detect_sam2_config,
    image_state_dict,
    is_sam2_state_dict,
    load_sam2,
    load_sam2_checkpoint,
)
from .model import Sam2
from .video import VideoTracker

__all__ = [
    "SAM2_CONFIGS",
    "VIDEO_PREFIXES",
    "Sam2",
    "VideoTracker",
    "build_sam2",
    "detect_sam2_config",
    "image_state_dict",
    "is_sam2_state_dict",
    "load_sam2",
    "load_sam2_checkpoint",
]
