"""Worker threads of the Annotate widget: load a model, embed tiles, run a prediction.

Each factory returns a napari ``thread_worker`` that is not started yet, with its
``returned`` / ``errored`` handlers connected at creation (so superqt does not re-raise
an error into the Qt loop). Heavy work only; what to do with the result is the widget's.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from . import layers as L
from .encoding import EncodingCancelled, watch_encoder


@dataclass
class EmbedJob:
    """Tiles of one plane being embedded; ``cancel`` stops it at the next encoder block."""

    key: tuple
    ref: L.PlaneRef
    indices: list  # tile indices
    prefetch: bool
    generation: int
    cancel: threading.Event = field(default_factory=threading.Event)


class ProgressRelay(QObject):
    """Carries encoder progress from a worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


def guarded(widget, handler):
    """``handler`` for a worker signal or a key, dropped once ``widget`` is deleted (the
    viewer closed while a worker ran)."""

    def run(*args):
        try:
            widget.objectName()
        except RuntimeError:  # the Qt object is gone; nothing to update
            return
        handler(*args)

    return run


def _worker(function, returned, errored, finished):
    worker = create_worker(function, _start_thread=False, _connect={"returned": returned, "errored": errored})
    worker.finished.connect(lambda: finished(worker))
    return worker


class ModelLoader:
    """Loads a model (a name or a checkpoint path) in a worker; only the latest request counts.

    ``loaded(model, (name, device))`` on success, ``errored(error)``, then ``finished()``.
    """

    def __init__(self, *, loaded, errored, finished) -> None:
        self.worker = None
        self._latest = 0
        self._loaded, self._errored, self._finished = loaded, errored, finished

    def load(self, name: str, device: str) -> None:
        from ..checkpoints import load_model

        self._latest += 1
        request = self._latest
        self.worker = _worker(lambda: (request, load_model(name, None if device == "auto" else device)),
                              self._on_returned(name, device), self._errored, self._on_finished)
        self.worker.start()

    def forget(self) -> None:
        """A model was installed otherwise: drop what a running load returns."""
        self._latest += 1

    def _on_returned(self, name: str, device: str):
        def returned(result):
            request, model = result
            if request == self._latest:
                self._loaded(model, (name, device))

        return returned

    def _on_finished(self, worker) -> None:
        if self.worker is worker:
            self.worker = None
        self._finished()


def embed_worker(job: EmbedJob, tiled, tiles: list, model, relay: ProgressRelay, *, returned, errored, finished):
    """Embeds ``tiles`` of ``tiled``'s plane into its store; returns ``(job, indices done)``.

    Progress counts encoder blocks over all tiles; a cancelled job returns the tiles it
    finished.
    """

    def embed():
        done = []
        for k, tile in enumerate(tiles):

            def progress(blocks_done, blocks, k=k):
                relay.progress.emit(k * blocks + blocks_done, blocks * len(tiles))

            try:
                with watch_encoder(model, progress, job.cancel):
                    tiled.embedding(tile)
            except EncodingCancelled:
                break
            done.append(tile.index)
        return job, done

    return _worker(embed, returned, errored, finished)


def predict_worker(session, request, generation: int, *, returned, errored, warned, finished):
    """Runs ``session.predict(request)``; returns ``(generation, result)``.

    Warnings the prediction raises (e.g. a text the model does not know) arrive once
    each through ``warned(message)``.
    """
    worker = _worker(lambda: (generation, session.predict(request)), returned, errored, finished)
    seen: set = set()  # text alone over tiles warns once per tile: tell the user once

    def on_warning(warning):  # the arguments of warnings.showwarning, message first
        message = f"napari-sam: {warning[0]}"
        if message not in seen:
            seen.add(message)
            warned(message)

    worker.warned.connect(on_warning)
    return worker


def prefetch_target(session, ref: L.PlaneRef, image_layer, axis: int | None, radius: int):
    """``(ref, tiled, tiles)`` to precompute next, or None: the rest of the current plane,
    then planes up to ``radius`` away along stack ``axis`` (default the last stack axis),
    nearest first."""
    tiled = session.tiled
    rest = [t for t in tiled.grid if not session.is_embedded(ref.key, t)]
    if rest:
        return ref, tiled, rest
    if axis is None or axis == ref.channel_axis:
        stack_axes = [a for a in range(image_layer.ndim - 2) if a != ref.channel_axis]
        if not stack_axes:
            return None
        axis = stack_axes[-1]
    for distance in range(1, radius + 1):
        for step in (distance, -distance):
            neighbour = L.shifted_ref(ref, axis, step, image_layer)
            if neighbour is None:
                continue
            tiled = session.make_tiled(L.LazyPlane(L.layer_array(image_layer), neighbour))
            rest = [t for t in tiled.grid if not session.is_embedded(neighbour.key, t)]
            if rest:
                return neighbour, tiled, rest
    return None


