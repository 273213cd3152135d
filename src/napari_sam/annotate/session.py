"""The annotation loop without a GUI: one plane, its prompts, the shown result, the commit.

An :class:`AnnotationSession` owns the current plane (its position key and a
``TiledPredictor`` over it, embeddings in an ``EmbeddingStore``), which of its tiles are
embedded, the result shown for the current prompts (candidates, the chosen one, the
prompts and mask prompt that made it) and turns an accept into a
:class:`~napari_sam.annotate.commit.CommitPlan`. The napari widget and ``napari-sam
segment`` drive the same object; neither holds a rule of its own.

One click, in order::

    request = session.request(PromptSet.make(points, labels, boxes, text))   # GUI thread
    session.missing(request.tiles)            # -> embed these first (a worker)
    result = session.predict(request)         # any thread (decoder runs here)
    session.show(result)                      # GUI thread: becomes the shown result
    plan = session.plan_commit(next_id=...)   # on accept
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from ..inference.objects import split_objects
from ..inference.predictor import Candidates, Predictor
from ..inference.prompts import MaskPrompt, Prompts
from ..inference.tiling import Tile, TiledPredictor
from .commit import CommitPlan, plan_commit
from .prompt_set import BOXES, BOXES_TEXT, TEXT, PromptSet


@dataclass(frozen=True, eq=False)
class Request:
    """One prediction, prepared on the GUI thread from the prompts of the current plane.

    Attributes
    ----------
    key : hashable
        The plane it is for.
    revision : int
        The caller's prompt revision (results of older revisions are dropped by it).
    prompt_set : PromptSet
    prompts : Prompts or None
        The validated one-object prompts, mask prompt included (None for several boxes).
    mask_label : int or None
        The label whose mask is the mask prompt (kept through refinements of it).
    refined : bool
        The mask prompt is the shown candidate's logits.
    split : bool
        Split the (text alone) mask into objects in :meth:`AnnotationSession.predict`.
    tiles : tuple of Tile
        The tiles the prediction decodes against (they must be embedded first).
    """

    key: Hashable
    revision: int
    prompt_set: PromptSet
    prompts: Prompts | None
    mask_label: int | None
    refined: bool
    split: bool
    tiles: tuple[Tile, ...]

    @property
    def mask_prompt(self) -> MaskPrompt | None:
        return None if self.prompts is None else self.prompts.mask_input


@dataclass(frozen=True, eq=False)
class Result:
    """A request's answer: one ``Candidates`` per object, and the split of a text-alone mask."""

    request: Request
    candidates: tuple[Candidates, ...]
    pieces: np.ndarray | None = None


