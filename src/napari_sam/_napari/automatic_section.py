"""The Annotate widget's "Segment all" section: every object of the shown plane at once.

The work is :class:`~napari_sam.automatic.AutomaticSegmenter`'s (AIS with an instance
decoder, else AMG); this module only runs it in a worker and writes its labels as one
undoable edit. :class:`JobSection` (run button, progress, Cancel, one job at a time) is
shared with the "Propagate" section.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QProgressBar, QPushButton, QSpinBox

from . import layers as L
from . import outputs
from .annotate_ui import row
from .workers import ProgressRelay, guarded
from ..annotate import CommitPlan, PlaneEdit, paint


class JobSection(QGroupBox):
    """A group of controls whose button runs one job in a worker, with progress and Cancel.

    Subclasses implement :meth:`prepare` (GUI thread) returning ``(compute, write)``:
    ``compute(progress, cancel) -> result`` runs in the worker (``progress(done, total)``,
    ``cancel() -> bool``), ``write(result) -> int`` (pixels changed) on the GUI thread.

    Signals: ``written(int)`` after a result was written, ``finished()`` when the job ended
    (written, cancelled or failed).
    """

    written = Signal(int)
    finished = Signal()

    def __init__(self, widget, title: str, button_text: str, rows: list[tuple]) -> None:
        super().__init__(title)
        self.widget = widget
        self.worker = None
        self._cancel: threading.Event | None = None
        self.run_button = QPushButton(button_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout = QFormLayout()
        for entry in [*rows, (row(self.run_button, self.progress_bar, self.cancel_button),), (self.status_label,)]:
            layout.addRow(*entry)
        self.setLayout(layout)
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        outer = widget.layout()  # below the Result group, above the widget's progress and status
        outer.insertWidget(max(outer.count() - 3, 0), self)

    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    def prepare(self):
        raise NotImplementedError

    def run(self) -> None:
        """Start the job on what the widget shows now (nothing when one runs already)."""
        if self.worker is not None:
            return
        try:
            compute, write = self.prepare()
        except ValueError as error:
            self.status_label.setText(str(error))
            return
        cancel = self._cancel = threading.Event()
        self.worker = create_worker(lambda: compute(self._relay.progress.emit, cancel.is_set), _start_thread=False,
                                    _connect={"returned": guarded(self, lambda result: self._write(write, result)),
                                              "errored": guarded(self, self._on_error)})
        self.worker.finished.connect(guarded(self, self._on_finished))
        self.run_button.setEnabled(False)
        self.cancel_button.setVisible(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status_label.setText("Running …")
        self.worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next step; the labels stay as they are."""
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(int(total), 1))
        self.progress_bar.setValue(int(done))

    def _write(self, write, result) -> None:
        if self._cancel is not None and self._cancel.is_set():
            self.status_label.setText("Cancelled: the labels are unchanged.")
            return
        try:
            changed = write(result)
        except Exception as error:  # noqa: BLE001 - e.g. a read-only or mismatched labels layer: tell, never crash
            self.widget.notify_error("cannot write the labels", error)
            return
        self.status_label.setText(f"{changed} pixels changed (Ctrl+Z in the labels layer undoes it).")
        self.written.emit(changed)

    def _on_error(self, error) -> None:
        if self._cancel is not None and self._cancel.is_set():
            self.status_label.setText("Cancelled: the labels are unchanged.")
        else:
            self.widget.notify_error(f"{self.title().lower()} failed", error)

    def _on_finished(self) -> None:
        self.worker = self._cancel = None
        self.run_button.setEnabled(True)
        self.cancel_button.setVisible(False)
        self.progress_bar.setVisible(False)
        self.finished.emit()

    def target_labels(self, image):
        """The widget's labels layer, or a new one placed like ``image``."""
        widget = self.widget
        labels = widget.labels_layer
        if labels is None:
            labels = outputs.new_labels_layer(widget.viewer, image, widget.channel_axis,
                                              (widget.points_layer, widget.boxes_layer))
            widget.labels_combo.set_layer(labels)
        return labels


