"""The SAM model in pure PyTorch; parameter names match the official checkpoints."""

from .build import MODEL_CONFIGS, build_sam
from .sam import Sam

__all__ = ["MODEL_CONFIGS", "Sam", "build_sam"]
