"""The Annotate widget: prompts in napari layers -> live SAM preview -> labels.

The widget only wires napari to the core. Heavy work runs in worker threads: loading
the model, reading and embedding a plane (cached by ``EmbeddingStore``), decoding
prompts. Results that arrive after the user moved on are dropped (each carries the
plane key and the prompt revision it was made for).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import layers as L
from .encoding import EncodingCancelled, watch_encoder
from ..inference.objects import split_objects

# The annotation loop's keys (free in napari's default keymaps for Points, Labels and
# Image layers; in a Shapes layer "T" stays napari's path tool).
KEYS = {"accept": "K", "next_candidate": "N", "clear": "Q", "toggle_sign": "T"}

PREVIEW_NAME = "SAM preview"
DEBOUNCE_MS = 120
EMBED_DELAY_MS = 60
PREFETCH_RADIUS = 2  # neighbouring slices precomputed on each side
CUSTOM_MODEL = "checkpoint file…"
PREVIEW_COLOR = "yellow"
NEW_ID, SELECTED_ID = "new label", "selected label"
TEXT_TOOLTIP = (
    "Name the kind of object and press Enter: alone it finds every object of that kind "
    "(accepted as one label; add points for single objects), with points or a box it says which object is meant"
)
NO_TEXT_TOOLTIP = (
    "Model {name!r} has no text path (official SAM, MobileSAM and micro-sam checkpoints have none): "
    "choose the default model, or one fine-tuned with text"
)


def add_named_models(combo: QComboBox) -> None:
    """Add the named models (``checkpoints.MODELS``) to ``combo``, their descriptions as tooltips."""
    from ..checkpoints import MODELS

    for name, spec in MODELS.items():
        combo.addItem(name)
        combo.setItemData(combo.count() - 1, spec.description, Qt.ItemDataRole.ToolTipRole)


def form_group(title: str, rows: list[tuple]) -> QGroupBox:
    """A titled group of form rows: ``(label, field)`` pairs, or ``(widget_or_layout,)``
    for a row that spans both columns."""
    form = QFormLayout()
    for row in rows:
        form.addRow(*row)
    box = QGroupBox(title)
    box.setLayout(form)
    return box


def device_choices() -> list[str]:
    """"auto", "cpu", then every CUDA device and "mps" where present."""
    import torch

    devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


@dataclass
class _EmbedJob:
    key: tuple
    ref: L.PlaneRef
    indices: list  # tile indices
    prefetch: bool
    generation: int
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _PromptSpec:
    """Prompts gathered on the GUI thread for one decoder run."""

    key: tuple
    revision: int
    points: np.ndarray  # (N, 2) rc
    labels: np.ndarray  # (N,)
    boxes: np.ndarray  # (M, 4)
    mask_input: object  # a MaskPrompt (logits and the tile they are in), or None
    mask_label: int | None  # the label whose mask was the mask prompt
    refined: bool  # mask_input holds the previous candidate's logits
    text: str | None


class _ProgressRelay(QObject):
    """Carries encoder progress from a worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


class _LayerCombo(QComboBox):
    """The viewer's layers of one type, kept up to date; ``layer_changed`` on a new choice."""

    layer_changed = Signal()

    def __init__(self, viewer, layer_type, *, none_text: str | None = None, exclude=None, parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._none_text = none_text
        self._exclude = exclude or (lambda layer: False)
        self._layers: list = []
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit())
        self.refresh()

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def layer(self):
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer) -> None:
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))

    def refresh(self, event=None) -> None:
        current = self.layer()
        layers = [
            layer for layer in self._viewer.layers if isinstance(layer, self._type) and not self._exclude(layer)
        ]
        if self._none_text is not None:
            layers = [None, *layers]
        self.blockSignals(True)
        self.clear()
        self._layers = layers
        for layer in layers:
            self.addItem(self._none_text if layer is None else layer.name)
        if current in layers:
            self.setCurrentIndex(layers.index(current))
        self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit()


