"""The Fine-tune widget: train a SAM model on the user's Image + Labels layers (or folders).

Training runs in a worker thread through :func:`napari_sam.training.finetune`, the same
entry point as ``napari-sam finetune``; its progress events come back to the Qt thread as
signals and drive the progress bar and a live plot of the training loss and the
validation mIoU. Cancel stops after the current step and keeps the last good checkpoint.
The saved model is registered with every Annotate widget (see :mod:`.registry`).
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QPointF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..training.recipes import RECIPES
from ..training.config import TrainConfig
from .annotate_ui import CUSTOM_MODEL, LayerCombo as _LayerCombo, add_named_models, device_choices, form_group
from .export_button import ExportButton

LAYERS, FOLDERS = "napari layers", "folders"
TRAIN_CHOICES = {
    "decoder": "mask decoder only (fast on a CPU)",
    "decoder+prompt": "mask decoder + prompt encoder",
    "lora": "LoRA adapters in the image encoder + decoder",
    "all": "everything (needs a GPU for large models)",
    "iou_head": "the IoU head only: re-ranks the candidates, masks unchanged",
}
RECIPE_TIPS = {
    "sam": "the SAM paper's: focal + dice 20:1, lr 1e-4, 11 interaction rounds",
    "fast": "dice alone, lr 1e-3, 3 rounds, loss at the input resolution: most gain per CPU-minute",
}
LOSS_COLOR, POINT_COLOR, BOX_COLOR = QColor("#e0a030"), QColor("#40c040"), QColor("#4090ff")


class CurvePlot(QWidget):
    """Training loss (left scale, per step) and validation mIoU (0-1, per epoch), live.

    Drawn with QPainter: napari does not bring a plotting library along.
    """

    SMOOTH = 0.9  # exponential moving average of the step losses

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self) -> None:
        self.total_steps = 1
        self.losses: list[tuple[int, float]] = []  # (step, smoothed loss)
        self.val: list[tuple[int, float, float]] = []  # (step, point mIoU, box mIoU)
        self._ema: float | None = None
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        if math.isnan(loss):
            return
        self._ema = loss if self._ema is None else self.SMOOTH * self._ema + (1 - self.SMOOTH) * loss
        self.losses.append((step, self._ema))
        self.update()

    def add_validation(self, step: int, point_miou: float, box_miou: float) -> None:
        self.val.append((step, point_miou, box_miou))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width, height = self.width(), self.height()
        left, right, top, bottom = 8, 8, 16, 8
        plot_w, plot_h = max(1, width - left - right), max(1, height - top - bottom)
        painter.fillRect(self.rect(), QColor(0, 0, 0, 40))
        painter.setPen(QPen(QColor(128, 128, 128), 1))
        painter.drawRect(left, top, plot_w, plot_h)
        steps = max(1, self.total_steps)

        def x(step: float) -> float:
            return left + plot_w * step / steps

        if self.losses:
            peak = max(loss for _, loss in self.losses) or 1.0
            line = QPolygonF([QPointF(x(s), top + plot_h * (1 - loss / peak)) for s, loss in self.losses])
            painter.setPen(QPen(LOSS_COLOR, 1.5))
            painter.drawPolyline(line)
        for index, color in ((1, POINT_COLOR), (2, BOX_COLOR)):
            if not self.val:
                continue
            points = [QPointF(x(v[0]), top + plot_h * (1 - v[index])) for v in self.val]
            painter.setPen(QPen(color, 2))
            if len(points) > 1:
                painter.drawPolyline(QPolygonF(points))
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
        painter.setPen(QPen(QColor(200, 200, 200), 1))
        font = painter.font()
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        label = "loss"
        if self.losses:
            label += f" {self.losses[-1][1]:.3f}"
        if self.val:
            label += f"   val mIoU point {self.val[-1][1]:.2f} / box {self.val[-1][2]:.2f}"
        painter.drawText(left, top - 4, label)
        painter.end()


class _Relay(QObject):
    """Carries trainer events from the worker thread to the Qt thread."""

    event = Signal(object)


class FinetuneWidget(QWidget):
    """Fine-tune a SAM model on annotated images and offer it to the Annotate widget.

    Signals (for scripts and tests): ``trained(str)`` with the saved model path when a
    run ends with a model (also after cancel, if an epoch finished), ``failed(str)``.
    """

    trained = Signal(str)
    failed = Signal(str)

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result = None  # the last TrainResult
        self.model_path: Path | None = None  # the last saved model
        self._worker = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.event.connect(self._on_event)
        self._build_ui()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        self.source_combo = QComboBox()
        self.source_combo.addItems([LAYERS, FOLDERS])
        self.source_combo.setToolTip("Train on layers open in napari, or on folders of image + label files")
        self.image_combo = _LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("Image: a plane, an RGB image or a stack (every labelled slice is used)")
        self.labels_combo = _LayerCombo(self.viewer, Labels, exclude=lambda layer: layer.name == "SAM preview")
        self.labels_combo.setToolTip("Instance labels matching the image; slices without labels are skipped")
        self.images_dir = self._folder_row("images folder (TIFF, PNG, …)")
        self.labels_dir = self._folder_row("labels folder (same file names, or *_labels / *_masks)")

        self.base_combo = QComboBox()
        add_named_models(self.base_combo)
        self.base_combo.addItem(CUSTOM_MODEL)
        self.base_combo.setToolTip("The model to start from: a named model or a checkpoint (e.g. an earlier fine-tune)")
        self.base_path = self._file_row("path to a .pt / .pth checkpoint", save=False)
        self.base_path.setVisible(False)
        self.base_combo.currentIndexChanged.connect(
            lambda *_: self.base_path.setVisible(self.base_combo.currentText() == CUSTOM_MODEL)
        )
        self.train_combo = QComboBox()
        for mode, description in TRAIN_CHOICES.items():
            self.train_combo.addItem(mode)
            self.train_combo.setItemData(self.train_combo.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.train_combo.setToolTip("What is trained; the decoder alone reuses cached embeddings (fast)")
        self.recipe_combo = QComboBox()
        self.recipe_combo.addItems(list(RECIPES))
        for index, tip in enumerate(RECIPE_TIPS[name] for name in RECIPES):
            self.recipe_combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
        self.recipe_combo.setToolTip("Training settings: SAM's, or the most gain per CPU-minute (docs/training.md)")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 10_000)
        self.epochs_spin.setValue(10)
        self.epochs_spin.setToolTip("Passes over every labelled object")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1e-1)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(1e-4)
        self.lr_spin.setToolTip("AdamW learning rate (peak of the warm-up / cosine schedule)")
        # A recipe brings its learning rate; the field can still be edited afterwards.
        self.recipe_combo.currentTextChanged.connect(
            lambda name: self.lr_spin.setValue(TrainConfig.recipe(name).optimiser.lr)
        )
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.05, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.2)
        self.val_spin.setToolTip("Share of the images (one image: of its objects) held out for validation")

        self.device_combo = QComboBox()
        self.device_combo.addItems(device_choices())
        self.out_path = self._file_row("where the fine-tuned model is saved (.pt)", save=True)
        self.out_path.setText(str(_unused_path(Path.home() / "napari-sam-models" / "finetuned.pt")))

        self._image_label, self._labels_label = QLabel("image"), QLabel("labels")
        self._images_dir_label, self._labels_dir_label = QLabel("images"), QLabel("labels")
        data_box = form_group("Training data", [
            ("source", self.source_combo), (self._image_label, self.image_combo),
            (self._labels_label, self.labels_combo), (self._images_dir_label, self.images_dir),
            (self._labels_dir_label, self.labels_dir),
        ])
        model_box = form_group("Model and training", [
            ("base model", self.base_combo), ("", self.base_path), ("train", self.train_combo),
            ("recipe", self.recipe_combo),
            ("epochs", self.epochs_spin), ("learning rate", self.lr_spin), ("validation", self.val_spin),
            ("device", self.device_combo), ("save as", self.out_path),
        ])

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current step; the best model so far is kept")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button = QPushButton("Use in Annotate widget")
        self.use_button.setToolTip("Switch the Annotate widget to the fine-tuned model")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_in_annotate)
        self.export_button = ExportButton(lambda: self.model_path, self._set_status)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.cancel_button, self.use_button, self.export_button):
            buttons.addWidget(button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.plot = CurvePlot()
        self.plot.setToolTip("Orange: training loss (smoothed); green / blue: validation mIoU from a point / a box")
        self.status_label = QLabel("Choose an image and its labels, then Train.")
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout()
        layout.addWidget(data_box)
        layout.addWidget(model_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.setLayout(layout)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self._on_source_changed()

    def _folder_row(self, placeholder: str) -> QWidget:
        return _PathRow(placeholder, lambda: QFileDialog.getExistingDirectory(self, placeholder))

    def _file_row(self, placeholder: str, save: bool) -> QWidget:
        if save:
            def pick():
                return QFileDialog.getSaveFileName(self, placeholder, "", "Checkpoints (*.pt)")[0]
        else:
            def pick():
                return QFileDialog.getOpenFileName(self, placeholder, "", "Checkpoints (*.pt *.pth);;All files (*)")[0]
        return _PathRow(placeholder, pick)

    def _on_source_changed(self, *_) -> None:
        layers = self.source_combo.currentText() == LAYERS
        for widget in (self._image_label, self.image_combo, self._labels_label, self.labels_combo):
            widget.setVisible(layers)
        for widget in (self._images_dir_label, self.images_dir, self._labels_dir_label, self.labels_dir):
            widget.setVisible(not layers)

    # ------------------------------------------------------------------ state

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _base(self) -> str:
        name = self.base_combo.currentText()
        return self.base_path.text() if name == CUSTOM_MODEL else name

    def _data(self):
        """-> (images, labels, description), validated in the Qt thread (layer data is read there)."""
        if self.source_combo.currentText() == FOLDERS:
            images, labels = self.images_dir.text(), self.labels_dir.text()
            if not images or not Path(images).is_dir():
                raise ValueError(f"images folder not found: {images!r}")
            if labels and not Path(labels).is_dir():
                raise ValueError(f"labels folder not found: {labels!r}")
            return images, labels or None, f"folder {images}"
        image_layer, labels_layer = self.image_combo.layer(), self.labels_combo.layer()
        if image_layer is None or labels_layer is None:
            raise ValueError("choose an Image layer and a Labels layer")
        image, labels = image_layer.data, labels_layer.data
        if getattr(image_layer, "multiscale", False):
            image = image[0]
        if getattr(labels_layer, "multiscale", False):
            labels = labels[0]
        plane = tuple(labels.shape)
        image_plane = tuple(image.shape[:-1]) if image_layer.rgb else tuple(image.shape)
        if image_plane != plane:
            raise ValueError(
                f"image layer {image_layer.name!r} {tuple(image.shape)} and labels layer {labels_layer.name!r} "
                f"{plane} do not have the same shape"
            )
        return image, labels, f"layers {image_layer.name!r} + {labels_layer.name!r}"

    # ------------------------------------------------------------------ actions

    def start(self) -> None:
        """Start training with the settings shown (in a worker thread)."""
        if self._worker is not None:
            return
        try:
            images, labels, description = self._data()
            base = self._base()
            if not base:
                raise ValueError("choose a checkpoint file for the base model")
            out = Path(self.out_path.text()).expanduser()
            if not out.name:
                raise ValueError("choose where to save the model")
            if out.exists():
                raise ValueError(f"{out} exists; choose another file name (existing models are never overwritten)")
        except ValueError as error:
            self._set_status(str(error))
            show_error(f"napari-sam fine-tune: {error}")
            return
        device = self.device_combo.currentText()
        options = {
            "config": TrainConfig.recipe(self.recipe_combo.currentText()),
            "train": self.train_combo.currentText(),
            "epochs": self.epochs_spin.value(),
            "lr": float(self.lr_spin.value()),
            "val_fraction": float(self.val_spin.value()),
            "device": None if device == "auto" else device,
        }
        self._cancel = threading.Event()
        self.result = None
        self.plot.clear()
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_status(f"Preparing {description} …")
        relay, cancel = self._relay, self._cancel

        def train():
            from ..training import finetune
            from ..training.data import samples_from_arrays

            if isinstance(images, str):
                data, data_labels = images, labels
            else:
                # Only the planes with labels are read and normalised (a stack may have few).
                label_array = np.asarray(labels)
                planes = list(np.ndindex(*label_array.shape[:-2]))
                labelled = [p for p in planes if label_array[p].any()]
                if not labelled:
                    raise ValueError("the labels layer has no labelled objects")
                data = samples_from_arrays([np.asarray(images[p]) for p in labelled],
                                           [label_array[p] for p in labelled], name=description)
                data_labels = None
                relay.event.emit({"event": "data", "planes": len(labelled), "of": len(planes)})
            out.parent.mkdir(parents=True, exist_ok=True)
            return finetune(data, data_labels, base=base, out=out, on_progress=relay.event.emit,
                            cancel=cancel, **options)

        worker = create_worker(
            train, _start_thread=False, _connect={"returned": self._on_returned, "errored": self._on_error}
        )
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop after the current step; the best model so far is saved."""
        if self._worker is not None:
            self._cancel.set()
            self._set_status("Cancelling after this step …")

    def use_in_annotate(self) -> None:
        """Offer the last saved model to the Annotate widgets and switch them to it."""
        from .registry import finetuned_models

        if self.model_path is not None:
            finetuned_models().use(self.model_path)
            self._set_status(f"Annotate widget: using {self.model_path.name}.")

    # ------------------------------------------------------------------ worker events

    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "data":
            self._set_status(f"Training on {event['planes']} labelled planes (of {event['of']}) …")
        elif kind == "step":
            total = int(event["total_steps"])
            self.plot.total_steps = total
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(int(event["step"]))
            self.plot.add_loss(int(event["step"]), float(event["loss"]))
        elif kind == "epoch":
            val = event["val"]
            self.plot.add_validation(int(event["step"]), val["point_miou"], val["box_miou"])
            self._set_status(
                f"Epoch {event['epoch'] + 1}: loss {event['loss']:.3f}, validation mIoU point "
                f"{val['point_miou']:.3f} / box {val['box_miou']:.3f}"
            )

    def _on_returned(self, result) -> None:
        self.result = result
        if result.model_path is None:
            self._set_status("Cancelled before the first epoch ended: no model saved.")
            return
        from .registry import finetuned_models

        self.model_path = Path(result.model_path)
        label = finetuned_models().add(self.model_path)
        best = result.best
        done = "Cancelled; kept" if result.cancelled else "Done:"
        self._set_status(
            f"{done} {self.model_path} (best validation mIoU point {best['point_miou']:.3f} / box "
            f"{best['box_miou']:.3f}). It is listed as {label!r} in the Annotate widget."
        )
        self.use_button.setEnabled(True)
        self.export_button.setEnabled(True)
        show_info(f"napari-sam: fine-tuned model saved to {self.model_path}")
        self.trained.emit(str(self.model_path))

    def _on_error(self, error) -> None:
        message = f"napari-sam fine-tune failed: {error}"
        self._set_status(message)
        show_error(message)
        self.failed.emit(str(error))

    def _on_finished(self) -> None:
        self._worker = None
        self.progress_bar.setVisible(False)
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.out_path.setText(str(_unused_path(Path(self.out_path.text()).expanduser())))

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)


class _PathRow(QWidget):
    """A line edit with a "…" button that opens a file dialog."""

    def __init__(self, placeholder: str, pick, parent=None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        button = QPushButton("…")
        button.setMaximumWidth(30)
        button.clicked.connect(lambda: self._pick(pick))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(button)
        self.setLayout(row)

    def _pick(self, pick) -> None:
        path = pick()
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt style)
        self.edit.setText(text)


def _unused_path(path: Path) -> Path:
    """``path``, or ``<stem>-2<suffix>``, ``-3``, … : the first that does not exist."""
    if not path.exists():
        return path
    stem = re.sub(r"-\d+$", "", path.stem)
    for number in range(2, 10_000):
        candidate = path.with_name(f"{stem}-{number}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free file name next to {path}")
