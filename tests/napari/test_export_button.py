"""The fine-tune widget's Export for BioImage.IO button writes a package in a worker."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam._napari.export_button import ExportButton  # noqa: E402
from napari_sam.checkpoints import metadata_path  # noqa: E402
from tiny import DEFAULT_WEIGHTS  # noqa: E402

TIMEOUT = 60_000  # ms


@pytest.fixture()
def saved_model(tmp_path):
    """A copy of the bundled model, standing for the model a fine-tune just saved."""
    path = tmp_path / "tuned.pt"
    shutil.copy(DEFAULT_WEIGHTS, path)
    shutil.copy(metadata_path(DEFAULT_WEIGHTS), metadata_path(path))
    return path


def test_the_button_writes_a_package_in_a_worker_and_never_replaces_unasked(qtbot, saved_model, tmp_path):
    statuses = []
    button = ExportButton(lambda: saved_model, statuses.append)
    qtbot.addWidget(button)
    out = tmp_path / "tuned.zip"
    worker = button.export(out)
    assert worker is not None and not button.isEnabled()  # busy while the worker runs
    qtbot.waitUntil(lambda: button.worker is None, timeout=TIMEOUT)
    assert statuses[-1] == f"Exported {out}."
    with zipfile.ZipFile(out) as package:
        assert "rdf.yaml" in package.namelist()
    before = out.read_bytes()
    button.export(out)  # exists, not asked to overwrite
    qtbot.waitUntil(lambda: button.worker is None, timeout=TIMEOUT)
    assert statuses[-1].startswith("Export failed") and out.read_bytes() == before


def test_nothing_to_export_before_a_model_is_saved(qtbot):
    button = ExportButton(lambda: None, lambda text: None)
    qtbot.addWidget(button)
    assert button.export(Path("x.zip")) is None and not button.isEnabled()
