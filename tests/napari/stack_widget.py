"""The Annotate widget docked on a stack with a labels layer: the set-up the Propagate tests share."""

from __future__ import annotations

import numpy as np

from napari_sam._napari.widget import AnnotateWidget


def stack_widget(viewer, image: np.ndarray, labels: np.ndarray, label: int, plane: int, model, name: str = "test",
                 **image_options):
    """Add ``image`` (``image_options`` to ``add_image``) and ``labels`` (as "labels", ``label``
    selected), show ``plane`` of the first axis, dock an :class:`AnnotateWidget` writing to
    that layer and give it ``model``. Returns ``(widget, labels layer)``."""
    viewer.add_image(image, **image_options)
    layer = viewer.add_labels(labels, name="labels")
    layer.selected_label = label
    viewer.dims.set_current_step(0, plane)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.set_layer(layer)
    widget.use_model(model, name=name)
    return widget, layer
