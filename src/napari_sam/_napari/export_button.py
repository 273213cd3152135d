"""The fine-tune widget's "Export for BioImage.IO" button: the saved model -> a model package.

Writing a package runs the model once on its test image, so it runs in a worker.
"""

from __future__ import annotations

from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QPushButton


class ExportButton(QPushButton):
    """Exports ``model_path()`` (None: nothing to export) with :func:`napari_sam.export.export_model`."""

    def __init__(self, model_path, set_status, parent=None) -> None:
        super().__init__("Export for BioImage.IO…", parent)
        self.setToolTip("Write the fine-tuned model as a BioImage.IO model package (.zip) for model zoos and other tools")
        self.setEnabled(False)
        self._model_path = model_path
        self._set_status = set_status
        self.worker = None
        self.clicked.connect(self._ask)

    def _ask(self) -> None:
        model = self._model_path()
        if model is None:
            return
        target, _ = QFileDialog.getSaveFileName(self, "BioImage.IO package", str(model.with_suffix(".zip")),
                                                "BioImage.IO package (*.zip)")
        if target:
            self.export(Path(target), overwrite=True)  # the dialog already asked about replacing

    def export(self, out: Path, *, overwrite: bool = False):
        """Start writing the package to ``out`` in a worker; returns the worker."""
        from ..export import export_model

        model = self._model_path()
        if model is None or self.worker is not None:
            return None
        self.setEnabled(False)
        self._set_status(f"Exporting {model.name} to {out} …")
        # Handlers connected at creation: an error connected later is re-raised into Qt's loop.
        worker = create_worker(export_model, model, out, format="bioimageio", overwrite=overwrite,
                               _connect={"returned": self._on_returned, "errored": self._on_error,
                                         "finished": self._on_finished},
                               _start_thread=False)
        self.worker = worker
        worker.start()
        return worker

    def _on_returned(self, path) -> None:
        self._set_status(f"Exported {path}.")
        show_info(f"napari-sam: BioImage.IO package written to {path}")

    def _on_error(self, error) -> None:
        self._set_status(f"Export failed: {error}")
        show_error(f"napari-sam: export failed: {error}")

    def _on_finished(self) -> None:
        self.worker = None
        self.setEnabled(self._model_path() is not None)
