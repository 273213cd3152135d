"""The Annotate widget: prompts in napari layers -> live SAM preview -> labels.

Wiring only: the rules of the loop (which prediction runs, refinement, mask prompts, what
an accept writes) are the :class:`~napari_sam.annotate.AnnotationSession`'s; the controls
are laid out in ``annotate_ui``, workers built in ``workers``, output layers written by
``outputs``. A click whose tiles are embedded is decoded at once on the GUI thread (a
decoder run is ~10 ms); loading, embedding, text and multi-tile predictions run in worker
threads. Results that arrive after the user moved on are dropped (each carries the plane
key and the prompt revision it was made for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Points, Shapes
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer, Signal

from . import layers as L, outputs, workers
from .automatic_section import AutomaticSection
from .propagate_section import PropagateSection
from .plane import PlaneTracker
from .annotate_ui import KEYS, NO_TEXT_TOOLTIP, PREFETCH_RADIUS, PREVIEW_NAME, SELECTED_ID, AnnotateControls
from .registry import finetuned_models
from ..annotate import AnnotationSession, paint

# Prompt events of one gesture (several shapes added at once) arrive within one turn of
# the event loop: a zero-delay timer gathers them into one prediction.
DEBOUNCE_MS = 0
EMBED_DELAY_MS = 60  # scrubbing through a stack does not start (and cancel) a job per slice


class AnnotateWidget(AnnotateControls):
    """Segment objects with point, box, mask and text prompts and commit them as labels.

    Signals (for scripts and tests): ``model_loaded``, ``embedded`` (the tiles the current
    plane needs are embedded), ``predicted`` (candidates or an empty preview are shown),
    ``committed(int)`` (pixels written). ``busy`` is False once nothing is pending.
    """

    model_loaded = Signal()
    embedded = Signal()
    predicted = Signal()
    committed = Signal(int)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model = self.predictor = self.store = None
        self.session: AnnotationSession | None = None
        self._model_source = None  # (name or path, device)
        self._generation = 0  # bumped when the model changes: older results are dropped
        self._loader = workers.ModelLoader(loaded=self._guard(self._install_model),
                                           errored=self._guard(self._on_model_error),
                                           finished=self._guard(self._on_model_finished))
        self._request = None  # the prediction waiting for tiles or running
        self._wants_prediction = self._commit_pending = False
        self._suspend_prompt_events = False
        self._revision, self._result_revision = 0, -1
        self._next_sign = L.POSITIVE
        self._embedder = workers.Embedder(
            started=lambda message, cancellable: self.set_busy(message, cancellable, total=1),
            returned=self._guard(self._on_embed_returned), errored=self._guard(self._on_embed_error),
            finished=self._guard(self._on_embed_finished))
        self._embedder.relay.progress.connect(self.set_progress)
        self._predictions = workers.Predictions(
            returned=self._guard(self._on_predict_returned), errored=self._guard(self._on_predict_error),
            warned=self._guard(self.warn), finished=self._guard(self._on_predict_finished))
        self._debounce = QTimer(self, singleShot=True, interval=DEBOUNCE_MS, timeout=self._predict_now)
        self._embed_timer = QTimer(self, singleShot=True, interval=EMBED_DELAY_MS, timeout=self._schedule_embedding)
        self._plane = PlaneTracker(self.viewer, self, changed=self._on_plane_changed,
                                   pixels_changed=self._on_pixels_changed, error=self.set_status)
        self._connect()
        self.automatic_section, self.propagate_section = AutomaticSection(self), PropagateSection(self)
        self._plane.image_changed()
        self._on_image_changed()

    def _connect(self) -> None:
        for signal, slot in (
            (self.load_button.clicked, self.load_model), (self.add_layers_button.clicked, self.add_prompt_layers),
            (self.sign_button.clicked, self.toggle_sign), (self.next_button.clicked, self.next_candidate),
            (self.accept_button.clicked, self.accept), (self.clear_button.clicked, self.clear),
            (self.cancel_button.clicked, self.cancel), (self.candidate_list.currentRowChanged, self._on_candidate_row),
            (self.text_edit.editingFinished, self._on_text_entered),  # on Enter: "nu" is no prompt of its own
            (self.image_combo.layer_changed, self._on_image_changed),
            (self.model_combo.currentIndexChanged, self._on_model_choice_changed),
            (self.model_path.editingFinished, self._on_model_choice_changed),
            (self.device_combo.currentIndexChanged, self._on_model_choice_changed),
            (finetuned_models().use_requested, self._use_finetuned),
            (self.memory_spin.valueChanged, self._on_memory_changed),
            (self.cache_dir_edit.editingFinished, self._on_cache_dir_changed),
            (self.prefetch_check.toggled, lambda _: self._schedule_embedding()),
            (self.tile_check.toggled, self._on_tiling_changed),
            (self.points_combo.layer_changed, self._on_prompt_layers_changed),
            (self.boxes_combo.layer_changed, self._on_prompt_layers_changed),
            (self.mask_combo.layer_changed, self._on_prompt_layers_changed),
            (self.viewer.layers.events.removed, self._on_layer_removed),
        ):
            signal.connect(slot)
        actions = {"accept": self.accept, "next_candidate": self.next_candidate, "clear": self.clear,
                   "toggle_sign": self.toggle_sign}
        for name, key in KEYS.items():
            self.viewer.bind_key(key, self._guard(lambda viewer, action=actions[name]: action()), overwrite=True)
        self.show_sign(self._next_sign)
        self._on_prompt_layers_changed()

    # ------------------------------------------------------------------ public

    image_layer = property(lambda self: self.image_combo.layer())
    points_layer = property(lambda self: self.points_combo.layer())
    boxes_layer = property(lambda self: self.boxes_combo.layer())
    labels_layer = property(lambda self: self.labels_combo.layer())
    preview_layer = property(lambda self: outputs.find(self.viewer, PREVIEW_NAME))

    @property
    def candidates(self) -> list:
        """The shown result: one ``Candidates`` per object (several for several boxes)."""
        return [] if self.session is None else self.session.candidates

    choice = property(lambda self: 0 if self.session is None else self.session.choice)

    @property
    def busy(self) -> bool:
        """True while anything is pending: a worker, a debounced prediction or a commit."""
        return bool(self._loader.worker or self._embedder.worker or self._predictions.worker or self._commit_pending
                    or self._debounce.isActive() or self._embed_timer.isActive())

    @property
    def plane_ready(self) -> bool:
        """Whether the current plane can be decoded now (every tile it needs is embedded)."""
        return self.session is not None and self.session.tiled is not None and not self._missing_tiles()

    def use_model(self, model, name: str = "custom") -> None:
        """Use an already built model (scripts, tests) instead of loading one."""
        self._install_model(model, (name, None))

    def load_model(self) -> None:
        """(Re)load the model chosen in the widget in a worker thread."""
        self._start_model_worker()

    def add_prompt_layers(self) -> None:
        """Create a Points and a Shapes layer for prompts, placed like the image."""
        image = self.image_layer
        if image is None:
            self.set_status("Open an image first.")
            return
        points, boxes = outputs.add_prompt_layers(self.viewer, image, self._next_sign)
        self.points_combo.set_layer(points)
        self.boxes_combo.set_layer(boxes)
        self.viewer.layers.selection.active = points

    def toggle_sign(self) -> None:
        """Flip the sign of the next point: positive (object) <-> negative (background)."""
        self._next_sign = L.NEGATIVE if self._next_sign == L.POSITIVE else L.POSITIVE
        points = self.points_layer
        if points is not None:
            L.ensure_sign_feature(points)
            points.feature_defaults = {L.SIGN_FEATURE: self._next_sign}
        self.show_sign(self._next_sign)

    def next_candidate(self) -> None:
        """Show the next candidate mask of a single object."""
        if self.session is not None and self.session.next_candidate():
            self._show_result()

    def accept(self) -> None:
        """Write the shown mask(s) into the labels layer (waits for a pending prediction)."""
        if self._result_is_current():
            self._commit_now()
        elif self._debounce.isActive() or self._predictions.worker is not None or self._wants_prediction:
            self._commit_pending = True
        else:
            self.set_status("Nothing to accept: add a point or a box first.")

    def clear(self) -> None:
        """Remove the prompts on the current plane and the preview."""
        self._commit_pending = self._wants_prediction = False
        ref, image = self._ref, self.image_layer
        if ref is not None and image is not None:
            self._suspend_prompt_events = True
            try:
                outputs.remove_prompts_on_plane((self.points_layer, self.boxes_layer), image, ref, self.viewer.dims.point)
            finally:
                self._suspend_prompt_events = False
        self._reset_result()

    def cancel(self) -> None:
        """Stop the running embedding; it restarts when the plane changes or a prompt is added."""
        if self._embedder.cancel():
            self.set_status("Embedding cancelled.")
        self._wants_prediction = self._commit_pending = False

    # ------------------------------------------------------------------ image and plane

    @property
    def _ref(self) -> L.PlaneRef | None:
        return self._plane.ref

    @property
    def channel_axis(self) -> int | None:
        return self._plane.channel_axis

    def _on_image_changed(self) -> None:
        if self.image_layer is not None and not any(isinstance(layer, (Points, Shapes)) for layer in self.viewer.layers):
            self.add_prompt_layers()

    def _on_plane_changed(self, new: bool) -> None:
        if new:
            self._set_session_plane()
            self._reset_result()
            self._on_prompts_changed()  # prompts on the new plane, if any
        self._embed_timer.start()

    def _set_session_plane(self) -> None:
        self._request, self._embedder.stopped_key = None, None
        try:
            self._plane.point_session(self.session, whole=not self.tile_check.isChecked())
        except ValueError as error:
            self.notify_error("cannot segment this plane", error)

    def _on_tiling_changed(self, *_) -> None:
        self._on_pixels_changed()  # other tiles
        self._on_plane_changed(True)

    def _on_pixels_changed(self) -> None:
        if self.session is not None:  # embed again (the store knows the content)
            self.session.forget_embeddings()

    # ------------------------------------------------------------------ model

    def _use_finetuned(self, path: str) -> None:
        """Switch to a fine-tuned model (the Fine-tune widget's "use in Annotate")."""
        index = self.model_combo.findData(path)
        if index < 0:
            return
        self.model_combo.setCurrentIndex(index)  # reloads if another model is loaded
        if self.model is None and self._loader.worker is None:
            self._start_model_worker()

    def _on_model_choice_changed(self, *_) -> None:
        if self.model is not None and self._model_source != self.model_choice():
            self._start_model_worker()

    def _on_memory_changed(self, value: int) -> None:
        if self.store is not None:
            self.store.memory_bytes = int(value * 2**20)

    def _on_cache_dir_changed(self) -> None:
        if self.predictor is not None:
            self._make_session()

    def _make_session(self) -> None:
        from ..inference.embeddings import EmbeddingStore

        cache_dir = self.cache_dir_edit.text().strip() or None
        self.store = EmbeddingStore(self.predictor.model, self.predictor.normalization,
                                    memory_mb=self.memory_spin.value(), cache_dir=cache_dir)
        self.session = AnnotationSession(self.predictor, self.store)
        self._set_session_plane()

    def _start_model_worker(self) -> None:
        name, device = self.model_choice()
        if not name:
            self.set_status("Choose a checkpoint file first.")
            return
        self.set_busy(f"Loading model {Path(name).name} …")
        self._loader.load(name, device)

    def _on_model_error(self, error) -> None:
        self._wants_prediction = self._commit_pending = False
        self.notify_error("could not load the model", error)

    def _on_model_finished(self) -> None:
        self._set_idle()
        self._schedule_embedding()

    def _install_model(self, model, source) -> None:
        from ..inference.predictor import Predictor

        self._loader.forget()
        self._generation += 1
        self.model, self.predictor, self._model_source = model, Predictor(model), source
        self._make_session()
        if not self.update_text_field(model, str(source[0])):
            self.warn(f"napari-sam: text prompt ignored: {NO_TEXT_TOOLTIP.format(name=Path(str(source[0])).name)}")
        self._reset_result()
        self.set_status(f"Model {Path(str(source[0])).name} on {model.device}.")
        self.model_loaded.emit()
        self._schedule_embedding()
        if self._wants_prediction:
            self._on_prompts_changed()

    def _on_text_entered(self) -> None:
        text = self.text_edit.text()
        if text and not text.strip():
            show_warning("napari-sam: empty text prompt ignored")
        self._on_prompts_changed()

    # ------------------------------------------------------------------ embeddings

    def _missing_tiles(self) -> list:
        """Tiles of the current plane to embed before the next prediction."""
        if self.session is None or self._ref is None:
            return []
        return self.session.tiles_to_embed(self._request if self._wants_prediction else None)

    def _schedule_embedding(self) -> None:
        """Start the next embedding job: what the current plane needs first, then neighbours."""
        prefetch = None
        if self.prefetch_check.isChecked():
            prefetch = lambda: workers.prefetch_target(  # noqa: E731
                self.session, self._ref, self.image_layer, self._plane.prefetch_axis, PREFETCH_RADIUS)
        self._embedder.schedule(self.session, self._ref, self._missing_tiles(), self._generation, prefetch)

    def _on_embed_returned(self, result) -> None:
        job, done = result
        if job.generation != self._generation or self.session is None:
            return
        self.session.mark_embedded(job.key, done)
        if done and self._ref is not None and job.key == self._ref.key and not self._missing_tiles():
            self.set_status("Ready: add points or boxes." if not self._wants_prediction else "")
            self.embedded.emit()
            if self._wants_prediction:
                self._predict_now()

    def _on_embed_error(self, job: workers.EmbedJob, error) -> None:
        self._embedder.stopped_key = job.key
        if not job.prefetch:
            self._wants_prediction = self._commit_pending = False
        self.notify_error("could not embed the plane", error)

    def _on_embed_finished(self) -> None:
        self._set_idle()
        self._schedule_embedding()

    # ------------------------------------------------------------------ prompts -> preview

    def _on_prompt_layers_changed(self) -> None:
        self._plane.watch_prompts((self.points_layer, self.boxes_layer), self._on_prompts_changed)
        points = self.points_layer
        if points is not None and L.SIGN_FEATURE in points.features.columns:
            points.feature_defaults = {L.SIGN_FEATURE: self._next_sign}
        self._on_prompts_changed()

    def _on_prompts_changed(self, event=None) -> None:
        if self._suspend_prompt_events:
            return
        if event is not None and getattr(event, "action", None) in ("adding", "removing", "changing"):
            return  # the matching "added" / "removed" / "changed" follows
        self._revision += 1
        self._debounce.start()
        if event is not None and self.session is not None and self._predictions.worker is None:
            self._debounce.stop()  # a click is decoded now, not after Qt drew the new point: a frame sooner
            self._predict_now()

    def _predict_now(self) -> None:
        try:
            text = self.text_edit.text() if self.text_edit.isEnabled() else None
            prompt_set = self._plane.prompt_set(self.points_layer, self.boxes_layer, text)
        except ValueError as error:
            self.notify_error("invalid prompt", error)
            return
        if prompt_set is None or prompt_set.empty:
            self._wants_prediction, self._request, self._commit_pending = False, None, False
            self._reset_result(keep_revision=True)
            self._result_revision = self._revision
            self.predicted.emit()
            return
        self._wants_prediction = True
        session = self.session
        if session is None:
            if self._loader.worker is None:
                self._start_model_worker()
            return
        if session.tiled is None:
            return
        try:
            self._request = session.request(prompt_set, revision=self._revision, split=self.split_check.isChecked(),
                                            existing=self._plane.existing_label(self.mask_combo.layer(), prompt_set))
        except ValueError as error:
            self._wants_prediction = self._commit_pending = False
            self.notify_error("invalid prompt", error)
            return
        if self._missing_tiles():
            if self._embedder.stopped_key == self._ref.key:
                self._embedder.stopped_key = None  # a new prompt asks again
            self._schedule_embedding()
        else:
            self._predictions.run(session, self._request, self._generation)

    def _on_predict_returned(self, returned) -> None:
        generation, result = returned
        request = result.request
        if generation != self._generation or request.revision != self._revision or self._ref is None:
            return  # the prompts or the plane changed meanwhile: a new run follows
        if request.key != self._ref.key or not self.session.show(result):
            return
        self._wants_prediction, self._request = False, None
        self._result_revision = request.revision
        self._show_result()
        if request.prompt_set.points_ignored:
            self.set_status("Several boxes: points are ignored (one object per box).")
        self.predicted.emit()
        if self._commit_pending:
            self._commit_pending = False
            self._commit_now()

    def _on_predict_error(self, error) -> None:
        self._wants_prediction = self._commit_pending = False
        self.notify_error("prediction failed", error)

    def _on_predict_finished(self, dirty: bool) -> None:
        if dirty:
            self._predict_now()
        elif self._commit_pending and not self._debounce.isActive() and not self._wants_prediction:
            self._commit_pending = False

    def _result_is_current(self) -> bool:
        session, ref = self.session, self._ref
        return (session is not None and session.result is not None and ref is not None
                and self._result_revision == self._revision and not self._debounce.isActive()
                and session.result.request.key == ref.key)

    # ------------------------------------------------------------------ showing results

    def _on_candidate_row(self, row: int) -> None:
        candidates = self.candidates
        if len(candidates) == 1 and 0 <= row < len(candidates[0]) and row != self.choice:
            self.session.choose(row)
            self._show_result()

    def _show_result(self) -> None:
        self.show_candidates(self.candidates, self.choice)
        image, ref = self.image_layer, self._ref
        if image is not None and ref is not None:
            outputs.show_preview(self.viewer, PREVIEW_NAME, image, self.session.preview(ref.shape),
                                 (self.points_layer, self.boxes_layer))

    def _reset_result(self, keep_revision: bool = False) -> None:
        if not keep_revision:
            self._revision += 1
        if self.session is not None:
            self.session.clear_result()
        self.candidate_list.clear()
        outputs.clear_preview(self.viewer, PREVIEW_NAME)

    # ------------------------------------------------------------------ commit

    def _commit_now(self) -> None:
        try:
            self._commit()
        except Exception as error:  # noqa: BLE001 - e.g. a read-only labels array: tell, never crash
            self.notify_error("cannot write the labels", error)

    def _commit(self) -> None:
        session, ref, image = self.session, self._ref, self.image_layer
        if session is None or session.result is None or ref is None or image is None:
            return
        labels = self.labels_layer
        if labels is None:  # a new layer, like the image without its channel axis
            labels = outputs.new_labels_layer(self.viewer, image, self.channel_axis, (self.points_layer, self.boxes_layer))
            self.labels_combo.set_layer(labels)
        index = L.labels_plane_index(labels, image, ref, self.viewer.dims.point)
        plan = session.plan_commit(
            next_id=L.next_label_id(labels), selected_id=int(labels.selected_label),
            use_selected=self.id_combo.currentText() == SELECTED_ID, refine_target=self.mask_combo.layer() is labels,
            split=self.split_check.isChecked(), preserve=not self.overwrite_check.isChecked())
        if not plan.masks:
            self.set_status("Nothing written: the mask holds no object of 10 pixels or more.")
            return
        changed = L.write_edit(labels, index, paint(np.asarray(L.layer_array(labels)[index]), plan))
        self.set_status(f"Wrote {plan.description} ({changed} pixels changed; Ctrl+Z in the labels layer undoes it).")
        self.clear()
        self.committed.emit(changed)

    # ------------------------------------------------------------------ status

    def _guard(self, handler):
        return workers.guarded(self, handler)

    def _on_layer_removed(self, event=None) -> None:
        if len(self.viewer.layers) == 0:  # the viewer is closing (or was emptied): stop work
            if self._embedder.job is not None:
                self._embedder.job.cancel.set()
            self._debounce.stop()
            self._embed_timer.stop()
            self._wants_prediction = self._commit_pending = False

    def _set_idle(self) -> None:
        if self._loader.worker is None and self._embedder.worker is None:
            self.hide_progress()


def annotate_widget(napari_viewer) -> AnnotateWidget:
    """npe2 entry point."""
    return AnnotateWidget(napari_viewer)


__all__ = ["KEYS", "PREVIEW_NAME", "AnnotateWidget", "annotate_widget"]