class AnnotationSession:
    """Interactive segmentation of one plane at a time (no Qt, no napari).

    Parameters
    ----------
    predictor : Predictor
    store : EmbeddingStore, optional
        Embedding cache shared by every plane (built for ``predictor``'s model).
    tile_size : int, optional
        Tile side for large planes; default the model input (full resolution). A value at
        least the plane's size embeds the whole plane resized to the model input.

    Attributes
    ----------
    key : hashable or None
        The current plane's position (e.g. layer and stack index), None before a plane.
    tiled : TiledPredictor or None
        Over the current plane.
    result : Result or None
        The shown result; ``choice`` is the shown candidate of a single object.
    """

    def __init__(self, predictor: Predictor, store=None, *, tile_size: int | None = None) -> None:
        self.predictor = predictor
        self.store = store
        self.tile_size = tile_size
        self.key: Hashable | None = None
        self.tiled: TiledPredictor | None = None
        self.result: Result | None = None
        self.choice = 0
        self._embedded: set = set()  # (plane key, tile index)
        self._lock = threading.Lock()  # one decoder run at a time: the predictor holds an embedding

    # ---- the plane ------------------------------------------------------------------

    def make_tiled(self, plane) -> TiledPredictor:
        """A ``TiledPredictor`` over ``plane`` with this session's predictor, store and tiles.

        Raises ``ValueError`` for a plane that cannot be segmented (e.g. not 2D).
        """
        tiled = TiledPredictor(self.predictor, self.store, tile_size=self.tile_size)
        tiled.set_plane(plane)
        return tiled

    def set_plane(self, key: Hashable, plane) -> None:
        """Make ``plane`` (numpy or lazy, read only where prompted) current at position ``key``.

        Forgets the shown result. Raises ``ValueError`` (and keeps no plane) when the
        plane cannot be segmented.
        """
        self.key, self.tiled = None, None
        self.clear_result()
        self.tiled = self.make_tiled(plane)
        self.key = key

    def clear_plane(self) -> None:
        self.key, self.tiled = None, None
        self.clear_result()

    # ---- which tiles are embedded ----------------------------------------------------

    def mark_embedded(self, key: Hashable, indices) -> None:
        """Record that the tiles ``indices`` of plane ``key`` are in the store."""
        self._embedded.update((key, index) for index in indices)

    def is_embedded(self, key: Hashable, tile: Tile) -> bool:
        return (key, tile.index) in self._embedded

    def forget_embeddings(self) -> None:
        """New model, store or pixels: nothing is known to be embedded any more."""
        self._embedded = set()

    def missing(self, tiles) -> list[Tile]:
        """Those of ``tiles`` (of the current plane) not yet embedded, each once."""
        seen, missing = set(), []
        for tile in tiles:
            if tile.index not in seen and not self.is_embedded(self.key, tile):
                seen.add(tile.index)
                missing.append(tile)
        return missing

    def tiles_to_embed(self, request: Request | None = None) -> list[Tile]:
        """What the current plane needs embedded now: a plane of one tile as soon as it is
        shown, a larger one only under the prompts of ``request``."""
        if self.tiled is None:
            return []
        wanted = list(request.tiles) if request is not None else []
        if len(self.tiled.grid) == 1:
            wanted.append(self.tiled.grid.tiles[0])
        return self.missing(wanted)

    @property
    def ready(self) -> bool:
        """Whether the current plane can be decoded without running the encoder."""
        return self.tiled is not None and not self.tiles_to_embed()

    # ---- prompts -> prediction --------------------------------------------------------

    def request(self, prompt_set: PromptSet, *, revision: int = 0, existing: tuple[int, np.ndarray] | None = None,
                split: bool = False) -> Request:
        """Prepare the prediction of ``prompt_set`` on the current plane.

        Parameters
        ----------
        prompt_set : PromptSet
            Not empty.
        revision : int
            Stored in the request (for the caller to drop stale results).
        existing : (label, (H, W) bool mask), optional
            An existing object to refine: its mask is the mask prompt of points (with at
            most one box), in the frame of the tile the prediction uses.
        split : bool
            Split a text-alone mask into objects during :meth:`predict`.

        Refinement memory: when the prompts are the shown result's plus more points on the
        same object, the shown candidate's logits (with their frame) are the mask prompt.

        Raises
        ------
        ValueError
            Invalid prompts (outside the plane, ...), or no current plane.
        """
        tiled = self.tiled
        if tiled is None:
            raise ValueError("no plane to segment")
        if prompt_set.empty:
            raise ValueError("no prompt given: add a point, a box or a text")
        dispatch = prompt_set.dispatch
        if dispatch in (BOXES, BOXES_TEXT):  # one object per box: no mask prompt
            tiles = [tile for box in prompt_set.boxes for tile in tiled.tiles_for(box=box)]
            return Request(self.key, revision, prompt_set, None, None, False, False, tuple(tiles))
        mask_prompt, mask_label, refined = None, None, False
        shown = self.result
        if shown is not None and len(shown.candidates) == 1 and prompt_set.extends(shown.request.prompt_set):
            mask_prompt = shown.candidates[0].mask_prompt(self.choice)
            mask_label, refined = shown.request.mask_label, True
        points = prompt_set.points if len(prompt_set.points) else None
        labels = prompt_set.labels if points is not None else None
        prompts = tiled.prompts(points, labels, prompt_set.box, mask_prompt, prompt_set.text)
        if mask_prompt is None and existing is not None and points is not None:
            label, mask = existing
            mask_prompt = tiled.mask_prompt(mask, prompts)
            if mask_prompt is not None:  # built for these prompts' tile: no second validation
                prompts = dataclasses.replace(prompts, mask_input=mask_prompt)
                mask_label = int(label)
        split = split and dispatch == TEXT
        return Request(self.key, revision, prompt_set, prompts, mask_label, refined, split,
                       tuple(tiled.tiles_for(prompts=prompts)))

    def predict(self, request: Request) -> Result:
        """Run ``request`` (thread-safe; the decoder runs in the calling thread).

        Several boxes are decoded in one batch per tile, several boxes with a text one by
        one; everything else is one prediction. A text-alone mask is split into objects
        here when the request asks for it (seconds on a large plane: off the GUI thread).
        """
        tiled = self.tiled
        if tiled is None or request.key != self.key:
            raise ValueError("the request is for another plane")
        prompt_set = request.prompt_set
        with self._lock:
            if prompt_set.dispatch == BOXES:
                candidates = tiled.predict_boxes(prompt_set.boxes)
            elif prompt_set.dispatch == BOXES_TEXT:
                candidates = [tiled.predict(box=box, text=prompt_set.text) for box in prompt_set.boxes]
            else:
                candidates = [tiled.predict(prompts=request.prompts)]
        pieces = None
        if request.split and len(candidates[0]) == 1:
            pieces = split_objects(candidates[0].masks[0])
        return Result(request, tuple(candidates), pieces)

    # ---- the shown result -------------------------------------------------------------

    def show(self, result: Result) -> bool:
        """Make ``result`` the shown one (first candidate chosen); False if it is for another plane."""
        if result.request.key != self.key:
            return False
        self.result, self.choice = result, 0
        return True

    def clear_result(self) -> None:
        self.result, self.choice = None, 0

    @property
    def candidates(self) -> list[Candidates]:
        """One ``Candidates`` per object of the shown result (empty when none)."""
        return [] if self.result is None else list(self.result.candidates)

    def choose(self, index: int) -> None:
        """Show candidate ``index`` of a single object."""
        (candidates,) = self.candidates
        if not 0 <= index < len(candidates):
            raise IndexError(f"candidate {index} of {len(candidates)}")
        self.choice = int(index)

    def next_candidate(self) -> bool:
        """Cycle to the next candidate of a single object; False when there is no other."""
        candidates = self.candidates
        if len(candidates) != 1 or len(candidates[0]) < 2:
            return False
        self.choice = (self.choice + 1) % len(candidates[0])
        return True

    def preview_masks(self) -> list[np.ndarray]:
        """The masks an accept writes: the chosen candidate, or each box's best."""
        candidates = self.candidates
        if len(candidates) == 1:
            return [candidates[0].masks[self.choice]]
        return [c.best for c in candidates]

    def preview(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``(H, W)`` uint8: 0 background, ``k`` where the k-th object is (first wins; 255 at most)."""
        masks = self.preview_masks()
        if shape is None:
            shape = masks[0].shape if masks else self.tiled.grid.shape
        data = np.zeros(shape, np.uint8)
        for value, mask in enumerate(masks, start=1):
            data[mask & (data == 0)] = min(value, 255)
        return data

    # ---- accept -------------------------------------------------------------------------

    def plan_commit(self, *, next_id: int, selected_id: int = 0, use_selected: bool = False,
                    refine_target: bool = False, split: bool = False, preserve: bool = True) -> CommitPlan | None:
        """The :class:`CommitPlan` of the shown result, or None when nothing is shown.

        ``refine_target``: the layer written to is the one the mask prompt came from, so a
        refined label is replaced rather than written again as a new one. ``split``: one
        new label per object (reuses the split made during :meth:`predict`).
        See :func:`~napari_sam.annotate.commit.plan_commit` for the other arguments.
        """
        if self.result is None:
            return None
        masks = self.preview_masks()
        label = self.result.request.mask_label
        refine = label if refine_target and len(masks) == 1 else None
        pieces = self.result.pieces if self.choice == 0 else None
        return plan_commit(masks, next_id=next_id, selected_id=selected_id, use_selected=use_selected,
                           refine_label=refine, split=split, pieces=pieces, preserve=preserve)
