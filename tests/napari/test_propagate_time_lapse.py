"""The Propagate section's "stack" choice: volume (z) or time-lapse (t), set from the axis's
name, reaches the :class:`~napari_sam.annotate.propagate.Propagator` as
``PropagationSettings.for_axis`` (time-lapse: box prompts, no contrast rule).

The predictor is ``propagation_stand_in.GreyLevelPredictor`` (exact masks of grey-level
objects). The object dims from frame 4 on, as a nucleus changing brightness along time
does: the volume defaults' contrast rule stops it there, the time-lapse defaults follow it
to the last frame. So the written labels show which settings the run used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam._napari import propagate_section as section_module  # noqa: E402
from napari_sam._napari.propagate_section import axis_kind, label_kind  # noqa: E402
from napari_sam.annotate.propagate import PropagationSettings, Propagator  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "annotate"))  # the stand-in lives beside its tests
from propagation_stand_in import GreyLevelPredictor  # noqa: E402
from stack_widget import stack_widget  # noqa: E402
from tiny import ellipse  # noqa: E402

TIMEOUT = 30_000  # ms
SHAPE = (48, 64)
FRAMES = 8
SEED = 2


def time_lapse() -> np.ndarray:
    """``(8, 48, 64)``: one object drifting right, grey 900 on frames 0..3, 250 after (dimmer)."""
    data = np.zeros((FRAMES, *SHAPE), np.uint16)
    for frame in range(FRAMES):
        data[frame][ellipse(SHAPE, (22, 20 + 2 * frame), (8, 9))] = 900 if frame < 4 else 250
    return data


class Recording(Propagator):
    """The section's Propagator, remembering the settings of each one built."""

    built: list[PropagationSettings] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        Recording.built.append(self.settings)


@pytest.fixture
def open_widget(make_napari_viewer, qtbot, tiny_model, monkeypatch):
    """``open_widget(**add_image_kwargs) -> (widget, labels layer)``: the time lapse at frame 2,
    its object drawn there as label 1 (selected); Propagators built are recorded."""
    Recording.built = []
    monkeypatch.setattr(section_module, "Propagator", Recording)
    widgets = []

    def open_(**kwargs):
        viewer = make_napari_viewer()
        image = time_lapse()
        labels = np.zeros(image.shape, np.int32)
        labels[SEED][image[SEED] > 0] = 1
        widget, layer = stack_widget(viewer, image, labels, 1, SEED, tiny_model, **kwargs)
        widget.propagate_section.predictor = GreyLevelPredictor(tiny_model)
        widgets.append(widget)
        return widget, layer

    yield open_
    for widget in widgets:
        qtbot.waitUntil(lambda: not widget.busy and not widget.propagate_section.busy, timeout=TIMEOUT)


def propagate(qtbot, widget) -> list[int]:
    """Run the section; the frames label 1 covers afterwards."""
    section = widget.propagate_section
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    qtbot.waitUntil(lambda: not section.busy, timeout=TIMEOUT)
    data = np.asarray(widget.labels_layer.data)
    return [frame for frame in range(FRAMES) if (data[frame] == 1).any()]


def test_axis_names_pick_the_stack_kind():
    """Layer labels, the slider's label and the reader's TIFF letters; unknown names give z."""
    assert [label_kind(name) for name in ("T", " time ", "Frame", "Z", "slice", "0", "-3", "c")] == [
        "t", "t", "t", "z", "z", None, None, None]

    class Layer:  # what axis_kind reads of an Image layer
        def __init__(self, ndim, axis_labels=None, axes=None, rgb=False):
            self.ndim, self.rgb = ndim, rgb
            self.axis_labels = axis_labels or tuple(str(i - ndim) for i in range(ndim))
            self.metadata = {} if axes is None else {"axes": axes}

    assert axis_kind(Layer(3), 0) == "z"
    assert axis_kind(Layer(3, ("t", "y", "x")), 0) == "t"
    assert axis_kind(Layer(4, axes="TZYX"), 0) == "t" and axis_kind(Layer(4, axes="TZYX"), 1) == "z"
    assert axis_kind(Layer(3, axes="TYXS", rgb=True), 0) == "t"  # the colour letter is a data axis too
    assert axis_kind(Layer(3, axes="TZYX"), 0) == "z"  # letters of another shape are not this layer's
    assert axis_kind(Layer(3), 0, ("c", "time", "y", "x")) == "t"  # the layer fills the last world axes
    assert axis_kind(Layer(3, ("z", "y", "x"), axes="TYX"), 0) == "z"  # the layer's own label first


def test_a_time_labelled_axis_propagates_with_the_time_lapse_settings(qtbot, open_widget):
    widget, layer = open_widget(axis_labels=("t", "y", "x"))
    section = widget.propagate_section
    assert section.kind_combo.currentData() == "t" and section.kind_combo.currentText() == "time-lapse (t)"
    before = np.array(layer.data)
    assert propagate(qtbot, widget) == list(range(FRAMES))  # followed through the dimming
    settings = Recording.built[-1]
    assert settings == PropagationSettings.for_axis("t")
    assert (settings.prompt, settings.min_contrast) == ("box", 0.0)
    np.testing.assert_array_equal(layer.data == 1, time_lapse() > 0)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_an_unnamed_axis_is_a_volume_until_the_user_picks_time_lapse(qtbot, open_widget):
    widget, layer = open_widget()
    section = widget.propagate_section
    assert section.kind_combo.currentData() == "z"
    assert propagate(qtbot, widget) == [0, 1, 2, 3]  # the contrast rule stops where the object dims
    assert Recording.built[-1] == PropagationSettings.for_axis("z")
    layer.undo()

    section.kind_combo.setCurrentIndex(section.kind_combo.findData("t"))
    widget.viewer.add_labels(np.zeros(time_lapse().shape, np.int32), name="other")  # the choice stays
    assert section.kind_combo.currentData() == "t"
    section.direction_combo.setCurrentIndex(section.direction_combo.findData("forward"))
    section.min_score_spin.setValue(0.1)
    assert propagate(qtbot, widget) == list(range(SEED, FRAMES))
    assert Recording.built[-1] == PropagationSettings.for_axis("t", direction="forward", min_score=0.1)


def test_the_slider_label_and_the_readers_letters_set_time_lapse(qtbot, open_widget):
    widget, _ = open_widget()
    section = widget.propagate_section
    assert section.kind_combo.currentData() == "z"
    widget.viewer.dims.axis_labels = ("time", "y", "x")  # renamed on the slider
    assert section.kind_combo.currentData() == "t"

    widget, _ = open_widget(metadata={"axes": "TYX"})  # as this plugin's TIFF reader opens a T stack
    assert widget.propagate_section.kind_combo.currentData() == "t"
    assert propagate(qtbot, widget) == list(range(FRAMES))
    assert Recording.built[-1] == PropagationSettings.for_axis("t")
