"""Validation after every epoch: how well the model segments held-out objects from one prompt.

Each validation object is segmented from one point, the object pixel farthest from the
background (the top-ranked of 3 candidates), and from its tight box (single mask); IoU is
measured at the model input. When text is trained and the images have object kinds, each
kind present is also segmented from its name alone. ``score``, which picks the best
weights, is the mean of the point, box (and text) mIoU.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch
from scipy import ndimage

from .data import Prepared, SampleSet
from .losses import mask_iou
from .objectives import kind_masks, logits_at_input, present_kinds
from .simulation import object_boxes
from .text_prompts import PhraseBank

# Objects decoded together in one validation batch (bounds memory for crowded images).
VALIDATION_BATCH = 32

Embed = Callable[[np.ndarray, Hashable], torch.Tensor]
"""``embed(image, cache_key) -> (1, C, h, w)`` embedding without gradients."""


def point_in_object(mask: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the object pixel farthest from the background (distance-transform max)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    distance = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(r) - 1 + int(rows[0]), int(c) - 1 + int(cols[0])


@torch.no_grad()
def validate(
    sam: torch.nn.Module,
    val_set: SampleSet,
    embed: Embed,
    max_objects: int,
    phrases: PhraseBank | None = None,
    cacheable: bool = True,
) -> dict[str, float]:
    """Mean IoU over the validation objects of ``val_set`` (at most ``max_objects`` per image).

    Parameters
    ----------
    sam : Sam
    val_set : SampleSet
    embed : callable(image, key) -> embedding
        ``key`` is ``("val", index)``, or ``None`` when not ``cacheable``.
    max_objects : int
    phrases : PhraseBank, optional
        When given, kinds present in an image are also segmented from their name alone.
    cacheable : bool
        Whether embeddings may be reused between calls (the encoder is frozen).

    Returns
    -------
    ``point_miou``, ``box_miou``, ``score`` and ``objects``; with text, ``text_miou`` and
    ``text_miou_mixed`` (images with two or more kinds only: in a one-kind image the
    kind's name asks for the whole foreground, which a model that cannot tell kinds apart
    also gets right).

    Raises
    ------
    ValueError
        No validation object at all.
    """
    point_ious, box_ious, text_ious, mixed_text_ious = [], [], [], []
    for index in range(len(val_set)):
        prepared: Prepared = val_set.prepared(index)
        ids = prepared.object_ids[:max_objects]
        if ids.size == 0:
            continue
        embedding = embed(prepared.image, ("val", index) if cacheable else None)
        device = embedding.device
        shape = prepared.labels.shape
        for start in range(0, ids.size, VALIDATION_BATCH):
            chunk = ids[start : start + VALIDATION_BATCH]
            masks = prepared.labels[None] == chunk[:, None, None]
            target = torch.from_numpy(masks).to(device)
            points = np.array([point_in_object(m)[::-1] for m in masks], np.float64)[:, None]
            logits, scores = sam.decode(
                embedding,
                torch.as_tensor(points, dtype=torch.float32, device=device),
                torch.ones(chunk.size, 1, dtype=torch.int64, device=device),
                multimask=True,
            )
            top = logits[torch.arange(chunk.size, device=logits.device), scores.argmax(dim=1)][:, None]
            point_ious += mask_iou(logits_at_input(top, shape, sam.image_size), target).flatten().tolist()
            boxes = torch.as_tensor(object_boxes(masks), dtype=torch.float32, device=device)
            logits, _ = sam.decode(embedding, boxes=boxes, multimask=False)
            box_ious += mask_iou(logits_at_input(logits, shape, sam.image_size), target).flatten().tolist()
        if phrases is not None and prepared.classes:
            ious = validate_text(sam, embedding, prepared, phrases)
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


def validate_text(
    sam: torch.nn.Module, embedding: torch.Tensor, prepared: Prepared, phrases: PhraseBank
) -> list[float]:
    """IoU of the mask from each present kind's own name alone with the union of its objects."""
    kinds = [kind for kind in present_kinds(prepared) if kind in phrases.phrases]
    if not kinds:
        return []
    targets = kind_masks(prepared, kinds)
    names = torch.stack([phrases.vectors[kind][0] for kind in kinds])
    logits, _ = sam.decode(embedding, multimask=False, text_embeddings=names)
    masks = logits_at_input(logits, prepared.labels.shape, sam.image_size)
    return mask_iou(masks, torch.from_numpy(targets).to(embedding.device)).flatten().tolist()