class AnnotateWidget(QWidget):
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
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model = None
        self.predictor = None
        self.store = None
        self._model_source = None  # (name or path, device) of the loaded model
        self._model_name_loading = None
        self._generation = 0  # bumped when the model changes: older results are dropped
        self._model_worker = None
        self._embed_worker = None
        self._embed_job: _EmbedJob | None = None
        self._predict_worker = None
        self._predict_lock = threading.Lock()
        self._predict_dirty = False
        self._wants_prediction = False
        self._commit_pending = False
        self._suspend_prompt_events = False

        self._ref: L.PlaneRef | None = None
        self._tiled = None  # TiledPredictor over the current plane
        self._ready: set = set()  # (plane key, tile index) known to be embedded
        self._pending_tiles: list = []  # tiles the waiting prediction needs
        self._stopped_key = None  # a plane whose embedding was cancelled or failed
        self._prefetch_axis: int | None = None
        self._last_step = tuple(self.viewer.dims.current_step)

        self._revision = 0
        self._result_revision = -1
        self._candidates: list = []  # one Candidates per object
        self._pieces: np.ndarray | None = None  # the text-alone mask split into objects, made by the worker
        self._spec: _PromptSpec | None = None  # the prompts of the shown result
        self._choice = 0
        self._next_sign = L.POSITIVE
        self._watched: dict[str, object] = {}
        self._watched_image = None

        self._relay = _ProgressRelay()
        self._relay.progress.connect(self._on_encoder_progress)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._predict_now)
        # Embedding starts shortly after the plane settles: scrubbing through a stack
        # does not start (and cancel) a job per slice.
        self._embed_timer = QTimer(self)
        self._embed_timer.setSingleShot(True)
        self._embed_timer.setInterval(EMBED_DELAY_MS)
        self._embed_timer.timeout.connect(self._schedule_embedding)

        self._build_ui()
        self._bind_keys()
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.ndisplay.connect(self._on_plane_changed)
        self.viewer.dims.events.order.connect(self._on_plane_changed)
        self._on_image_changed()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        is_preview = lambda layer: layer.name == PREVIEW_NAME  # noqa: E731
        self.image_combo = _LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("The image to segment: 2D, RGB, or a stack (the plane shown is segmented)")
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "An axis of the image that holds channels: it stays at the chosen channel while you move "
            "through the other axes. 'none': every axis follows the viewer."
        )
        self.channel_spin = QSpinBox()
        self.channel_spin.setToolTip("The channel segmented on the channel axis")
        channel_row = QHBoxLayout()
        channel_row.addWidget(self.channel_axis_combo)
        channel_row.addWidget(QLabel("channel"))
        channel_row.addWidget(self.channel_spin)
        self._channel_row = QWidget()
        self._channel_row.setLayout(channel_row)
        channel_row.setContentsMargins(0, 0, 0, 0)

        self.model_combo = QComboBox()
        add_named_models(self.model_combo)
        from .registry import finetuned_models

        for label, path in finetuned_models().items():
            self._add_finetuned(label, path)
        self.model_combo.addItem(CUSTOM_MODEL)
        self.model_combo.setToolTip(
            "A named model (downloaded on first use), a model fine-tuned in this session, or a checkpoint file"
        )
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path to a .pt / .pth checkpoint")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_checkpoint)
        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.model_path)
        path_row.addWidget(browse)
        self._path_row = QWidget()
        self._path_row.setLayout(path_row)
        self._path_row.setVisible(False)

        import torch

        self.device_combo = QComboBox()
        self.device_combo.addItems(device_choices())
        self.device_combo.setToolTip("Where the model runs; 'auto' picks a GPU when there is one")
        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip("Load the model now (it is also loaded on the first prompt)")
        self.load_button.clicked.connect(self.load_model)

        self.memory_spin = QSpinBox()
        self.memory_spin.setRange(0, 1_000_000)
        self.memory_spin.setSingleStep(256)
        self.memory_spin.setValue(1024)
        self.memory_spin.setSuffix(" MB")
        self.memory_spin.setToolTip("Memory for cached embeddings (a 1024px SAM model: 4 MB per plane)")
        self.cache_dir_edit = QLineEdit()
        self.cache_dir_edit.setPlaceholderText("optional folder: keep embeddings on disk")
        self.cache_dir_edit.setToolTip("Embeddings saved here are reused across sessions")
        self.prefetch_check = QCheckBox("precompute neighbouring slices")
        self.prefetch_check.setToolTip(
            f"While idle, embed up to {PREFETCH_RADIUS} slices on each side of the current one, "
            "along the axis you last moved"
        )
        self.prefetch_check.setChecked(torch.cuda.is_available())
        self.tile_check = QCheckBox("tile large planes")
        self.tile_check.setToolTip(
            "On: planes larger than the model input are cut into overlapping tiles of the input size, "
            "embedded only where you prompt (full resolution). Off: the whole plane is resized to the "
            "model input (one embedding, coarser)."
        )
        self.tile_check.setChecked(True)

        self._channel_label = QLabel("channel axis")
        model_box = form_group("Image and model", [
            ("image", self.image_combo), (self._channel_label, self._channel_row),
            ("model", self.model_combo), ("", self._path_row), ("device", self.device_combo),
            ("cache", self.memory_spin), ("", self.cache_dir_edit), ("", self.prefetch_check),
            ("", self.tile_check), ("", self.load_button),
        ])

        self.points_combo = _LayerCombo(self.viewer, Points, none_text="(none)")
        self.points_combo.setToolTip("Positive (green) and negative (red) points")
        self.boxes_combo = _LayerCombo(self.viewer, Shapes, none_text="(none)")
        self.boxes_combo.setToolTip("Rectangles: one box per object; several boxes segment several objects at once")
        self.mask_combo = _LayerCombo(self.viewer, Labels, none_text="(none)", exclude=is_preview)
        self.mask_combo.setToolTip(
            "Refine an existing object: the selected label's mask on this plane is the starting "
            "point, add points to correct it. With the target labels layer, accepting replaces that label."
        )
        self.add_layers_button = QPushButton("Add prompt layers")
        self.add_layers_button.setToolTip("Create a Points and a Shapes layer placed like the image")
        self.add_layers_button.clicked.connect(self.add_prompt_layers)
        self.sign_button = QPushButton()
        self.sign_button.setToolTip(f"Sign of the next point: positive (green) or negative (red)  [{KEYS['toggle_sign']}]")
        self.sign_button.clicked.connect(self.toggle_sign)
        self.text_edit = QLineEdit()
        self.text_edit.setAccessibleName("Text prompt")
        self.text_edit.setPlaceholderText("e.g. nucleus")
        self.text_edit.setToolTip(TEXT_TOOLTIP)
        self.text_edit.setClearButtonEnabled(True)
        # On Enter (or leaving the field after a change), not on every keystroke: "nu" would be
        # a prompt of its own, and a warning.
        self.text_edit.editingFinished.connect(self._on_text_entered)

        prompt_box = form_group("Prompts", [
            ("points", self.points_combo), ("boxes", self.boxes_combo), ("mask", self.mask_combo),
            ("text prompt", self.text_edit), (self.add_layers_button, self.sign_button),
        ])

        self.labels_combo = _LayerCombo(self.viewer, Labels, none_text="(new layer)", exclude=is_preview)
        self.labels_combo.setToolTip("The labels layer objects are written into")
        self.id_combo = QComboBox()
        self.id_combo.addItems([NEW_ID, SELECTED_ID])
        self.id_combo.setToolTip("Write a new label id, or the labels layer's selected label")
        self.overwrite_check = QCheckBox("overwrite other labels")
        self.overwrite_check.setToolTip("Off (default): pixels of other objects are never changed")
        self.split_check = QCheckBox("one label per object")
        self.split_check.setToolTip(
            "Accept a mask as one new label per object (connected pieces, touching objects cut at their "
            "necks), e.g. every nucleus from the text prompt 'nucleus'. Off: the mask is one label."
        )
        self.candidate_list = QListWidget()
        self.candidate_list.setMaximumHeight(80)
        self.candidate_list.setToolTip("Candidate masks, best first, with the model's predicted IoU")
        self.candidate_list.currentRowChanged.connect(self._on_candidate_row)
        self.next_button = QPushButton(f"Next [{KEYS['next_candidate']}]")
        self.next_button.setToolTip(f"Show the next candidate mask  [{KEYS['next_candidate']}]")
        self.next_button.clicked.connect(self.next_candidate)
        self.accept_button = QPushButton(f"Accept [{KEYS['accept']}]")
        self.accept_button.setToolTip(f"Write the shown mask into the labels layer (undo with Ctrl+Z)  [{KEYS['accept']}]")
        self.accept_button.clicked.connect(self.accept)
        self.clear_button = QPushButton(f"Clear [{KEYS['clear']}]")
        self.clear_button.setToolTip(f"Remove the prompts on this plane and the preview  [{KEYS['clear']}]")
        self.clear_button.clicked.connect(self.clear)
        buttons = QHBoxLayout()
        for button in (self.next_button, self.accept_button, self.clear_button):
            buttons.addWidget(button)

        result_box = form_group("Result", [
            ("labels", self.labels_combo), ("label id", self.id_combo), ("", self.overwrite_check), ("", self.split_check),
            (self.candidate_list,), (buttons,),
        ])

        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop computing this plane's embedding")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress_bar)
        progress_row.addWidget(self.cancel_button)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout()
        for box in (model_box, prompt_box, result_box):
            layout.addWidget(box)
        layout.addLayout(progress_row)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.setLayout(layout)

        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.channel_axis_combo.currentIndexChanged.connect(self._on_channel_axis_changed)
        self.channel_spin.valueChanged.connect(self._on_plane_changed)
        self.model_combo.currentIndexChanged.connect(self._on_model_choice_changed)
        finetuned_models().added.connect(self._add_finetuned)
        finetuned_models().use_requested.connect(self._use_finetuned)
        self.model_path.editingFinished.connect(self._on_model_choice_changed)
        self.device_combo.currentIndexChanged.connect(self._on_model_choice_changed)
        self.memory_spin.valueChanged.connect(self._on_memory_changed)
        self.cache_dir_edit.editingFinished.connect(self._on_cache_dir_changed)
        self.prefetch_check.toggled.connect(lambda _: self._schedule_embedding())
        self.tile_check.toggled.connect(self._on_tiling_changed)
        self.points_combo.layer_changed.connect(self._on_prompt_layers_changed)
        self.boxes_combo.layer_changed.connect(self._on_prompt_layers_changed)
        self.mask_combo.layer_changed.connect(self._on_prompt_layers_changed)
        self._update_sign_button()
        self._on_prompt_layers_changed()

    def _bind_keys(self) -> None:
        actions = {
            "accept": self.accept,
            "next_candidate": self.next_candidate,
            "clear": self.clear,
            "toggle_sign": self.toggle_sign,
        }
        for name, key in KEYS.items():
            action = actions[name]

            def run(viewer, action=action):
                try:
                    action()
                except RuntimeError:  # the widget was deleted while the viewer lives on
                    pass

            self.viewer.bind_key(key, run, overwrite=True)

    # ------------------------------------------------------------------ public actions

    @property
    def image_layer(self):
        return self.image_combo.layer()

    @property
    def points_layer(self):
        return self.points_combo.layer()

    @property
    def boxes_layer(self):
        return self.boxes_combo.layer()

    @property
    def labels_layer(self):
        return self.labels_combo.layer()

    @property
    def preview_layer(self):
        return next((layer for layer in self.viewer.layers if layer.name == PREVIEW_NAME), None)

    @property
    def candidates(self) -> list:
        """The shown result: one ``Candidates`` per object (several for several boxes)."""
        return list(self._candidates)

    @property
    def choice(self) -> int:
        return self._choice

    @property
    def busy(self) -> bool:
        """True while anything is pending: a worker, a debounced prediction or a commit."""
        return bool(
            self._model_worker is not None
            or self._embed_worker is not None
            or self._predict_worker is not None
            or self._debounce.isActive()
            or self._embed_timer.isActive()
            or self._commit_pending
        )

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
            self._set_status("Open an image first.")
            return
        plane = L.layer_array(image).shape[image.ndim - 2 : image.ndim]
        size = max(4.0, min(plane) / 40)
        points = self.viewer.add_points(
            np.zeros((0, image.ndim)),
            ndim=image.ndim,
            name="SAM points",
            scale=image.scale,
            translate=image.translate,
            size=size,
            features=L.empty_sign_features(),
            feature_defaults={L.SIGN_FEATURE: self._next_sign},
            face_color=L.SIGN_FEATURE,
            face_color_cycle=L.SIGN_COLORS,
            border_color="white",
        )
        boxes = self.viewer.add_shapes(
            ndim=image.ndim,
            name="SAM boxes",
            scale=image.scale,
            translate=image.translate,
            edge_color="yellow",
            face_color="transparent",
            edge_width=max(1.0, min(plane) / 200),
        )
        self.points_combo.set_layer(points)
        self.boxes_combo.set_layer(boxes)
        boxes.mode = "add_rectangle"
        points.mode = "add"
        self.viewer.layers.selection.active = points

    def toggle_sign(self) -> None:
        """Flip the sign of the next point: positive (object) <-> negative (background)."""
        self._next_sign = L.NEGATIVE if self._next_sign == L.POSITIVE else L.POSITIVE
        points = self.points_layer
        if points is not None:
            L.ensure_sign_feature(points)
            points.feature_defaults = {L.SIGN_FEATURE: self._next_sign}
        self._update_sign_button()

    def next_candidate(self) -> None:
        """Show the next candidate mask of a single object."""
        if len(self._candidates) == 1 and len(self._candidates[0]) > 1:
            self._choose((self._choice + 1) % len(self._candidates[0]))

    def accept(self) -> None:
        """Write the shown mask(s) into the labels layer (waits for a pending prediction)."""
        if self._result_is_current():
            self._commit_now()
        elif self._debounce.isActive() or self._predict_worker is not None or self._wants_prediction:
            self._commit_pending = True
        else:
            self._set_status("Nothing to accept: add a point or a box first.")

    def clear(self) -> None:
        """Remove the prompts on the current plane and the preview."""
        self._commit_pending = False
        self._wants_prediction = False
        ref = self._ref
        image = self.image_layer
        if ref is not None and image is not None:
            self._suspend_prompt_events = True
            try:
                for layer in (self.points_layer, self.boxes_layer):
                    if layer is None:
                        continue
                    on_plane = L.prompts_on_plane(layer, image, ref, self.viewer.dims.point)
                    if len(on_plane):
                        layer.selected_data = set(int(i) for i in on_plane)
                        layer.remove_selected()
            finally:
                self._suspend_prompt_events = False
        self._reset_result()

    def cancel(self) -> None:
        """Stop the running embedding; it restarts when the plane changes or a prompt is added."""
        job = self._embed_job
        if job is not None:
            job.cancel.set()
            self._stopped_key = job.key
            self._set_status("Embedding cancelled.")
        self._wants_prediction = False
        self._commit_pending = False

    # ------------------------------------------------------------------ image, plane, model

    def _on_image_changed(self) -> None:
        image = self.image_layer
        if self._watched_image is not None:
            self._watched_image.events.data.disconnect(self._on_image_data_changed)
        self._watched_image = image
        if image is not None:
            image.events.data.connect(self._on_image_data_changed)
        self.channel_axis_combo.blockSignals(True)
        self.channel_axis_combo.clear()
        self.channel_axis_combo.addItem("none")
        if image is not None and not image.rgb:
            shape = L.layer_array(image).shape
            for axis in range(image.ndim - 2):
                self.channel_axis_combo.addItem(f"axis {axis} (size {shape[axis]})", axis)
        self.channel_axis_combo.blockSignals(False)
        has_stack_axes = self.channel_axis_combo.count() > 1
        self._channel_row.setVisible(has_stack_axes)
        self._channel_label.setVisible(has_stack_axes)
        self._on_channel_axis_changed()
        if (
            image is not None
            and self.points_layer is None
            and self.boxes_layer is None
            and not any(isinstance(layer, (Points, Shapes)) for layer in self.viewer.layers)
        ):
            self.add_prompt_layers()

    def _on_image_data_changed(self, event=None) -> None:
        self._ref = None  # same position, new pixels: embed again (the store knows the content)
        self._ready = set()
        self._on_plane_changed()

    def _on_channel_axis_changed(self, *_) -> None:
        axis = self.channel_axis
        image = self.image_layer
        self.channel_spin.setEnabled(axis is not None)
        if axis is not None and image is not None:
            self.channel_spin.setRange(0, L.layer_array(image).shape[axis] - 1)
        self._on_plane_changed()

    @property
    def channel_axis(self) -> int | None:
        return self.channel_axis_combo.currentData()

    def _on_dims_changed(self, event=None) -> None:
        step = tuple(self.viewer.dims.current_step)
        changed = [i for i, (a, b) in enumerate(zip(step, self._last_step)) if a != b]
        self._last_step = step
        image = self.image_layer
        if changed and image is not None:
            axis = changed[-1] - (self.viewer.dims.ndim - image.ndim)
            if 0 <= axis < image.ndim - 2:
                self._prefetch_axis = axis
        self._on_plane_changed()

    def _current_ref(self) -> L.PlaneRef | None:
        image = self.image_layer
        if image is None:
            return None
        dims = self.viewer.dims
        if dims.ndisplay != 2 or set(dims.displayed) != {dims.ndim - 2, dims.ndim - 1}:
            raise ValueError("SAM segments 2D planes: show the image's last two axes in 2D view")
        return L.plane_ref(image, dims.point, self.channel_axis, self.channel_spin.value())

    def _on_plane_changed(self, *_) -> None:
        try:
            ref = self._current_ref()
        except ValueError as error:
            ref = None
            self._set_status(str(error))
        if ref is None or self._ref is None or ref.key != self._ref.key or ref.shape != self._ref.shape:
            self._ref = ref
            self._tiled = self._make_tiled(ref)
            self._pending_tiles = []
            self._stopped_key = None
            self._reset_result()
            self._on_prompts_changed()  # prompts on the new plane, if any
        self._embed_timer.start()

    def _add_finetuned(self, label: str, path: str) -> None:
        """List a model fine-tuned in this session (above the checkpoint-file entry)."""
        if self.model_combo.findData(path, Qt.ItemDataRole.UserRole) >= 0:
            return
        custom = self.model_combo.findText(CUSTOM_MODEL)
        index = custom if custom >= 0 else self.model_combo.count()
        self.model_combo.insertItem(index, label, path)
        self.model_combo.setItemData(index, path, Qt.ItemDataRole.ToolTipRole)

    def _use_finetuned(self, path: str) -> None:
        """Switch to a fine-tuned model (the Fine-tune widget's "use in Annotate")."""
        index = self.model_combo.findData(path, Qt.ItemDataRole.UserRole)
        if index < 0:
            return
        self.model_combo.setCurrentIndex(index)  # reloads if another model is loaded
        if self.model is None and self._model_worker is None:
            self._start_model_worker()

    def _model_choice(self) -> tuple[str, str]:
        name = self.model_combo.currentText()
        path = self.model_combo.currentData(Qt.ItemDataRole.UserRole)
        if path:
            name = path
        elif name == CUSTOM_MODEL:
            name = self.model_path.text().strip()
        return name, self.device_combo.currentText()

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.model_path.setText(path)
            self._on_model_choice_changed()

    def _on_model_choice_changed(self, *_) -> None:
        self._path_row.setVisible(self.model_combo.currentText() == CUSTOM_MODEL)
        if self.model is not None and self._model_source != self._model_choice():
            self._start_model_worker()

    def _on_tiling_changed(self, *_) -> None:
        self._reset_result()
        self._reset_tiles()
        self._on_prompts_changed()
        self._embed_timer.start()

    def _on_memory_changed(self, value: int) -> None:
        if self.store is not None:
            self.store.memory_bytes = int(value * 2**20)

    def _on_cache_dir_changed(self) -> None:
        if self.predictor is not None:
            self._make_store()

    def _make_store(self) -> None:
        from ..inference.embeddings import EmbeddingStore

        cache_dir = self.cache_dir_edit.text().strip() or None
        self.store = EmbeddingStore(self.predictor.model, self.predictor.normalization,
                                    memory_mb=self.memory_spin.value(), cache_dir=cache_dir)
        self._reset_tiles()

    def _start_model_worker(self) -> None:
        name, device = self._model_choice()
        if not name:
            self._set_status("Choose a checkpoint file first.")
            return
        self._generation += 1
        generation = self._generation
        self._set_busy(f"Loading model {Path(name).name} …")

        def load():
            from ..checkpoints import load_model

            return generation, load_model(name, None if device == "auto" else device)

        worker = create_worker(
            load,
            _start_thread=False,
            _connect={"returned": self._guard(self._on_model_returned), "errored": self._guard(self._on_model_error)},
        )
        worker.finished.connect(self._guard(lambda: self._on_model_finished(worker)))
        self._model_worker = worker
        self._model_name_loading = (name, device)
        worker.start()

    def _on_model_returned(self, result) -> None:
        generation, model = result
        if generation == self._generation:
            self._install_model(model, self._model_name_loading)

    def _on_model_error(self, error) -> None:
        self._wants_prediction = False
        self._commit_pending = False
        self._notify_error("could not load the model", error)

    def _on_model_finished(self, worker) -> None:
        if self._model_worker is worker:
            self._model_worker = None
        self._set_idle()
        self._schedule_embedding()

    def _install_model(self, model, source) -> None:
        from ..inference.predictor import Predictor

        self._generation += 1
        self.model = model
        self.predictor = Predictor(model)
        self._model_source = source
        self._make_store()
        self._update_text_field()
        self._reset_result()
        name = source[0]
        self._set_status(f"Model {Path(str(name)).name} on {model.device}.")
        self.model_loaded.emit()
        self._schedule_embedding()
        if self._wants_prediction:
            self._on_prompts_changed()

    def _update_text_field(self) -> None:
        """The text field is usable only with a model that has a text path."""
        supported = self.model is None or bool(getattr(self.model, "supports_text", False))
        self.text_edit.setEnabled(supported)
        if supported:
            self.text_edit.setToolTip(TEXT_TOOLTIP)
            return
        name = Path(str(self._model_source[0] if self._model_source else "")).name
        self.text_edit.setToolTip(NO_TEXT_TOOLTIP.format(name=name))
        if self.text_edit.text().strip():
            show_warning(f"napari-sam: text prompt ignored: {NO_TEXT_TOOLTIP.format(name=name)}")

    def _on_text_entered(self) -> None:
        text = self.text_edit.text()
        if text and not text.strip():
            show_warning("napari-sam: empty text prompt ignored")
        self._on_prompts_changed()

    # ------------------------------------------------------------------ embeddings

    def _make_tiled(self, ref: L.PlaneRef | None):
        """A TiledPredictor over ``ref``'s plane (reads nothing yet), or None."""
        if ref is None or self.predictor is None or self.image_layer is None:
            return None
        from ..inference.tiling import TiledPredictor

        tile_size = None if self.tile_check.isChecked() else max(max(ref.shape), 2)
        try:
            tiled = TiledPredictor(self.predictor, self.store, tile_size=tile_size)
            tiled.set_plane(L.LazyPlane(L.layer_array(self.image_layer), ref))
        except ValueError as error:
            self._notify_error("cannot segment this plane", error)
            return None
        return tiled

    def _reset_tiles(self) -> None:
        """Forget which tiles are embedded (new model, store or pixels) and rebuild the grid."""
        self._ready = set()
        self._pending_tiles = []
        self._stopped_key = None
        self._tiled = self._make_tiled(self._ref)

    @property
    def plane_ready(self) -> bool:
        """Whether the current plane can be decoded now (every tile it needs is embedded)."""
        return self._tiled is not None and not self._missing_tiles()

    def _missing_tiles(self) -> list:
        """The current plane's tiles that must be embedded before the next prediction.

        A plane of one tile is embedded as soon as it is shown; a larger plane only where
        prompts are (or everything, when precomputing).
        """
        tiled, ref = self._tiled, self._ref
        if tiled is None or ref is None:
            return []
        wanted = list(self._pending_tiles) if self._wants_prediction else []
        if len(tiled.grid) == 1:
            wanted.append(tiled.grid.tiles[0])
        missing, seen = [], set()
        for tile in wanted:
            if tile.index not in seen and (ref.key, tile.index) not in self._ready:
                seen.add(tile.index)
                missing.append(tile)
        return missing

    def _schedule_embedding(self) -> None:
        """Start the next embedding job: what the current plane needs first, then neighbours."""
        ref, job = self._ref, self._embed_job
        missing = self._missing_tiles()
        if self._embed_worker is not None:
            if job is None:
                return
            covers = ref is not None and job.key == ref.key and {t.index for t in missing} <= set(job.indices)
            if ref is None or job.generation != self._generation or (missing and not covers):
                job.cancel.set()  # finishes soon; its `finished` comes back here
            elif covers and job.prefetch:
                job.prefetch = False  # the user moved to the plane being precomputed
            return
        if self._tiled is None or ref is None:
            return
        if missing:
            if self._stopped_key != ref.key:
                self._start_embed_job(ref, self._tiled, missing, prefetch=False)
        elif self.prefetch_check.isChecked():
            found = self._next_prefetch(ref)
            if found is not None:
                self._start_embed_job(*found, prefetch=True)

    def _next_prefetch(self, ref: L.PlaneRef):
        """``(ref, tiled, tiles)`` to precompute next: the rest of this plane, then neighbours."""
        image = self.image_layer
        rest = [t for t in self._tiled.grid if (ref.key, t.index) not in self._ready]
        if rest:
            return ref, self._tiled, rest
        axis = self._prefetch_axis
        if axis is None or axis == ref.channel_axis:
            stack_axes = [a for a in range(image.ndim - 2) if a != ref.channel_axis]
            if not stack_axes:
                return None
            axis = stack_axes[-1]
        for distance in range(1, PREFETCH_RADIUS + 1):
            for step in (distance, -distance):
                neighbour = L.shifted_ref(ref, axis, step, image)
                if neighbour is None:
                    continue
                tiled = self._make_tiled(neighbour)
                rest = [t for t in tiled.grid if (neighbour.key, t.index) not in self._ready]
                if rest:
                    return neighbour, tiled, rest
        return None

    def _start_embed_job(self, ref: L.PlaneRef, tiled, tiles: list, prefetch: bool) -> None:
        job = _EmbedJob(
            key=ref.key, ref=ref, indices=[t.index for t in tiles], prefetch=prefetch, generation=self._generation
        )
        model, relay = self.model, self._relay

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

        worker = create_worker(
            embed,
            _start_thread=False,
            _connect={
                "returned": self._guard(self._on_embed_returned),
                "errored": self._guard(lambda error: self._on_embed_error(job, error)),
            },
        )
        worker.finished.connect(self._guard(lambda: self._on_embed_finished(worker)))
        self._embed_worker = worker
        self._embed_job = job
        where = "plane " + ", ".join(str(i) for i in ref.stack_position) if ref.stack_position else "the image"
        tiles_text = f" ({len(tiles)} tiles)" if len(tiles) > 1 else ""
        if prefetch:
            self._set_busy(f"Precomputing {where}{tiles_text} …", cancellable=False, total=1)
        else:
            self._set_busy(f"Embedding {where}{tiles_text} …", cancellable=True, total=1)
        worker.start()

    def _on_encoder_progress(self, done: int, total: int) -> None:
        if self.progress_bar.isVisible():
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)

    def _on_embed_returned(self, result) -> None:
        job, done = result
        if job.generation != self._generation:
            return
        self._ready.update((job.key, index) for index in done)
        if done and self._ref is not None and job.key == self._ref.key and not self._missing_tiles():
            self._set_status("Ready: add points or boxes." if not self._wants_prediction else "")
            self.embedded.emit()
            if self._wants_prediction:
                self._predict_now()

    def _on_embed_error(self, job: _EmbedJob, error) -> None:
        self._stopped_key = job.key
        if not job.prefetch:
            self._wants_prediction = False
            self._commit_pending = False
        self._notify_error("could not embed the plane", error)

    def _on_embed_finished(self, worker) -> None:
        if self._embed_worker is worker:
            self._embed_worker = None
            self._embed_job = None
        self._set_idle()
        self._schedule_embedding()

    # ------------------------------------------------------------------ prompts -> preview

    def _on_prompt_layers_changed(self) -> None:
        for name, layer in list(self._watched.items()):
            try:
                layer.events.data.disconnect(self._on_prompts_changed)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = {}
        for name, layer in (("points", self.points_layer), ("boxes", self.boxes_layer)):
            if layer is not None:
                layer.events.data.connect(self._on_prompts_changed)
                self._watched[name] = layer
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

    def _collect_prompts(self) -> _PromptSpec | None:
        """Prompts on the current plane, or None when there are none."""
        image, ref = self.image_layer, self._ref
        if image is None or ref is None:
            return None
        world = self.viewer.dims.point
        points, labels = L.points_prompt(self.points_layer, image, ref, world)
        boxes = L.boxes_prompt(self.boxes_layer, image, ref, world)
        text = self.text_edit.text().strip() if self.text_edit.isEnabled() else ""
        if len(points) == 0 and len(boxes) == 0 and not text:
            return None
        mask_input, mask_label, refined = None, None, False
        previous = self._spec
        if (
            previous is not None
            and self._candidates
            and len(self._candidates) == 1
            and previous.key == ref.key
            and len(points) > len(previous.points)
            and np.array_equal(points[: len(previous.points)], previous.points)
            and np.array_equal(labels[: len(previous.labels)], previous.labels)
            and np.array_equal(boxes, previous.boxes)
            and text == (previous.text or "")
            and (len(previous.points) or len(previous.boxes))  # not every object of a kind
        ):
            # More points on the same object: refine from the shown candidate.
            mask_input, mask_label, refined = self._candidates[0].mask_prompt(self._choice), previous.mask_label, True
        elif len(points) and len(boxes) <= 1:
            mask_input, mask_label = self._mask_prompt(ref, points, boxes[0] if len(boxes) else None)
        return _PromptSpec(
            key=ref.key,
            revision=self._revision,
            points=points,
            labels=labels,
            boxes=boxes,
            mask_input=mask_input,
            mask_label=mask_label,
            refined=refined,
            text=text or None,
        )

    def _mask_prompt(self, ref: L.PlaneRef, points, box):
        """``(MaskPrompt, label)``: the mask layer's selected label on this plane, in the
        frame of the tile the prediction will use; Nones when there is none."""
        layer = self.mask_combo.layer()
        tiled = self._tiled
        if layer is None or layer.selected_label == 0 or self.model is None or tiled is None:
            return None, None
        index = L.labels_plane_index(layer, self.image_layer, ref, self.viewer.dims.point)
        mask = L.read_labels_plane(layer, index) == layer.selected_label
        prompt = tiled.mask_prompt(mask, tiled.prompts(points=points, box=box))
        return (None, None) if prompt is None else (prompt, int(layer.selected_label))

    def _tiles_for(self, spec: _PromptSpec) -> list:
        """The tiles a prediction of ``spec`` decodes against."""
        tiled = self._tiled
        if len(tiled.grid) == 1:
            return [tiled.grid.tiles[0]]
        points = spec.points if len(spec.points) else None
        if len(spec.boxes) > 1:
            return [tile for box in spec.boxes for tile in tiled.tiles_for(box=box)]
        # Text alone needs every tile of the plane.
        return tiled.tiles_for(points=points, box=spec.boxes[0] if len(spec.boxes) else None, text=spec.text)

    def _predict_now(self) -> None:
        try:
            spec = self._collect_prompts()
        except ValueError as error:
            self._notify_error("invalid prompt", error)
            return
        if spec is None:
            self._wants_prediction = False
            self._pending_tiles = []
            self._reset_result(keep_revision=True)
            self._result_revision = self._revision
            self._commit_pending = False
            self.predicted.emit()
            return
        self._wants_prediction = True
        if self.predictor is None:
            if self._model_worker is None:
                self._start_model_worker()
            return
        if self._tiled is None:
            return
        try:
            self._pending_tiles = self._tiles_for(spec)
        except ValueError as error:
            self._wants_prediction = False
            self._commit_pending = False
            self._notify_error("invalid prompt", error)
            return
        if self._missing_tiles():
            if self._stopped_key == spec.key:
                self._stopped_key = None  # a new prompt asks again
            self._schedule_embedding()
            return
        if self._predict_worker is not None:
            self._predict_dirty = True
            return
        self._start_predict_worker(spec)

    def _start_predict_worker(self, spec: _PromptSpec) -> None:
        tiled, lock = self._tiled, self._predict_lock
        generation = self._generation
        points = spec.points if len(spec.points) else None
        labels = spec.labels if len(spec.points) else None
        box = spec.boxes[0] if len(spec.boxes) == 1 else None
        # Text alone answers with every object of a kind; splitting that into objects takes
        # seconds on a large plane, so it is done here, off the GUI thread, when asked for.
        split = bool(spec.text) and points is None and box is None and spec.mask_input is None and (
            self.split_check.isChecked())

        def predict():
            with lock:
                if len(spec.boxes) > 1 and spec.text:
                    candidates = [tiled.predict(box=b, text=spec.text) for b in spec.boxes]
                elif len(spec.boxes) > 1:
                    candidates = tiled.predict_boxes(spec.boxes)  # batched per tile
                else:
                    candidates = [tiled.predict(points, labels, box, spec.mask_input, text=spec.text)]
            pieces = split_objects(candidates[0].masks[0]) if split and len(candidates[0]) == 1 else None
            return generation, spec, candidates, pieces

        worker = create_worker(
            predict,
            _start_thread=False,
            _connect={"returned": self._guard(self._on_predict_returned), "errored": self._guard(self._on_predict_error)},
        )
        # A worker catches its warnings (e.g. a text the model does not know) and emits them.
        seen: set = set()  # text alone over tiles warns once per tile: tell the user once
        worker.warned.connect(self._guard(lambda warning: self._on_predict_warning(warning, seen)))
        worker.finished.connect(self._guard(lambda: self._on_predict_finished(worker)))
        self._predict_worker = worker
        worker.start()

    def _on_predict_returned(self, result) -> None:
        generation, spec, candidates, pieces = result
        if generation != self._generation or spec.revision != self._revision or self._ref is None:
            return  # the prompts or the plane changed meanwhile: a new run follows
        if spec.key != self._ref.key:
            return
        self._wants_prediction = False
        self._spec = spec
        self._candidates = candidates
        self._pieces = pieces
        self._result_revision = spec.revision
        self._choice = 0
        self._show_result()
        if len(spec.boxes) > 1 and len(spec.points):
            self._set_status("Several boxes: points are ignored (one object per box).")
        self.predicted.emit()
        if self._commit_pending:
            self._commit_pending = False
            self._commit_now()

    def _on_predict_warning(self, warning, seen: set) -> None:
        """``warning``: the arguments of ``warnings.showwarning`` (message first)."""
        message = f"napari-sam: {warning[0]}"
        if message not in seen:
            seen.add(message)
            self._set_status(message)
            show_warning(message)

    def _on_predict_error(self, error) -> None:
        self._wants_prediction = False
        self._commit_pending = False
        self._notify_error("prediction failed", error)

    def _on_predict_finished(self, worker) -> None:
        if self._predict_worker is worker:
            self._predict_worker = None
        if self._predict_dirty:
            self._predict_dirty = False
            self._predict_now()
        elif self._commit_pending and not self._debounce.isActive() and not self._wants_prediction:
            self._commit_pending = False

    def _result_is_current(self) -> bool:
        return (
            bool(self._candidates)
            and self._result_revision == self._revision
            and not self._debounce.isActive()
            and self._spec is not None
            and self._ref is not None
            and self._spec.key == self._ref.key
        )

    # ------------------------------------------------------------------ showing results

    def _choose(self, index: int) -> None:
        self._choice = index
        self._show_result()

    def _on_candidate_row(self, row: int) -> None:
        if len(self._candidates) == 1 and 0 <= row < len(self._candidates[0]) and row != self._choice:
            self._choose(row)

    def _show_result(self) -> None:
        self.candidate_list.blockSignals(True)
        self.candidate_list.clear()
        if len(self._candidates) == 1:
            for i, score in enumerate(self._candidates[0].scores):
                self.candidate_list.addItem(f"candidate {i + 1}: predicted IoU {score:.2f}")
            self.candidate_list.setCurrentRow(self._choice)
        else:
            for i, candidates in enumerate(self._candidates):
                self.candidate_list.addItem(f"object {i + 1}: predicted IoU {candidates.scores[0]:.2f}")
        self.candidate_list.blockSignals(False)
        self._update_preview()

    def _preview_masks(self) -> list[np.ndarray]:
        if len(self._candidates) == 1:
            return [self._candidates[0].masks[self._choice]]
        return [candidates.best for candidates in self._candidates]

    def _update_preview(self) -> None:
        image, ref = self.image_layer, self._ref
        if image is None or ref is None:
            return
        data = np.zeros(ref.shape, dtype=np.uint8)
        for value, mask in enumerate(self._preview_masks(), start=1):
            data[mask & (data == 0)] = min(value, 255)
        preview = self.preview_layer
        scale, translate = tuple(image.scale[-2:]), tuple(image.translate[-2:])
        if preview is None or preview.data.shape != data.shape:
            if preview is not None:
                self.viewer.layers.remove(preview)
            active = self.viewer.layers.selection.active
            preview = self.viewer.add_labels(
                data,
                name=PREVIEW_NAME,
                scale=scale,
                translate=translate,
                opacity=0.5,
                colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
            )
            self._below_prompts(preview)
            if active is not None:
                self.viewer.layers.selection.active = active
        else:
            preview.scale, preview.translate = scale, translate
            preview.data = data

    def _reset_result(self, keep_revision: bool = False) -> None:
        if not keep_revision:
            self._revision += 1
        self._candidates = []
        self._pieces = None
        self._spec = None
        self._choice = 0
        self.candidate_list.clear()
        preview = self.preview_layer
        if preview is not None and preview.data.any():
            preview.data = np.zeros_like(preview.data)

    # ------------------------------------------------------------------ commit

    def _target_labels(self):
        labels = self.labels_layer
        if labels is not None:
            return labels
        image = self.image_layer
        shape = list(L.layer_array(image).shape[: image.ndim])
        scale, translate = list(image.scale), list(image.translate)
        axis = self.channel_axis
        if axis is not None:
            for values in (shape, scale, translate):
                del values[axis]
        active = self.viewer.layers.selection.active
        labels = self.viewer.add_labels(
            np.zeros(shape, dtype=np.int32), name=f"{image.name} labels", scale=scale, translate=translate
        )
        self._below_prompts(labels)
        if active is not None:
            self.viewer.layers.selection.active = active
        self.labels_combo.set_layer(labels)
        return labels

    def _below_prompts(self, layer) -> None:
        """Move a new labels layer under the prompt layers, so points and boxes stay visible."""
        layers = self.viewer.layers
        prompts = [layers.index(p) for p in (self.points_layer, self.boxes_layer) if p is not None and p in layers]
        if prompts and layers.index(layer) > min(prompts):
            layers.move(layers.index(layer), min(prompts))

    def _commit_now(self) -> None:
        try:
            self._commit()
        except Exception as error:  # noqa: BLE001 - e.g. a read-only labels array: tell, never crash
            self._notify_error("cannot write the labels", error)

    def _commit(self) -> None:
        spec, ref, image = self._spec, self._ref, self.image_layer
        if not self._candidates or spec is None or ref is None or image is None:
            return
        labels = self._target_labels()
        index = L.labels_plane_index(labels, image, ref, self.viewer.dims.point)
        masks = self._preview_masks()
        replace = None
        refine = len(masks) == 1 and spec.mask_label is not None and self.mask_combo.layer() is labels
        split = len(masks) == 1 and not refine and self.split_check.isChecked()
        if split:  # one new label per object
            pieces = self._pieces if self._pieces is not None and self._choice == 0 else split_objects(masks[0])
            masks = [pieces == value for value in range(1, int(pieces.max()) + 1)]
            if not masks:
                self._set_status("Nothing written: the mask holds no object of 10 pixels or more.")
                return
        if refine:
            replace = spec.mask_label
            values = [replace]
        elif (len(masks) == 1 and not split
              and self.id_combo.currentText() == SELECTED_ID and labels.selected_label != 0):
            values = [int(labels.selected_label)]
        else:
            first = L.next_label_id(labels)
            values = list(range(first, first + len(masks)))
        changed = L.write_masks(
            labels, index, masks, values, preserve=not self.overwrite_check.isChecked(), replace=replace
        )
        written = f"labels {values[0]}-{values[-1]}" if len(values) > 3 else f"label {', '.join(map(str, values))}"
        self._set_status(f"Wrote {written} ({changed} pixels changed; Ctrl+Z in the labels layer undoes it).")
        self.clear()
        self.committed.emit(changed)

    # ------------------------------------------------------------------ status

    def _guard(self, handler):
        """``handler`` for a worker signal, dropped once this widget is deleted (viewer closed)."""

        def run(*args):
            try:
                self.objectName()
            except RuntimeError:  # the Qt object is gone; nothing to update
                return
            handler(*args)

        return run

    def _on_layer_removed(self, event=None) -> None:
        if len(self.viewer.layers) == 0:  # the viewer is closing (or was emptied): stop work
            if self._embed_job is not None:
                self._embed_job.cancel.set()
            self._debounce.stop()
            self._embed_timer.stop()
            self._wants_prediction = False
            self._commit_pending = False

    def _update_sign_button(self) -> None:
        sign = self._next_sign
        self.sign_button.setText(f"next point: {sign} [{KEYS['toggle_sign']}]")
        color = "#3c3" if sign == L.POSITIVE else "#e33"
        self.sign_button.setStyleSheet(f"color: {color};")

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _set_busy(self, text: str, cancellable: bool = False, total: int = 0) -> None:
        self._set_status(text)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.cancel_button.setVisible(cancellable)

    def _set_idle(self) -> None:
        if self._model_worker is None and self._embed_worker is None:
            self.progress_bar.setVisible(False)
            self.cancel_button.setVisible(False)

    def _notify_error(self, what: str, error: BaseException) -> None:
        message = f"napari-sam: {what}: {error}"
        self._set_status(message)
        show_error(message)


def annotate_widget(napari_viewer) -> AnnotateWidget:
    """npe2 entry point."""
    return AnnotateWidget(napari_viewer)


__all__ = ["KEYS", "AnnotateWidget", "annotate_widget"]
