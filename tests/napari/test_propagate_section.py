"""The Annotate widget's "Propagate" section: seeds from the shown plane, a worker, Cancel,
one undoable edit over the whole stack.

The predictor is ``propagation_stand_in.GreyLevelPredictor`` (exact masks of grey-level
objects), so the written labels are known exactly.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.model import build_sam  # noqa: E402
from napari_sam._napari.propagate_section import CURRENT, plane_seeds  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "annotate"))  # the stand-in lives beside its tests
from propagation_stand_in import GreyLevelPredictor  # noqa: E402
from stack_widget import stack_widget  # noqa: E402
from tiny import TINY, ellipse  # noqa: E402

TIMEOUT = 30_000  # ms
SHAPE = (64, 64)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam(TINY)


class GatedPredictor(GreyLevelPredictor):
    """Embeds a plane only once ``gate`` is set."""

    def __init__(self, model):
        super().__init__(model)
        self.gate = threading.Event()
        self.gate.set()

    def compute_embedding(self, image):
        while not self.gate.wait(0.01):
            pass
        return super().compute_embedding(image)


def stack():
    """``(12, 64, 64)``: object 3 on planes 2..9, object 5 on planes 4..11."""
    data = np.zeros((12, *SHAPE), np.uint16)
    for plane in range(2, 10):
        data[plane][ellipse(SHAPE, (20, 20), (8, 8))] = 3
    for plane in range(4, 12):
        data[plane][ellipse(SHAPE, (44, 44), (7, 9))] = 5
    return data


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_model):
    """The widget on the stack at plane 6, label 3 drawn on plane 6 (selected), label 9 a
    stray pixel block on plane 0 (must be preserved)."""
    image = stack()
    labels = np.zeros(image.shape, np.int32)
    labels[6][image[6] == 3] = 3
    labels[0, :4, :4] = 9
    widget, _ = stack_widget(make_napari_viewer(), image, labels, 3, 6, tiny_model)
    widget.propagate_section.predictor = GatedPredictor(tiny_model)
    yield widget
    widget.propagate_section.predictor.gate.set()
    qtbot.waitUntil(lambda: not widget.busy and not widget.propagate_section.busy, timeout=TIMEOUT)


def test_the_selected_label_is_propagated_in_one_undoable_step(qtbot, widget):
    section, layer = widget.propagate_section, widget.labels_layer
    before = np.array(layer.data)
    gate = section.predictor.gate
    gate.clear()
    section.run()
    qtbot.wait(50)  # the GUI runs while the worker waits for its embedding
    assert section.busy and not section.cancel_button.isHidden()
    with qtbot.waitSignal(section.written, timeout=TIMEOUT) as blocker:
        gate.set()
    qtbot.waitUntil(lambda: not section.busy, timeout=TIMEOUT)
    data = layer.data
    truth = stack()
    np.testing.assert_array_equal(data == 3, truth == 3)  # planes 2..9, stopped at both ends
    assert np.all(data[0, :4, :4] == 9) and not (data == 5).any()
    assert blocker.args[0] == int((data != before).sum())
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_all_labels_up_only_with_existing_labels_preserved(qtbot, widget):
    section, layer = widget.propagate_section, widget.labels_layer
    rows, cols = np.nonzero(stack()[6] == 5)
    layer.data_setitem((np.full(len(rows), 6), rows, cols), np.full(len(rows), 5))  # object 5 labelled on plane 6
    layer.data_setitem((np.array([8]), np.array([20]), np.array([20])), np.array([7]))  # inside object 3 on plane 8
    before = np.array(layer.data)
    section.object_combo.setCurrentIndex(section.object_combo.findData("all"))
    section.direction_combo.setCurrentIndex(section.direction_combo.findData("forward"))
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    data = layer.data
    assert not (data[:6] != before[:6]).any()  # nothing below the shown plane
    assert data[8, 20, 20] == 7  # preserved
    expected = (stack()[7:10] == 3)
    expected[1, 20, 20] = False
    np.testing.assert_array_equal(data[7:10] == 3, expected)
    np.testing.assert_array_equal(data[6:] == 5, stack()[6:] == 5)  # followed to the end of the stack
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_cancel_leaves_labels_untouched(qtbot, widget):
    section, layer = widget.propagate_section, widget.labels_layer
    before = np.array(layer.data)
    section.predictor.gate.clear()
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
        qtbot.wait(30)
        section.cancel_button.click()
        section.predictor.gate.set()
    assert "Cancelled" in section.status_label.text()
    np.testing.assert_array_equal(layer.data, before)


def test_nothing_to_propagate_is_said(qtbot, widget):
    section = widget.propagate_section
    widget.labels_layer.selected_label = 4
    section.run()
    assert not section.busy and "Nothing to propagate" in section.status_label.text()
    assert section.axis_spin.maximum() == 0 and section.run_button.isEnabled()  # (z, y, x): only z


def test_the_widget_model_and_store_run_end_to_end(qtbot, widget):
    section = widget.propagate_section
    section.predictor = None  # the tiny random model through the widget's own predictor and embedding store
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    assert "pixels changed" in section.status_label.text()
    assert np.all(widget.labels_layer.data[0, :4, :4] == 9)
    section.predictor = GatedPredictor(widget.model)  # for the fixture's teardown


def test_the_shown_candidates_are_the_current_objects():
    key = ("image", (6,))
    masks = [ellipse(SHAPE, (20, 20), (5, 5)), np.zeros(SHAPE, bool), ellipse(SHAPE, (40, 40), (5, 5))]
    session = SimpleNamespace(result=SimpleNamespace(request=SimpleNamespace(key=key)), preview_masks=lambda: masks)
    ref = SimpleNamespace(key=key)
    seeds = plane_seeds(session, ref, np.zeros(SHAPE, np.int32), 0, CURRENT, 12, 6)
    assert [(s.label, s.plane) for s in seeds] == [(12, 6), (13, 6)]  # new ids; the empty mask is no object
    np.testing.assert_array_equal(seeds[1].mask, masks[2])
    other = SimpleNamespace(key=("image", (7,)))  # a result of another plane is not shown here
    with pytest.raises(ValueError, match="Nothing to propagate"):
        plane_seeds(session, other, None, 0, CURRENT, 12, 7)