def model_decoder(model, mode: str | None):
    """``model``'s own instance decoder (:func:`~napari_sam.automatic.loading.decoder_source`:
    a named model's paired decoder, else its checkpoint's), or None (none, or ``mode == "amg"``).
    May download a named model's decoder: call it in the worker."""
    from ..automatic.loading import decoder_source, load_decoder

    source = decoder_source(model, mode)
    return None if source is None else load_decoder(source, device=model.device, model=model)


def instances_edit(current: np.ndarray, instances: np.ndarray, first_id: int, preserve: bool) -> PlaneEdit:
    """The edit writing ``instances`` ``(H, W)`` (0 background, objects 1..n) into the labels
    plane ``current`` as ids ``first_id, first_id + 1, ...``; with ``preserve`` only
    background pixels change. ``first_id`` must be above every label of ``current``."""
    # paint's rule on the union of the objects finds the pixels to write (first_id is new,
    # so every writable object pixel changes); each then takes its own object's id.
    edit = paint(current, CommitPlan((np.asarray(instances) > 0,), (int(first_id),), preserve=preserve))
    new = instances[edit.rows, edit.cols].astype(np.int64) + (int(first_id) - 1)
    return PlaneEdit(edit.rows, edit.cols, edit.old, new.astype(current.dtype, copy=False))


class AutomaticSection(JobSection):
    """"Segment all": every object of the plane shown, written as new labels in one step.

    ``decoder``: an instance decoder to use (scripts, tests); default the one in the
    widget's model checkpoint, if any (AIS), else AMG.
    """

    def __init__(self, widget) -> None:
        self.mode_combo = QComboBox()
        for text, mode in (("auto", None), ("instance decoder (AIS)", "ais"), ("point grid (AMG)", "amg")):
            self.mode_combo.addItem(text, mode)
        self.mode_combo.setToolTip("auto: the instance decoder when the model's checkpoint has one, else a point grid")
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10**7)
        self.min_size_spin.setValue(25)
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setToolTip("Objects smaller than this are left out")
        self.object_size_spin = QSpinBox()
        self.object_size_spin.setRange(0, 10_000)
        self.object_size_spin.setSpecialValueText("auto")
        self.object_size_spin.setSuffix(" px")
        self.object_size_spin.setToolTip(
            "Instance decoder: typical object diameter in pixels, so the plane is decoded at the size the "
            "decoder knows. auto: measured on a first pass (decoders trained by napari-sam; micro-sam's run "
            "the plane as it is)")
        super().__init__(widget, "Segment all", "Segment all",
                         [("mode", self.mode_combo), ("min size", self.min_size_spin),
                          ("object size", self.object_size_spin)])
        self.run_button.setToolTip("Segment every object of the plane shown into new labels (Ctrl+Z undoes it)")
        self.decoder = None

    def prepare(self):
        from ..automatic import AutomaticSegmenter

        widget = self.widget
        image, model = widget.image_layer, widget.model
        if image is None or model is None:
            raise ValueError("Open an image and load a model first.")
        world = tuple(widget.viewer.dims.point)
        ref = L.plane_ref(image, world, widget.channel_axis, widget.channel_spin.value())
        mode, size = self.mode_combo.currentData(), int(self.min_size_spin.value())
        object_size = float(self.object_size_spin.value()) or "auto"
        decoder = self.decoder

        def compute(progress, cancel):
            from ..automatic.loading import sizing_decoder

            found = decoder if decoder is not None and mode != "amg" else model_decoder(model, mode)
            # AMG sizes objects with the model's bundled decoder, when it has one (the default model)
            sizer = None if found is not None else sizing_decoder(model, device=model.device)
            if object_size != "auto" and getattr(found or sizer, "object_size", None) is None:
                object_size_used = "auto"  # micro-sam's decoders and official models: no size to resize to
            else:
                object_size_used = object_size
            # The decoder's tuned thresholds (if it has them) with the widget's min size.
            segmenter = AutomaticSegmenter(model, found, mode=mode, min_size=size, object_size=object_size_used,
                                           sizer=sizer)
            return segmenter.segment(L.read_plane(image, ref), progress=progress, cancel=cancel)

        def write(instances):
            labels = self.target_labels(image)
            index = L.labels_plane_index(labels, image, ref, world)
            edit = instances_edit(L.read_labels_plane(labels, index), instances, L.next_label_id(labels),
                                  preserve=not widget.overwrite_check.isChecked())
            return L.write_edit(labels, index, edit)

        return compute, write
