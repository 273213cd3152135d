""":func:`finetune`: data in, a fine-tuned model out; the entry point of the CLI and the widget."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .config import TrainConfig
from .data import Sample, SampleSet, SyntheticSet
from .loop import Trainer, TrainResult
from .state import load_train_state, state_path_for


def load_data(
    images: Any, labels: Any, config: TrainConfig, image_size: int
) -> tuple[SampleSet | SyntheticSet, list[Sample], str]:
    """The training set, the validation samples and a one-line description of both.

    ``images`` / ``labels`` as :func:`finetune` takes them; the split and the crops follow
    ``config.data`` (seeded by ``config.seed``).
    """
    data = config.data
    if isinstance(images, str) and images == "synthetic":
        train = SyntheticSet(image_size, config.seed, data.synthetic_shape, data.synthetic_steps_per_epoch,
                             data.min_object_pixels)
        val = train.validation(data.synthetic_val_images)
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
    train, val, split = data_mod.split_samples(samples, data.val_fraction, rng)
    if data.tile_large_planes:
        planes = len(train) + len(val)
        train, val = data_mod.tile_samples(train, image_size), data_mod.tile_samples(val, image_size)
        if len(train) + len(val) != planes:
            split += f"; cut into {len(train)} / {len(val)} crops of {image_size} px"
    train_set = SampleSet(train, image_size, data.min_object_pixels)
    if train_set.object_count() == 0:
        raise ValueError(f"no training object has at least {data.min_object_pixels} pixels at the model's input size")
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
    images : folder, array, list of arrays, list of Sample, or ``"synthetic"``
        A folder of image files (with ``labels``, see :func:`.data.find_pairs`), image
        arrays (planes or stacks; napari Image layer data), ready-made samples, or
        procedural images.
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
        Continue from ``state_path``: its saved settings are used (``epochs`` may extend
        the run, ``device`` may change).
    on_progress, cancel : see :class:`.loop.Trainer`.
    config : TrainConfig, optional
        All settings; ``options`` override single ones by their flat names
        (``lr=1e-5``, ``seed=1``; :meth:`TrainConfig.to_dict` lists them).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDiverged
        The loss or the weights stopped being finite; no model is written and the
        training state keeps the last good step.
    """
    from ..checkpoints import load_model, save_model

    if state_path is None and out is not None:
        state_path = state_path_for(out)
    saved = None
    if resume:
        if state_path is None or not Path(state_path).exists():
            raise FileNotFoundError(f"cannot resume: no training state at {state_path}")
        saved = load_train_state(state_path)
        # The run's own settings; only the length and the device may change.
        overrides = {"epochs": epochs, "device": options.get("device")}
        config = TrainConfig.from_dict({**saved["config"], **{k: v for k, v in overrides.items() if v is not None}})
    else:
        given = {"train": train, "epochs": epochs}
        config = (config or TrainConfig()).with_options(
            **{k: v for k, v in given.items() if v is not None}, **options
        )

    if isinstance(base, torch.nn.Module):
        sam, base_name = base, str(getattr(base, "config", {}).get("name", "custom"))
    else:
        sam, base_name = load_model(base, device=config.device), str(base)
    base_metadata = dict(getattr(sam, "metadata", {}) or {})

    train_set, val_samples, description = load_data(images, labels, config, sam.image_size)
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
