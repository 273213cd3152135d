"""The Annotate widget's "Segment all" section: a worker, Cancel, one undoable edit.

The tiny random model shows the real segmenter runs end to end in the worker; the
exact-write tests replace ``AutomaticSegmenter.segment`` with a known answer (gated by
an event, so the GUI is seen running while the worker waits).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.automatic import AutomaticSegmenter, SegmentationCancelled  # noqa: E402
from napari_sam.model import build_sam  # noqa: E402
from napari_sam._napari.automatic_section import instances_edit  # noqa: E402
from napari_sam._napari.widget import AnnotateWidget  # noqa: E402
from tiny import TINY  # noqa: E402

TIMEOUT = 30_000  # ms


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam(TINY)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_model):
    """An Annotate widget on a 64x64 image with the tiny model, and a labels layer whose
    top-left square is label 7."""
    viewer = make_napari_viewer()
    image = np.zeros((64, 64), np.float32)
    image[20:40, 20:40] = 1.0
    viewer.add_image(image)
    labels = np.zeros((64, 64), np.int32)
    labels[:10, :10] = 7
    layer = viewer.add_labels(labels, name="labels")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.set_layer(layer)
    widget.use_model(tiny_model, name="test")
    yield widget
    widget.automatic_section.cancel()
    qtbot.waitUntil(lambda: not widget.busy and not widget.automatic_section.busy, timeout=TIMEOUT)


KNOWN = np.zeros((64, 64), np.uint32)
KNOWN[5:15, 5:15] = 1  # overlaps label 7
KNOWN[30:40, 30:50] = 2


@pytest.fixture
def gated(monkeypatch):
    """``segment`` answers KNOWN once ``gate`` is set (or raises when cancelled)."""
    gate, calls = threading.Event(), []

    def segment(self, plane, *, progress=None, cancel=None):
        calls.append((self.mode, np.asarray(plane).shape))
        progress(0, 2)
        while not gate.wait(0.01):
            if cancel():
                raise SegmentationCancelled("cancelled")
        progress(2, 2)
        return KNOWN.copy()

    monkeypatch.setattr(AutomaticSegmenter, "segment", segment)
    return gate, calls


def test_tiny_model_runs_in_a_worker(qtbot, widget):
    section = widget.automatic_section
    section.mode_combo.setCurrentIndex(section.mode_combo.findData("amg"))
    section.min_size_spin.setValue(0)
    before = np.array(widget.labels_layer.data)
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
        assert section.busy and section.worker is not None
    assert "failed" not in section.status_label.text() and "pixels changed" in section.status_label.text()
    after = widget.labels_layer.data
    assert np.array_equal(after[before != 0], before[before != 0])  # existing labels preserved
    assert after.max() == 0 or after[before == 0].max() == 0 or after[after != before].min() > 7


def test_segment_all_one_undoable_step_preserving_labels(qtbot, widget, gated):
    gate, calls = gated
    section, layer = widget.automatic_section, widget.labels_layer
    before = np.array(layer.data)
    section.run()
    qtbot.wait(50)  # the GUI thread runs while the worker waits
    assert section.busy and not section.cancel_button.isHidden()
    assert calls == [("amg", (64, 64))]  # the tiny model has no decoder: AMG
    with qtbot.waitSignal(section.written, timeout=TIMEOUT) as blocker:
        gate.set()
    qtbot.waitUntil(lambda: not section.busy, timeout=TIMEOUT)
    data = layer.data
    assert np.all(data[:10, :10] == 7)  # preserved
    assert np.all(data[10:15, 5:15] == 8) and np.all(data[5:10, 10:15] == 8)  # ids past the max label
    assert np.all(data[30:40, 30:50] == 9)
    assert blocker.args[0] == int((data != before).sum())
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_overwrite_option(qtbot, widget, gated):
    gate, _ = gated
    gate.set()
    widget.overwrite_check.setChecked(True)
    section = widget.automatic_section
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    assert np.all(widget.labels_layer.data[5:15, 5:15] == 8)
    assert np.all(widget.labels_layer.data[:5, :5] == 7)


def test_cancel_leaves_labels_untouched(qtbot, widget, gated):
    section, layer = widget.automatic_section, widget.labels_layer
    before = np.array(layer.data)
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
        qtbot.wait(30)
        section.cancel_button.click()
    assert "Cancelled" in section.status_label.text()
    assert np.array_equal(layer.data, before)


def test_instances_edit_on_a_new_plane():
    current = np.zeros((4, 4), np.uint16)
    current[0, 0] = 3
    instances = np.array([[1, 1, 0, 0], [0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 0]], np.uint32)
    edit = instances_edit(current, instances, 4, preserve=True)
    plane = current.copy()
    edit.apply(plane)
    assert plane.dtype == np.uint16
    assert plane[0, 0] == 3 and plane[0, 1] == 4 and plane[1, 3] == 5 and plane[2, 3] == 5
    edit.undo(plane)
    assert np.array_equal(plane, current)


def test_the_object_size_reaches_the_segmenter(qtbot, widget, monkeypatch):
    seen = []

    def segment(self, plane, *, progress=None, cancel=None):
        seen.append((self.object_size, self.preferred_size))
        return KNOWN.copy()

    monkeypatch.setattr(AutomaticSegmenter, "segment", segment)
    section = widget.automatic_section

    class SizedDecoder:  # a decoder trained here says what size it knows
        conventions, object_size = "napari_sam", 19.0

    section.decoder = SizedDecoder()
    section.mode_combo.setCurrentIndex(section.mode_combo.findData("ais"))
    assert section.object_size_spin.value() == 0 and section.object_size_spin.text() == "auto"
    for value, expected in ((0, "auto"), (40, 40.0)):
        section.object_size_spin.setValue(value)
        with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
            section.run()
        assert seen[-1] == (expected, 19.0)
    section.decoder = None  # the tiny model has no decoder: AMG, where a size means nothing
    section.mode_combo.setCurrentIndex(section.mode_combo.findData(None))
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    assert seen[-1] == ("auto", None) and "failed" not in section.status_label.text()
