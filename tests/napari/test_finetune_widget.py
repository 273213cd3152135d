"""The Fine-tune widget in a headless napari: layers in, a trained model out, offered to Annotate.

Run under Xvfb (see scripts/test.sh). Training uses the bundled default model (small, so
an epoch on one 128 x 160 plane takes about a second on a CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.checkpoints import load_model  # noqa: E402
from napari_sam.synthetic import generate  # noqa: E402

from napari_sam._napari.finetune_widget import FOLDERS, FinetuneWidget, _unused_path  # noqa: E402
from napari_sam._napari.registry import finetuned_models  # noqa: E402
from napari_sam._napari.widget import AnnotateWidget  # noqa: E402

TIMEOUT = 120_000  # ms


@pytest.fixture(scope="module")
def stack():
    """Two planes of nuclei; only the first is labelled (the second must be skipped)."""
    planes = [generate((128, 160), modality="fluorescence", kinds=("nucleus",), seed=s) for s in (3, 4)]
    image = np.stack([p.image for p in planes])
    labels = np.stack([planes[0].labels, np.zeros_like(planes[1].labels)]).astype(np.uint16)
    return image, labels


@pytest.fixture
def widget(make_napari_viewer, qtbot, stack, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(stack[0], name="nuclei")
    viewer.add_labels(stack[1], name="nuclei labels")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.base_combo.setCurrentText("default")
    widget.train_combo.setCurrentText("decoder")
    widget.epochs_spin.setValue(2)
    widget.lr_spin.setValue(1e-4)
    widget.device_combo.setCurrentText("cpu")
    widget.out_path.setText(str(tmp_path / "tuned.pt"))
    yield viewer, widget
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


def test_trains_on_layers_in_a_background_worker_with_live_progress(widget, qtbot, tmp_path):
    viewer, w = widget
    assert w.image_combo.layer().name == "nuclei" and w.labels_combo.layer().name == "nuclei labels"
    with qtbot.waitSignal(w.trained, timeout=TIMEOUT) as signal:
        w.start()
        # start() returns at once: the training runs in a worker while Qt keeps going.
        assert w.busy and not w.train_button.isEnabled() and w.cancel_button.isEnabled()
    path = tmp_path / "tuned.pt"
    assert signal.args == [str(path)]
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    # Live plot: one smoothed loss per step, one validation point per epoch.
    assert len(w.plot.losses) == w.result.total_steps > 0
    assert [step for step, *_ in w.plot.val] == [record["step"] for record in w.result.history["val"]]
    assert len(w.plot.val) == 2 and all(0 <= p <= 1 and 0 <= b <= 1 for _, p, b in w.plot.val)
    # The saved model loads, says how it was made, and is offered to Annotate widgets.
    model = load_model(path, device="cpu")
    assert model.metadata["base_model"] == "default" and model.metadata["trained"] == "decoder"
    assert "1 planes" in model.metadata["data"]
    assert str(path.resolve()) in [p for _, p in finetuned_models().items()]
    assert w.use_button.isEnabled() and w.train_button.isEnabled()
    # The next run will not overwrite this one.
    assert w.out_path.text() == str(tmp_path / "tuned-2.pt")


def test_the_fast_recipe_brings_its_settings_and_the_learning_rate_field_follows(widget, qtbot, tmp_path):
    from napari_sam.training import load_train_state, state_path_for

    _, w = widget
    w.recipe_combo.setCurrentText("fast")
    assert w.lr_spin.value() == pytest.approx(1e-3)
    w.lr_spin.setValue(5e-4)  # the field still overrides the recipe
    w.epochs_spin.setValue(1)
    with qtbot.waitSignal(w.trained, timeout=TIMEOUT):
        w.start()
    config = load_train_state(state_path_for(tmp_path / "tuned.pt"))["config"]
    assert (config["rounds"], config["focal_weight"], config["loss_resolution"]) == (3, 0.0, "input")
    assert config["lr"] == pytest.approx(5e-4)
    w.recipe_combo.setCurrentText("sam")
    assert w.lr_spin.value() == pytest.approx(1e-4)


def test_only_labelled_planes_are_used(widget, qtbot):
    _, w = widget
    seen = []
    w._relay.event.connect(lambda event: seen.append(event) if event.get("event") == "data" else None)
    with qtbot.waitSignal(w.trained, timeout=TIMEOUT):
        w.start()
    assert seen == [{"event": "data", "planes": 1, "of": 2}]


def test_cancel_keeps_the_best_model_so_far(widget, qtbot, tmp_path):
    _, w = widget
    w.epochs_spin.setValue(500)
    w.start()
    qtbot.waitUntil(lambda: len(w.plot.val) >= 1, timeout=TIMEOUT)  # one epoch validated
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.result.cancelled and w.result.step < w.result.total_steps
    model = load_model(tmp_path / "tuned.pt", device="cpu")
    assert model.metadata["complete"] is False


def test_finished_model_is_offered_and_used_in_the_annotate_widget(widget, qtbot, tmp_path):
    viewer, w = widget
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    with qtbot.waitSignal(w.trained, timeout=TIMEOUT):
        w.start()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    path = str((tmp_path / "tuned.pt").resolve())
    index = annotate.model_combo.findData(path)
    assert index >= 0 and annotate.model_combo.itemText(index) == "fine-tuned: tuned"
    # A widget opened later lists it too.
    later = AnnotateWidget(viewer)
    assert later.model_combo.findData(path) >= 0
    with qtbot.waitSignal(annotate.model_loaded, timeout=TIMEOUT):
        w.use_button.click()
    assert annotate.model_combo.currentIndex() == index
    assert annotate._model_source[0] == path
    assert annotate.model.metadata["trained"] == "decoder"
    qtbot.waitUntil(lambda: not annotate.busy, timeout=TIMEOUT)


def test_existing_model_file_is_never_overwritten(widget, qtbot, tmp_path):
    _, w = widget
    existing = tmp_path / "tuned.pt"
    existing.write_bytes(b"my model")
    w.start()
    assert not w.busy and "exists" in w.status_label.text()
    assert existing.read_bytes() == b"my model"


def test_mismatched_layers_and_empty_labels_are_reported(widget, qtbot):
    viewer, w = widget
    viewer.add_labels(np.zeros((2, 64, 64), np.uint16), name="wrong shape")
    w.labels_combo.set_layer(viewer.layers["wrong shape"])
    w.start()
    assert not w.busy and "do not have the same shape" in w.status_label.text()
    viewer.add_labels(np.zeros((2, 128, 160), np.uint16), name="empty")
    w.labels_combo.set_layer(viewer.layers["empty"])
    with qtbot.waitSignal(w.failed, timeout=TIMEOUT) as signal:
        w.start()
    assert "no labelled objects" in signal.args[0]


def test_folders_train_like_the_cli(widget, qtbot, tmp_path, stack):
    import tifffile

    _, w = widget
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        sample = generate((128, 128), modality="fluorescence", kinds=("nucleus",), seed=10 + i)
        tifffile.imwrite(tmp_path / "images" / f"cells{i}.tif", sample.image)
        tifffile.imwrite(tmp_path / "labels" / f"cells{i}.tif", sample.labels.astype(np.uint16))
    w.source_combo.setCurrentText(FOLDERS)
    w.images_dir.setText(str(tmp_path / "images"))
    w.labels_dir.setText(str(tmp_path / "labels"))
    w.epochs_spin.setValue(1)
    with qtbot.waitSignal(w.trained, timeout=TIMEOUT):
        w.start()
    assert "2 image files" in load_model(tmp_path / "tuned.pt", device="cpu").metadata["data"]


def test_unused_path_counts_up(tmp_path):
    path = tmp_path / "model.pt"
    assert _unused_path(path) == path
    path.write_bytes(b"")
    assert _unused_path(path) == tmp_path / "model-2.pt"
    (tmp_path / "model-2.pt").write_bytes(b"")
    assert _unused_path(tmp_path / "model-2.pt") == tmp_path / "model-3.pt"
