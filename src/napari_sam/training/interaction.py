"""One step's simulated interaction: the rounds of clicks (and text) on a batch of objects.

The objects of one image are decoded together against one shared embedding. Round 1 is
a point inside each object or its jittered box; each later round adds a corrective click
from the previous round's error (except two rounds that refine from the mask alone, see
:func:`.simulation.make_schedule`) and feeds the previous round's low-res logits back as
the mask prompt, detached. Every round's loss is back-propagated at once (divided by the
number of rounds); the caller steps the optimizer once per image.

Text: with a phrase per object, the phrase is one more prompt token in every round; the
text-only rounds then segment every kind in the image (and one absent kind, whose target
is empty) from its name alone, twice, the second refining the first's mask.

Randomness comes only from the ``numpy.random.Generator`` passed in, drawn in a fixed
order (text, prompt type, schedule, first prompt, clicks, text-only kinds), so a step is
a function of its generator's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import InteractionConfig
from .data import Prepared
from .losses import LossWeights
from .objectives import Targets, kind_masks, loss_targets, masks_at_input, present_kinds
from .simulation import jitter_boxes, make_schedule, object_boxes, sample_correction_points, sample_points_inside
from .text_prompts import PhraseBank

# Decoder calls of the text-only rounds: the name alone, then the name with the first mask.
TEXT_ONLY_ROUNDS = 2


@dataclass
class RoundLosses:
    """The losses of one step's interaction rounds (Python floats, for the history).

    ``rounds``: each round's total; ``first_mask`` / ``last_mask``: the mask part of the
    first and the last round; ``box_first``: round 1 was a box.
    """

    rounds: list[float]
    first_mask: float
    last_mask: float
    box_first: bool


@dataclass
class Anchor:
    """The starting model's answers on one image, which ``anchor_weight`` keeps.

    ``sam`` is a frozen copy of the model the run started from and ``embedding`` its
    embedding of the image; :meth:`loss` decodes the same prompts with them and scores the
    trained model's logits against those probabilities. ``values`` collects each loss.
    """

    sam: torch.nn.Module
    embedding: torch.Tensor
    weight: float
    values: list[float] = field(default_factory=list)

    def loss(self, logits: torch.Tensor, iou: torch.Tensor, *prompts, multimask: bool,
             text: torch.Tensor | None) -> torch.Tensor:
        """``weight`` x (the binary cross-entropy of ``logits`` (B, K, h, w) against the
        starting model's probabilities for the same ``prompts`` (points, labels, boxes, mask
        input) + the squared error of the predicted ``iou`` (B, K) against its)."""
        with torch.no_grad():
            target, target_iou = self.sam.decode(self.embedding, *prompts, multimask, text_embeddings=text)
        loss = self.weight * (F.binary_cross_entropy_with_logits(logits, torch.sigmoid(target))
                              + F.mse_loss(iou, target_iou))
        self.values.append(float(loss.detach()))
        return loss

    def embedding_loss(self, embedding: torch.Tensor) -> torch.Tensor:
        """``weight`` x the mean squared change of ``embedding`` from the starting model's
        one, over that one's variance."""
        change = torch.mean((embedding - self.embedding) ** 2) / self.embedding.var().clamp_min(1e-8)
        loss = self.weight * change
        self.values.append(float(loss.detach()))
        return loss


def draw_text(
    phrases: PhraseBank | None, prepared: Prepared, ids: Sequence[int], rng: np.random.Generator, probability: float
) -> tuple[bool, torch.Tensor | None]:
    """Whether this step trains text, and the phrase embedding ``(B, text_dim)`` of each
    object's kind (``None`` when an object has no kind the phrase bank knows)."""
    use_text = bool(phrases is not None and prepared.classes and rng.random() < probability)
    if not use_text:
        return False, None
    kinds = [prepared.classes.get(int(i)) for i in ids]
    if not all(kind in phrases.phrases for kind in kinds):
        return True, None
    return True, phrases.sample(kinds, rng)


