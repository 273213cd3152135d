"""The fine-tuning loop: :class:`Trainer` (steps, validation, checkpoints, resume, cancel).

One optimisation step takes one (augmented) image and up to ``objects_per_step`` of its
objects and runs the simulated interaction on them (:mod:`.interaction`); every round's
loss is back-propagated and the optimizer steps once per image. After each epoch the
model is validated (:mod:`.validation`) and the training state written (:mod:`.state`).
A step whose loss or updated weights are not finite stops the run with
:class:`TrainingDiverged`; the last state written before it is kept.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import OptimiserConfig, TrainConfig
from .data import Sample, SampleSet, Step, SyntheticSet
from .embedding import Embedder
from .interaction import Anchor, draw_text, interaction_rounds, text_only_rounds
from .lora import configure_trainable, encoder_is_trained, merge_lora
from .objectives import KindHead, loss_targets
from .state import STATE_FORMAT, STATE_VERSION, assign, check_resumable, copy_tensors, fingerprint, save_train_state
from .validation import validate


class TrainingDiverged(RuntimeError):
    """The loss or the trained weights stopped being finite (e.g. a learning rate far too high)."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` / :func:`~napari_sam.training.finetune` return.

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


def lr_factor(config: OptimiserConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate at each step relative to ``config.lr``: warm-up, then the schedule."""
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


def mean_loss(entries: list[dict[str, Any]]) -> float:
    """Mean loss of the steps in ``entries`` that trained; a step of an image without
    objects (no ``"objects"`` entry) trained nothing and is left out."""
    losses = [entry["loss"] for entry in entries if "objects" in entry]
    return float(np.mean(losses)) if losses else float("nan")


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
        self.anchor_sam = None
        if config.loss.anchor_weight > 0:
            # The model as the run starts: what anchored samples keep (frozen, never trained).
            self.anchor_sam = copy.deepcopy(self.sam).requires_grad_(False)
        torch.manual_seed(config.seed)  # LoRA's initial weights
        frozen = list(self.sam.parameters())
        self.params = configure_trainable(self.sam, config.train, config.lora.rank, config.lora.alpha,
                                          config.lora.targets)
        trainable_ids = {id(p) for p in self.params}
        self.base_fingerprint = fingerprint([p for p in frozen if id(p) not in trainable_ids])
        self.param_names = [n for n, p in self.sam.named_parameters() if p.requires_grad]
        self.encoder_trained = encoder_is_trained(config.train)
        self.train_set = train_set
        min_pixels = config.data.min_object_pixels
        self.val_set = SampleSet(list(val_samples), self.sam.image_size, min_pixels)
        if self.val_set.object_count() == 0:
            raise ValueError(f"no validation object has at least {min_pixels} pixels at the model's input size")
        self.weights = config.loss.weights()
        self.text_weights = config.text.weights(self.weights)
        self.state_path = Path(state_path) if state_path is not None else None
        self.on_progress = on_progress
        self.cancel = cancel
        self.embed = Embedder(self.sam, int(config.cache_megabytes) * 2**20)
        if self.anchor_sam is not None:
            self.anchor_embed = Embedder(self.anchor_sam, int(config.cache_megabytes) * 2**20)
        self.phrases = None
        if config.text.probability > 0:
            if not getattr(self.sam, "supports_text", False):
                raise ValueError("text_probability > 0 needs a model with a text path (config text_dim)")
            from .text_prompts import PhraseBank

            self.phrases = PhraseBank(device=self.device)
        self.kind_head = None
        if config.text.kind_weight > 0:
            if self.phrases is None or not self.encoder_trained:
                raise ValueError("kind_weight > 0 needs text (text_probability > 0) and a trained encoder (train='all')")
            self.kind_head = KindHead(self.sam.prompt_encoder.embed_dim, self.phrases.kinds()).to(self.device)

        self.steps_per_epoch = max(1, train_set.steps_per_epoch(config.interaction.objects_per_step))
        self.total_steps = config.epochs * self.steps_per_epoch
        head_params = list(self.kind_head.parameters()) if self.kind_head is not None else []
        optimiser = config.optimiser
        self.optimizer = torch.optim.AdamW(
            self.params + head_params, lr=optimiser.lr, betas=optimiser.betas, weight_decay=optimiser.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(optimiser, self.total_steps))
        self.step = 0
        self.saved_step: int | None = None  # the step of the last state written
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
        self.best: dict[str, Any] | None = None
        self.best_params: dict[str, torch.Tensor] | None = None

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training state: only tensors, dicts, lists, numbers and strings."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "base_fingerprint": self.base_fingerprint,
            "trainable": copy_tensors(dict(self.sam.named_parameters()), self.param_names),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "total_steps": self.total_steps,
            "rng": {"torch": torch.get_rng_state()},
            "history": self.history,
            "best": self.best,
            "best_trainable": self.best_params,
            "kind_head": None if self.kind_head is None else copy_tensors(self.kind_head.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state written by :meth:`state_dict` (same base model and data)."""
        check_resumable(state, self.param_names, self.base_fingerprint, self.config.train)
        assign(self.sam, state["trainable"])
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
        self.step = self.saved_step = int(state["step"])
        self.history = {"train": list(state["history"]["train"]), "val": list(state["history"]["val"])}
        self.best = state["best"]
        self.best_params = state["best_trainable"]
        torch.set_rng_state(state["rng"]["torch"])

    def save_state(self) -> None:
        """Write the training state to ``state_path`` (if any), atomically."""
        if self.state_path is not None:
            save_train_state(self.state_dict(), self.state_path)
            self.saved_step = self.step

    # -- one step ---------------------------------------------------------------------

    def train_step(self, step: Step, rng: np.random.Generator) -> dict[str, float] | None:
        """One optimisation step on some objects of one image; ``None`` if it has none.

        Raises
        ------
        TrainingDiverged
            A loss is not finite (the weights are left as they were), or the updated
            weights are not.
        """
        config = self.config
        prepared = self.train_set.prepared(step.sample)
        ids = np.asarray(step.object_ids, np.int64)
        if ids.size == 0:
            ids = np.sort(rng.permutation(prepared.object_ids)[: config.interaction.objects_per_step])
        if ids.size == 0:
            return None
        augmentation = config.augmentation
        variant = int(rng.integers(augmentation.count))
        augmented = augmentation.apply(prepared, variant, config.seed, step.sample)
        masks = augmented.labels[None] == ids[:, None, None]
        targets = loss_targets(masks, self.sam.image_size, self.sam.low_res_size, config.loss.resolution, self.device)

        key = ("train", step.sample, variant) if self.train_set.cacheable else None
        embedding = self.embed(augmented.image, key, grad=self.encoder_trained)
        if self.encoder_trained:
            # Each round back-propagates into this leaf; the encoder runs backward once.
            encoder_output, embedding = embedding, embedding.detach().requires_grad_(True)

        anchor = None
        if self.anchor_sam is not None and augmented.anchor:
            anchor_embedding = self.anchor_embed(augmented.image, key, grad=False)
            anchor = Anchor(self.anchor_sam, anchor_embedding, config.loss.anchor_weight)
            if self.encoder_trained:
                anchor.embedding_loss(embedding).backward()

        use_text, text = draw_text(self.phrases, augmented, ids, rng, config.text.probability)
        rounds = interaction_rounds(self.sam, embedding, masks, targets, self.weights, config.interaction, rng, text,
                                    anchor)
        text_only = None
        if use_text:
            text_only = text_only_rounds(self.sam, embedding, augmented, self.phrases, rng, config.loss.resolution,
                                         self.text_weights, anchor)
        kind = None
        if self.kind_head is not None:
            kind_loss = self.kind_head.loss(embedding, augmented, self.sam.image_size)
            if kind_loss is not None:
                (config.text.kind_weight * kind_loss).backward()
                kind = float(kind_loss.detach())

        metrics = {
            "loss": float(np.mean(rounds.rounds)),
            "first_round_mask_loss": rounds.first_mask,
            "last_round_mask_loss": rounds.last_mask,
            "objects": int(ids.size),
            "box_first": rounds.box_first,
            "text_only_loss": float("nan") if text_only is None else text_only,
            "kind_loss": float("nan") if kind is None else kind,
            "anchor_loss": float("nan") if anchor is None else float(np.sum(anchor.values)),
        }
        self._check_losses(metrics["loss"], text_only, kind)
        if self.encoder_trained:
            encoder_output.backward(embedding.grad)
        if config.optimiser.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, config.optimiser.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._check_weights()
        return metrics

    def _check_losses(self, loss: float, text_only: float | None, kind: float | None) -> None:
        for name, value in (("loss", loss), ("text-only loss", text_only), ("kind loss", kind)):
            if value is not None and not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(self._diverged(f"the {name} is {value}"))

    def _check_weights(self) -> None:
        with torch.no_grad():
            if bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all()):
                return
        name = next(n for n, p in self.sam.named_parameters() if p.requires_grad and not torch.isfinite(p).all())
        raise TrainingDiverged(self._diverged(f"the weights are not finite ({name})"))

    def _diverged(self, what: str) -> str:
        """The one-line message of :class:`TrainingDiverged` at the current step."""
        lr = self.config.optimiser.lr
        if self.state_path is None:
            kept = "no training state is written"
        elif self.saved_step is None:
            kept = "no training state was written yet"
        else:
            kept = f"the last good training state (step {self.saved_step}) is kept in {self.state_path}"
        return f"training diverged at step {self.step + 1} of {self.total_steps}: {what}; lower the learning rate " \
               f"(lr {lr:g}); {kept}"

    # -- validation -------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Validation mIoU of the current weights (see :func:`.validation.validate`)."""
        return validate(
            self.sam, self.val_set, lambda image, key: self.embed(image, key, grad=False),
            self.config.data.val_max_objects, self.phrases, cacheable=not self.encoder_trained,
        )

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
        """Train from ``self.step`` to the end (or until cancelled); return the best model.

        Raises
        ------
        TrainingDiverged
            See :meth:`train_step`; the training state on disk is the last good one.
        """
        config = self.config
        cancelled = False
        while self.step < self.total_steps and not cancelled:
            epoch, within = divmod(self.step, self.steps_per_epoch)
            plan = self.train_set.epoch_plan(epoch, config.interaction.objects_per_step, config.seed)
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
                self.best_params = copy_tensors(dict(self.sam.named_parameters()), self.param_names)
            self.save_state()
            self._emit({"event": "epoch", "epoch": epoch, "step": self.step, "total_steps": self.total_steps,
                        "loss": mean_loss(self.history["train"][-self.steps_per_epoch:]), "val": val,
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
            assign(self.sam, self.best_params)
        merge_lora(self.sam)
        self.sam.requires_grad_(False)
        return self.sam.eval()
