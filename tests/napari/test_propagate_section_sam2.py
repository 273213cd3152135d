"""The widget's "Propagate" section with a SAM 2.1 model: the run follows the selected label
with the model's memory (``annotate/propagate_video.py``) and writes what that run finds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_sam.annotate.propagate import PlaneSource, PropagationSettings, Propagator, Seed  # noqa: E402
from napari_sam.inference.predictor import Predictor  # noqa: E402
from stack_widget import stack_widget  # noqa: E402
from tiny import build_tiny_sam2, ellipse  # noqa: E402

TIMEOUT = 60_000  # ms
SHAPE = (48, 64)


def test_a_label_is_propagated_with_sam2_memory(make_napari_viewer, qtbot):
    model = build_tiny_sam2()
    with torch.no_grad():  # random masks vanish at once: make them (nearly) the whole plane
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].bias += 0.5
    image = np.zeros((6, *SHAPE), np.uint16)
    for plane in range(6):
        image[plane][ellipse(SHAPE, (20, 18 + 2 * plane), (9, 10))] = 900
    labels = np.zeros(image.shape, np.int32)
    labels[3][image[3] > 0] = 3
    labels[0, :4, :4] = 9  # kept (preserve)
    widget, layer = stack_widget(make_napari_viewer(), image, labels, 3, 3, model, name="tiny-sam2")
    section = widget.propagate_section
    section.min_score_spin.setValue(0.0)  # random weights: keep every plane the memory finds
    before = np.array(layer.data)
    with qtbot.waitSignal(section.finished, timeout=TIMEOUT):
        section.run()
    qtbot.waitUntil(lambda: not section.busy, timeout=TIMEOUT)

    expected = Propagator(Predictor(model), settings=PropagationSettings(min_score=0.0)).run(
        PlaneSource(image), [Seed(3, 3, mask=labels[3] == 3)])
    assert expected.planes(3) == list(range(6))  # the memory followed it through every plane
    want = (expected.labels() == 3) & (before != 9)
    np.testing.assert_array_equal(layer.data == 3, want)
    assert np.all(layer.data[0, :4, :4] == 9)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