class Embedder:
    """Runs the Annotate widget's embedding jobs, one at a time: the tiles the current
    plane needs first, then (when asked) the rest of the plane and its neighbours.

    Parameters
    ----------
    started : callable(message, cancellable)
        A job started (say what it embeds).
    returned : callable((job, indices done))
    errored : callable(job, error)
    finished : callable()
        The job ended (returned, failed or cancelled): schedule the next one.
    """

    def __init__(self, *, started, returned, errored, finished) -> None:
        self.relay = ProgressRelay()
        self.worker = None
        self.job: EmbedJob | None = None
        self.stopped_key = None  # a plane whose embedding was cancelled or failed
        self._started, self._returned, self._errored, self._finished = started, returned, errored, finished

    def schedule(self, session, ref: L.PlaneRef | None, missing: list, generation: int, prefetch=None) -> None:
        """Start embedding ``missing`` tiles of ``ref``'s plane, or else ``prefetch()``'s
        ``(ref, tiled, tiles)``; a running job no longer wanted is cancelled."""
        job = self.job
        if self.worker is not None:
            if job is None:
                return
            covers = ref is not None and job.key == ref.key and {t.index for t in missing} <= set(job.indices)
            if ref is None or job.generation != generation or (missing and not covers):
                job.cancel.set()  # finishes soon; `finished` schedules again
            elif covers and job.prefetch:
                job.prefetch = False  # the user moved to the plane being precomputed
            return
        if session is None or session.tiled is None or ref is None:
            return
        if missing:
            if self.stopped_key != ref.key:
                self._start(session, ref, session.tiled, missing, False, generation)
        elif prefetch is not None:
            found = prefetch()
            if found is not None:
                self._start(session, *found, True, generation)

    def cancel(self) -> bool:
        """Stop the running job (its plane is not embedded again until asked); False if none."""
        if self.job is None:
            return False
        self.job.cancel.set()
        self.stopped_key = self.job.key
        return True

    def _start(self, session, ref, tiled, tiles, prefetch: bool, generation: int) -> None:
        job = EmbedJob(ref.key, ref, [t.index for t in tiles], prefetch, generation)
        self.job = job
        self.worker = embed_worker(job, tiled, tiles, session.predictor.model, self.relay, returned=self._returned,
                                   errored=lambda error: self._errored(job, error), finished=self._on_finished)
        where = "plane " + ", ".join(str(i) for i in ref.stack_position) if ref.stack_position else "the image"
        what = f"{'Precomputing' if prefetch else 'Embedding'} {where}"
        self._started(what + (f" ({len(tiles)} tiles) …" if len(tiles) > 1 else " …"), not prefetch)
        self.worker.start()

    def _on_finished(self, worker) -> None:
        if self.worker is worker:
            self.worker = self.job = None
        self._finished()


class Predictions:
    """Runs the Annotate widget's predictions one at a time.

    A prediction of one embedded tile without text is decoded at once on the GUI thread
    (~10 ms: a worker thread's start-up and signal round trip would cost more); text (its
    sentence encoder), several tiles and splits run in a worker. A request made while a
    worker runs marks the run ``dirty``: ``finished(dirty)`` asks for the latest prompts.

    Parameters
    ----------
    returned : callable((generation, Result))
    errored : callable(error)
    warned : callable(message)
    finished : callable(dirty: bool)
        A worker ended.
    """

    def __init__(self, *, returned, errored, warned, finished) -> None:
        self.worker = None
        self.dirty = False
        self._returned, self._errored, self._warned, self._finished = returned, errored, warned, finished

    @staticmethod
    def quick(request) -> bool:
        return request.prompt_set.text is None and len(request.tiles) == 1 and not request.split

    def run(self, session, request, generation: int) -> None:
        if self.worker is not None:
            self.dirty = True
        elif self.quick(request):
            self._run_here(session, request, generation)
        else:
            self.worker = predict_worker(session, request, generation, returned=self._returned,
                                         errored=self._errored, warned=self._warned, finished=self._on_finished)
            self.worker.start()

    def _run_here(self, session, request, generation: int) -> None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = session.predict(request)
        except Exception as error:  # noqa: BLE001 - shown like a worker's error
            self._errored(error)
            return
        for message in dict.fromkeys(f"napari-sam: {warning.message}" for warning in caught):
            self._warned(message)
        self._returned((generation, result))

    def _on_finished(self, worker) -> None:
        if self.worker is worker:
            self.worker = None
        dirty, self.dirty = self.dirty, False
        self._finished(dirty)
