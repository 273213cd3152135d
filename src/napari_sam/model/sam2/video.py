"""Memory-based propagation with SAM 2.1: follow objects through the planes of a stack or
the frames of a time-lapse, one frame at a time.

Per object, a prompted frame is a *conditioning* frame: decoded from its prompts alone and
turned into a memory (the predicted mask binarised, through the memory encoder) and an
object pointer (the decoder's output token, projected). Every other frame is decoded from
its image features conditioned by memory attention on

- the memories of all conditioning frames and of the ``num_maskmem - 1`` (6) frames just
  before it in the direction of travel, each with a learned temporal encoding;
- the object pointers of the conditioning frames on the way and of up to 15 frames before,
  with a sine encoding of the signed frame distance,

and its own output becomes a memory for the frames after it. This follows the official
video predictor (per-object tracking, memories stored in bfloat16); the optional hole
filling of its CUDA extension is not applied (without the extension it is skipped there too).

Streaming: image features are computed for the current frame only, and memories and
pointers older than any future frame can use are dropped, so memory stays bounded on
long stacks (:attr:`VideoTracker.stored_frames`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .memory import sine_encoding_1d
from .model import Sam2

#: Mask logits of frames where the object score says the object is absent.
NO_OBJECT_LOGIT = -1024.0
#: Frames of object pointers the memory attention sees (the official max_obj_ptrs_in_encoder).
MAX_POINTERS = 16
# The mask given to the memory encoder: sigmoid(logits) (or the binarised prompted mask)
# scaled and shifted, as the official models are trained.
MEMORY_MASK_SCALE, MEMORY_MASK_BIAS = 20.0, -10.0


@dataclass
class FrameOutput:
    """What one object keeps of one frame."""

    logits: torch.Tensor  # (1, 1, 4h, 4w) low-res mask logits
    pointer: torch.Tensor  # (1, C) object pointer
    object_score: torch.Tensor  # (1, 1) logit that the object is present
    memory: torch.Tensor | None = None  # (1, mem_dim, h, w) bfloat16
    score: float = 1.0  # predicted IoU of the mask (1 for a mask given as the prompt)


@dataclass
class ObjectState:
    conditioning: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, FrameOutput] = field(default_factory=dict)


class VideoTracker:
    """Propagates objects through ``num_frames`` frames with a SAM 2.1 model.

    Parameters
    ----------
    model : Sam2
        With the memory modules (``model.supports_video``).
    frames : sequence or callable
        ``frames[i]`` (or ``frames(i)``): model input ``(1, 3, S, S)`` of frame ``i``
        (:meth:`Sam2.prepare`), fetched when the frame is processed.
    num_frames : int
        Needed when ``frames`` is a callable.

    Examples
    --------
    >>> tracker = VideoTracker(model, [model.prepare(plane)[0] for plane in planes])
    >>> tracker.add_points(frame=5, obj_id=1, points_xy=[[300.0, 410.0]], labels=[1])
    >>> for frame, logits in tracker.propagate(): ...          # forward from frame 5
    >>> for frame, logits in tracker.propagate(reverse=True): ...
    """

    def __init__(self, model: Sam2, frames: Sequence[torch.Tensor] | Callable[[int], torch.Tensor],
                 num_frames: int | None = None) -> None:
        if not model.supports_video:
            raise ValueError("this SAM 2 model was built without its memory modules (video=False)")
        self.model = model.eval()
        self._frames = frames
        self.num_frames = int(num_frames if num_frames is not None else len(frames))
        self.objects: dict[int, ObjectState] = {}
        self._cached: tuple[int, tuple[torch.Tensor, ...]] | None = None

    # ---- frames ---------------------------------------------------------------------

    def _features(self, frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``high_res_s0``, ``high_res_s1``, raw features ``(1, C, h, w)`` and their PE of ``frame``."""
        if self._cached is None or self._cached[0] != frame:
            inputs = self._frames(frame) if callable(self._frames) else self._frames[frame]
            s0, s1, s2 = self.model.image_levels(inputs.to(self.model.device))
            pos = self.model.image_encoder.position_encoding(s2)
            self._cached = (frame, (s0, s1, s2, pos))
        return self._cached[1]

    @property
    def stored_frames(self) -> int:
        """Frame outputs held, all objects together (bounded while propagating)."""
        return sum(len(state.conditioning) + len(state.tracked) for state in self.objects.values())

    # ---- prompts --------------------------------------------------------------------

    @torch.inference_mode()
    def add_points(self, frame: int, obj_id: int, points_xy=None, labels=None, box_xyxy=None) -> torch.Tensor:
        """Prompt object ``obj_id`` on ``frame`` (model-input ``xy``); replaces earlier prompts there.

        Returns the frame's low-res logits ``(1, 1, 4h, 4w)``. A single point gives the
        best of three masks by predicted IoU; more points, or a box (two corner points),
        the single-mask output.
        """
        self._check_frame(frame)
        device = self.model.device
        coords = torch.zeros(1, 0, 2, device=device)
        point_labels = torch.zeros(1, 0, dtype=torch.int64, device=device)
        if box_xyxy is not None:
            coords = torch.as_tensor(box_xyxy, dtype=torch.float32, device=device).reshape(1, 2, 2)
            point_labels = torch.tensor([[2, 3]], device=device)
        if points_xy is not None:
            points = torch.as_tensor(points_xy, dtype=torch.float32, device=device).reshape(1, -1, 2)
            labels = torch.ones(points.shape[1]) if labels is None else labels
            coords = torch.cat([coords, points], dim=1)
            point_labels = torch.cat([point_labels, torch.as_tensor(labels, device=device).reshape(1, -1).long()], 1)
        if coords.shape[1] == 0:
            raise ValueError("give points_xy (with labels) or box_xyxy")
        s0, s1, s2, _ = self._features(frame)
        embedding = s2 + self.model.no_mem_embed.view(1, -1, 1, 1)  # a prompted frame sees no memory
        output = self._decode(embedding, (s0, s1), (coords, point_labels), multimask=coords.shape[1] <= 1)
        output.memory = self._encode_memory(s2, output, binarize=True)
        self._condition_on(frame, obj_id, output)
        return output.logits

    @torch.inference_mode()
    def add_mask(self, frame: int, obj_id: int, mask) -> torch.Tensor:
        """Prompt object ``obj_id`` on ``frame`` with a mask; replaces earlier prompts there.

        Parameters
        ----------
        mask : (H, W) bool array or tensor
            The object on the whole frame (any size: stretched to ``S x S`` as the frame
            is, kept where the stretched mask is >= 0.5).

        Returns the frame's low-res logits ``(1, 1, 4h, 4w)``. As the official video
        predictor, the mask itself is the frame's output (logits +-10, predicted IoU 1,
        present when any pixel is set); the decoder only makes its object pointer, from
        the mask as a mask prompt on the frame's features without memory.
        """
        self._check_frame(frame)
        model = self.model
        size = model.image_size
        given = torch.as_tensor(np.ascontiguousarray(mask, dtype=bool)).to(model.device)
        if given.ndim != 2:
            raise ValueError(f"mask must be 2D (H, W), got shape {tuple(given.shape)}")
        mask_in = given[None, None].float()
        if mask_in.shape[-2:] != (size, size):
            mask_in = F.interpolate(mask_in, (size, size), mode="bilinear", align_corners=False, antialias=True)
            mask_in = (mask_in >= 0.5).float()
        high_res = mask_in * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
        logits = F.interpolate(high_res, (size // 4, size // 4), mode="bilinear", align_corners=False, antialias=True)
        s0, s1, s2, _ = self._features(frame)
        points = (s2.new_zeros(1, 1, 2), torch.full((1, 1), -1, dtype=torch.int64, device=s2.device))
        sparse, dense = model.sam_prompt_encoder(points, None, model.mask_downsample(mask_in))
        _, _, tokens, _ = model.sam_mask_decoder(s2, model.sam_prompt_encoder.get_dense_pe(), sparse, dense, False,
                                                 (s0, s1))
        present = mask_in.flatten(1).gt(0).any(dim=1, keepdim=True).float()  # (1, 1)
        pointer = present * model.obj_ptr_proj(tokens[:, 0]) + (1 - present) * model.no_obj_ptr
        object_score = present * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
        output = FrameOutput(logits, pointer, object_score, score=1.0)
        output.memory = self._encode_memory(s2, output, binarize=True)
        self._condition_on(frame, obj_id, output)
        return output.logits

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.num_frames:
            raise ValueError(f"frame {frame} is outside 0..{self.num_frames - 1}")

    def _condition_on(self, frame: int, obj_id: int, output: FrameOutput) -> None:
        state = self.objects.setdefault(obj_id, ObjectState())
        state.conditioning[frame] = output
        state.tracked.pop(frame, None)

    # ---- propagation ----------------------------------------------------------------

    @torch.inference_mode()
    def propagate(self, start: int | None = None, reverse: bool = False,
                  max_frames: int | None = None) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Track every object frame by frame from ``start`` (default: the first prompted frame).

        Yields ``(frame, {obj_id: low-res logits (1, 1, 4h, 4w)})`` for ``start`` and each
        following frame (preceding with ``reverse``), up to ``max_frames`` more.
        """
        if not self.objects:
            raise RuntimeError("no object is prompted: call add_points first")
        if start is None:
            start = min(t for state in self.objects.values() for t in state.conditioning)
        steps = self.num_frames if max_frames is None else max_frames
        if reverse:
            order = range(start, max(start - steps, 0) - 1, -1) if start > 0 else range(0)
        else:
            order = range(start, min(start + steps, self.num_frames - 1) + 1)
        for frame in order:
            yield frame, {obj_id: output.logits for obj_id, output in self.track(frame, reverse).items()}

    @torch.inference_mode()
    def track(self, frame: int, reverse: bool = False, obj_ids: Iterable[int] | None = None) -> dict[int, FrameOutput]:
        """One step of :meth:`propagate`: the outputs of ``obj_ids`` (default all) on ``frame``.

        A prompted frame gives its prompted output; any other is decoded from the memories
        of the frames before it (after it with ``reverse``) and becomes a memory itself.
        Callers that drive their own loop (e.g. stop objects on the way) step frames in
        order, as :meth:`propagate` does.
        """
        self._check_frame(frame)
        results = {}
        for obj_id in self.objects if obj_ids is None else obj_ids:
            state = self.objects[obj_id]
            if frame in state.conditioning:
                results[obj_id] = state.conditioning[frame]
                continue
            output = self._track(state, frame, reverse)
            state.tracked[frame] = output
            results[obj_id] = output
            self._forget(state, frame)
        return results

    def _track(self, state: ObjectState, frame: int, reverse: bool) -> FrameOutput:
        s0, s1, s2, pos = self._features(frame)
        conditioned = self._condition(state, frame, s2, pos, reverse)
        output = self._decode(conditioned, (s0, s1), None, multimask=True)
        output.memory = self._encode_memory(s2, output, binarize=False)
        return output

    def _condition(self, state: ObjectState, frame: int, features: torch.Tensor, pos: torch.Tensor,
                   reverse: bool) -> torch.Tensor:
        """Memory attention of ``features (1, C, h, w)`` on the object's memories and pointers."""
        model = self.model
        num_maskmem = model.num_maskmem
        sign = -1 if reverse else 1
        memories = [(0, out) for out in state.conditioning.values()]
        for t_pos in range(1, num_maskmem):
            earlier = state.tracked.get(frame - sign * (num_maskmem - t_pos))
            if earlier is not None:
                memories.append((t_pos, earlier))
        reference = memories[0][1].memory
        memory_pos = model.memory_encoder.position_encoding.encoding(reference.shape[-2:], reference.device,
                                                                     torch.float32)
        tokens, token_pos = [], []
        for t_pos, out in memories:
            tokens.append(out.memory.float().flatten(2).transpose(1, 2))
            tpos = model.maskmem_tpos_enc[num_maskmem - t_pos - 1].view(1, 1, -1)
            token_pos.append(memory_pos.flatten(2).transpose(1, 2) + tpos)

        # Object pointers: conditioning frames on the way here, then up to 15 frames before.
        max_pointers = min(self.num_frames, MAX_POINTERS)
        distances, pointers = [], []
        for t, out in state.conditioning.items():
            if (t >= frame) if reverse else (t <= frame):
                distances.append((frame - t) * sign)
                pointers.append(out.pointer)
        for step in range(1, max_pointers):
            t = frame - sign * step
            if not 0 <= t < self.num_frames:
                break
            if t in state.tracked:
                distances.append(step)
                pointers.append(state.tracked[t].pointer)
        pointer_tokens = 0
        if pointers:
            dim = features.shape[1]
            mem_dim = tokens[0].shape[-1]
            positions = torch.tensor(distances, dtype=torch.float32, device=features.device) / (max_pointers - 1)
            pointer_pos = model.obj_ptr_tpos_proj(sine_encoding_1d(positions, dim))  # (P, mem_dim)
            # Each C-wide pointer becomes C / mem_dim tokens sharing its position encoding.
            split = dim // mem_dim
            tokens.append(torch.cat(pointers).reshape(1, -1, mem_dim))
            token_pos.append(pointer_pos.repeat_interleave(split, dim=0)[None])
            pointer_tokens = len(pointers) * split
        current = features.flatten(2).transpose(1, 2)
        out = model.memory_attention(current, pos.flatten(2).transpose(1, 2), torch.cat(tokens, 1),
                                     torch.cat(token_pos, 1), pointer_tokens)
        return out.transpose(1, 2).reshape(features.shape)

    def _forget(self, state: ObjectState, frame: int) -> None:
        """Drop tracked outputs no later frame can read: farther than the pointer window
        from this frame and from every conditioning frame (propagation turns back there)."""
        anchors = [frame, *state.conditioning]
        for t in [t for t in state.tracked if min(abs(t - a) for a in anchors) >= MAX_POINTERS]:
            del state.tracked[t]

    # ---- decoder and memory encoder ---------------------------------------------------

    def _decode(self, embedding: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor],
                points: tuple[torch.Tensor, torch.Tensor] | None, multimask: bool) -> FrameOutput:
        model = self.model
        if points is None:  # no prompt: one padding point (the encoder adds a second)
            points = (embedding.new_zeros(1, 1, 2), torch.full((1, 1), -1, dtype=torch.int64, device=embedding.device))
        sparse, dense = model.sam_prompt_encoder(points, None, None)
        masks, iou, tokens, object_score = model.sam_mask_decoder(
            embedding, model.sam_prompt_encoder.get_dense_pe(), sparse, dense, multimask, high_res
        )
        present = object_score > 0
        masks = torch.where(present[:, :, None, None], masks, torch.full_like(masks, NO_OBJECT_LOGIT))
        best = int(iou[0].argmax()) if multimask else 0
        token = tokens[:, best] if tokens.shape[1] > 1 else tokens[:, 0]
        pointer = model.obj_ptr_proj(token)
        weight = present.float()
        pointer = weight * pointer + (1 - weight) * model.no_obj_ptr
        return FrameOutput(masks[:, best : best + 1].float(), pointer, object_score, score=float(iou[0, best]))

    def _encode_memory(self, features: torch.Tensor, output: FrameOutput, binarize: bool) -> torch.Tensor:
        model = self.model
        size = model.image_size
        logits = F.interpolate(output.logits, (size, size), mode="bilinear", align_corners=False)
        # A prompted frame's mask enters as the user sees it (binary), others as probabilities.
        mask = (logits > 0).float() if binarize else torch.sigmoid(logits)
        memory, _ = model.memory_encoder(features, mask * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS)
        absent = 1.0 - (output.object_score > 0).float()
        memory = memory + absent[:, :, None, None] * model.no_obj_embed_spatial[:, :, None, None]
        return memory.to(torch.bfloat16)