def interaction_rounds(
    sam: torch.nn.Module,
    embedding: torch.Tensor,
    masks: np.ndarray,
    targets: Targets,
    weights: LossWeights,
    config: InteractionConfig,
    rng: np.random.Generator,
    text: torch.Tensor | None = None,
    anchor: Anchor | None = None,
) -> RoundLosses:
    """Run and back-propagate the rounds of clicks on ``B`` objects of one image.

    Parameters
    ----------
    sam : Sam
    embedding : (1, C, h, w)
        The image's embedding (a leaf with ``requires_grad`` when the encoder is trained).
    masks : (B, h, w) bool
        The objects in the model-input frame.
    targets : Targets
        ``masks`` at the loss resolution.
    weights : LossWeights
    config : InteractionConfig
    rng : numpy Generator
    text : (B, text_dim), optional
        A phrase embedding per object, given beside the points / box in every round.
    anchor : Anchor, optional
        Adds its loss to every round's.
    """
    batch, shape = masks.shape[0], masks.shape[1:]
    device = embedding.device
    first_is_box = bool(rng.random() < config.box_probability)
    schedule = make_schedule(rng, config.rounds, first_is_box)
    boxes = None
    coords = np.zeros((batch, 0, 2))
    labels = np.zeros((batch, 0), np.int64)
    if first_is_box:
        max_noise = config.box_noise_max * sam.image_size / 1024
        jittered = jitter_boxes(object_boxes(masks), rng, shape, config.box_noise, max_noise)
        boxes = torch.as_tensor(jittered, dtype=torch.float32, device=device)
    else:
        coords = sample_points_inside(masks, rng)[:, None]
        labels = np.ones((batch, 1), np.int64)

    mask_input = None
    losses, first_mask, last_mask = [], 0.0, 0.0
    for round_ in schedule:
        if round_.new_point:
            predicted = masks_at_input(mask_input, shape, sam.image_size)
            new_points, new_labels = sample_correction_points(predicted, masks, rng)
            coords = np.concatenate([coords, new_points[:, None]], axis=1)
            labels = np.concatenate([labels, new_labels[:, None]], axis=1)
        point_coords = point_labels = None
        if coords.shape[1]:
            point_coords = torch.as_tensor(coords, dtype=torch.float32, device=device)
            point_labels = torch.as_tensor(labels, device=device)
        logits, iou = sam.decode(
            embedding, point_coords, point_labels, boxes, mask_input, round_.multimask, text_embeddings=text
        )
        loss = targets.loss(logits, iou, weights)
        total = loss.total
        if anchor is not None:
            total = total + anchor.loss(logits, iou, point_coords, point_labels, boxes, mask_input,
                                        multimask=round_.multimask, text=text)
        (total / len(schedule)).backward()
        # The candidate that was trained is the one the next round refines, without a graph.
        mask_input = logits[torch.arange(batch, device=logits.device), loss.best][:, None].detach()
        losses.append(float(loss.total.detach()))
        if round_.index == 0:
            first_mask = float(loss.mask.detach())
        last_mask = float(loss.mask.detach())
    return RoundLosses(losses, first_mask, last_mask, first_is_box)


def text_only_rounds(
    sam: torch.nn.Module,
    embedding: torch.Tensor,
    prepared: Prepared,
    phrases: PhraseBank,
    rng: np.random.Generator,
    resolution: str,
    weights: LossWeights,
    anchor: Anchor | None = None,
) -> float | None:
    """Segment every kind present in ``prepared`` (and one absent) from text alone; back-propagate.

    The target of a kind is the union of its objects; an absent kind's is empty, which
    teaches the model to say "none here" rather than segment whatever is there. Returns
    the mean loss of the rounds, or ``None`` when no kind can be asked for.
    """
    present = present_kinds(prepared)
    kinds = [kind for kind in present if kind in phrases.phrases]
    absent = [kind for kind in phrases.kinds() if kind not in present]
    if absent:
        kinds.append(absent[int(rng.integers(len(absent)))])
    if not kinds:
        return None
    targets = loss_targets(kind_masks(prepared, kinds), sam.image_size, sam.low_res_size, resolution, embedding.device)
    text = phrases.sample(kinds, rng)
    mask_input, losses = None, []
    for _ in range(TEXT_ONLY_ROUNDS):
        logits, iou = sam.decode(embedding, mask_inputs=mask_input, multimask=False, text_embeddings=text)
        loss = targets.loss(logits, iou, weights)
        total = loss.total
        if anchor is not None:
            total = total + anchor.loss(logits, iou, None, None, None, mask_input, multimask=False, text=text)
        (total / TEXT_ONLY_ROUNDS).backward()
        mask_input = logits.detach()
        losses.append(float(loss.total.detach()))
    return float(np.mean(losses))
