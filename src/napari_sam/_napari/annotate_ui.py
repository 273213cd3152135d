"""The Annotate widget's controls and layout (no segmentation logic; see ``widget.py``)."""

from __future__ import annotations

from pathlib import Path

from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt, Signal
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
from .registry import finetuned_models

# The annotation loop's keys (free in napari's default keymaps for Points, Labels and
# Image layers; in a Shapes layer "T" stays napari's path tool).
KEYS = {"accept": "K", "next_candidate": "N", "clear": "Q", "toggle_sign": "T"}

PREVIEW_NAME = "SAM preview"
PREFETCH_RADIUS = 2  # neighbouring slices precomputed on each side
CUSTOM_MODEL = "checkpoint file…"
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


def row(*widgets) -> QWidget:
    """Widgets side by side, without margins."""
    layout = QHBoxLayout()
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    holder = QWidget()
    holder.setLayout(layout)
    return holder


class LayerCombo(QComboBox):
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


class AnnotateControls(QWidget):
    """Every control of the Annotate widget, laid out in three groups; no behaviour.

    ``AnnotateWidget`` connects the controls to the annotation session.
    """

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._build_model_box()
        self._build_prompt_box()
        self._build_result_box()
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop computing this plane's embedding")
        self.cancel_button.setVisible(False)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout = QVBoxLayout()
        for box in (self._model_box, self._prompt_box, self._result_box):
            layout.addWidget(box)
        layout.addWidget(row(self.progress_bar, self.cancel_button))
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.setLayout(layout)
        self.model_combo.currentIndexChanged.connect(
            lambda _: self._path_row.setVisible(self.model_combo.currentText() == CUSTOM_MODEL))
        finetuned_models().added.connect(self.add_finetuned)

    def _build_model_box(self) -> None:
        import torch

        self.image_combo = LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("The image to segment: 2D, RGB, or a stack (the plane shown is segmented)")
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "An axis of the image that holds channels: it stays at the chosen channel while you move "
            "through the other axes. 'none': every axis follows the viewer."
        )
        self.channel_spin = QSpinBox()
        self.channel_spin.setToolTip("The channel segmented on the channel axis")
        self.channel_row = row(self.channel_axis_combo, QLabel("channel"), self.channel_spin)
        self.channel_label = QLabel("channel axis")

        self.model_combo = QComboBox()
        add_named_models(self.model_combo)
        for label, path in finetuned_models().items():
            self.add_finetuned(label, path)
        self.model_combo.addItem(CUSTOM_MODEL)
        self.model_combo.setToolTip(
            "A named model (downloaded on first use), a model fine-tuned in this session, or a checkpoint file"
        )
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path to a .pt / .pth checkpoint")
        self.browse_button = QPushButton("…")
        self.browse_button.setMaximumWidth(30)
        self.browse_button.clicked.connect(self._browse_checkpoint)
        self._path_row = row(self.model_path, self.browse_button)
        self._path_row.setVisible(False)
        self.device_combo = QComboBox()
        self.device_combo.addItems(device_choices())
        self.device_combo.setToolTip("Where the model runs; 'auto' picks a GPU when there is one")
        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip("Load the model now (it is also loaded on the first prompt)")

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
        self._model_box = form_group("Image and model", [
            ("image", self.image_combo), (self.channel_label, self.channel_row),
            ("model", self.model_combo), ("", self._path_row), ("device", self.device_combo),
            ("cache", self.memory_spin), ("", self.cache_dir_edit), ("", self.prefetch_check),
            ("", self.tile_check), ("", self.load_button),
        ])

    def _build_prompt_box(self) -> None:
        is_preview = lambda layer: layer.name == PREVIEW_NAME  # noqa: E731
        self.points_combo = LayerCombo(self.viewer, Points, none_text="(none)")
        self.points_combo.setToolTip("Positive (green) and negative (red) points")
        self.boxes_combo = LayerCombo(self.viewer, Shapes, none_text="(none)")
        self.boxes_combo.setToolTip("Rectangles: one box per object; several boxes segment several objects at once")
        self.mask_combo = LayerCombo(self.viewer, Labels, none_text="(none)", exclude=is_preview)
        self.mask_combo.setToolTip(
            "Refine an existing object: the selected label's mask on this plane is the starting "
            "point, add points to correct it. With the target labels layer, accepting replaces that label."
        )
        self.add_layers_button = QPushButton("Add prompt layers")
        self.add_layers_button.setToolTip("Create a Points and a Shapes layer placed like the image")
        self.sign_button = QPushButton()
        self.sign_button.setToolTip(f"Sign of the next point: positive (green) or negative (red)  [{KEYS['toggle_sign']}]")
        self.text_edit = QLineEdit()
        self.text_edit.setAccessibleName("Text prompt")
        self.text_edit.setPlaceholderText("e.g. nucleus")
        self.text_edit.setToolTip(TEXT_TOOLTIP)
        self.text_edit.setClearButtonEnabled(True)
        self._prompt_box = form_group("Prompts", [
            ("points", self.points_combo), ("boxes", self.boxes_combo), ("mask", self.mask_combo),
            ("text prompt", self.text_edit), (self.add_layers_button, self.sign_button),
        ])

    def _build_result_box(self) -> None:
        is_preview = lambda layer: layer.name == PREVIEW_NAME  # noqa: E731
        self.labels_combo = LayerCombo(self.viewer, Labels, none_text="(new layer)", exclude=is_preview)
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
        self.next_button = QPushButton(f"Next [{KEYS['next_candidate']}]")
        self.next_button.setToolTip(f"Show the next candidate mask  [{KEYS['next_candidate']}]")
        self.accept_button = QPushButton(f"Accept [{KEYS['accept']}]")
        self.accept_button.setToolTip(f"Write the shown mask into the labels layer (undo with Ctrl+Z)  [{KEYS['accept']}]")
        self.clear_button = QPushButton(f"Clear [{KEYS['clear']}]")
        self.clear_button.setToolTip(f"Remove the prompts on this plane and the preview  [{KEYS['clear']}]")
        self._result_box = form_group("Result", [
            ("labels", self.labels_combo), ("label id", self.id_combo), ("", self.overwrite_check),
            ("", self.split_check), (self.candidate_list,),
            (row(self.next_button, self.accept_button, self.clear_button),),
        ])

    # ---- the model menu --------------------------------------------------------------

    def add_finetuned(self, label: str, path: str) -> None:
        """List a model fine-tuned in this session (above the checkpoint-file entry)."""
        if self.model_combo.findData(path, Qt.ItemDataRole.UserRole) >= 0:
            return
        custom = self.model_combo.findText(CUSTOM_MODEL)
        index = custom if custom >= 0 else self.model_combo.count()
        self.model_combo.insertItem(index, label, path)
        self.model_combo.setItemData(index, path, Qt.ItemDataRole.ToolTipRole)

    def model_choice(self) -> tuple[str, str]:
        """``(name or checkpoint path, device)`` chosen in the widget."""
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
            self.model_path.editingFinished.emit()

    def update_text_field(self, model, model_name: str) -> bool:
        """Enable the text field only for a model with a text path; False when a typed text is now ignored."""
        supported = model is None or bool(getattr(model, "supports_text", False))
        self.text_edit.setEnabled(supported)
        if supported:
            self.text_edit.setToolTip(TEXT_TOOLTIP)
            return True
        self.text_edit.setToolTip(NO_TEXT_TOOLTIP.format(name=Path(model_name).name))
        return not self.text_edit.text().strip()

    # ---- showing state ---------------------------------------------------------------

    def show_candidates(self, candidates: list, choice: int) -> None:
        """List the candidates of one object (with the chosen one current), or one line per object."""
        self.candidate_list.blockSignals(True)
        self.candidate_list.clear()
        if len(candidates) == 1:
            for i, score in enumerate(candidates[0].scores):
                self.candidate_list.addItem(f"candidate {i + 1}: predicted IoU {score:.2f}")
            self.candidate_list.setCurrentRow(choice)
        else:
            for i, found in enumerate(candidates):
                self.candidate_list.addItem(f"object {i + 1}: predicted IoU {found.scores[0]:.2f}")
        self.candidate_list.blockSignals(False)

    def show_sign(self, sign: str) -> None:
        self.sign_button.setText(f"next point: {sign} [{KEYS['toggle_sign']}]")
        color = "#3c3" if sign == L.POSITIVE else "#e33"
        self.sign_button.setStyleSheet(f"color: {color};")

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def set_busy(self, text: str, cancellable: bool = False, total: int = 0) -> None:
        self.set_status(text)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.cancel_button.setVisible(cancellable)

    def set_progress(self, done: int, total: int) -> None:
        if self.progress_bar.isVisible():
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)

    def hide_progress(self) -> None:
        self.progress_bar.setVisible(False)
        self.cancel_button.setVisible(False)

    def warn(self, message: str) -> None:
        """Say ``message`` in the status line and in a napari warning."""
        self.set_status(message)
        show_warning(message)

    def notify_error(self, what: str, error: BaseException) -> None:
        """Say what failed in the status line and in a napari notification."""
        message = f"napari-sam: {what}: {error}"
        self.set_status(message)
        show_error(message)
