"""The layers the Annotate widget writes: the preview of the shown masks, and the labels.

The preview is one Labels layer, reused: a new result rewrites only the pixels that
differ from what is shown (the old and new masks' bounding box), so the canvas uploads
that region, not the plane.
"""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from . import layers as L

PREVIEW_COLOR = "yellow"


def below(viewer, layer, others) -> None:
    """Move ``layer`` under the lowest of ``others`` (prompt layers stay visible on top)."""
    layers = viewer.layers
    positions = [layers.index(other) for other in others if other is not None and other in layers]
    if positions and layers.index(layer) > min(positions):
        layers.move(layers.index(layer), min(positions))


def _keep_selection(viewer, add):
    """Add a layer with ``add()`` without taking the viewer's active layer away."""
    active = viewer.layers.selection.active
    layer = add()
    if active is not None:
        viewer.layers.selection.active = active
    return layer


def show_preview(viewer, name: str, image_layer, data: np.ndarray, prompt_layers) -> None:
    """Show ``data`` ``(H, W)`` uint8 (0 transparent) in the preview layer ``name``.

    The layer is created (under ``prompt_layers``) the first time, or when the plane's
    shape changes; otherwise only the changed pixels are written.
    """
    preview = find(viewer, name)
    scale, translate = tuple(image_layer.scale[-2:]), tuple(image_layer.translate[-2:])
    if preview is not None and preview.data.shape == data.shape:
        if tuple(preview.scale) != scale or tuple(preview.translate) != translate:
            preview.scale, preview.translate = scale, translate
        update_in_place(preview, data)
        return
    if preview is not None:
        viewer.layers.remove(preview)
    colormap = DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"})
    preview = _keep_selection(viewer, lambda: viewer.add_labels(
        data, name=name, scale=scale, translate=translate, opacity=0.5, colormap=colormap))
    below(viewer, preview, prompt_layers)


def clear_preview(viewer, name: str) -> None:
    preview = find(viewer, name)
    if preview is not None:
        update_in_place(preview, np.zeros_like(preview.data))


def find(viewer, name: str):
    return next((layer for layer in viewer.layers if layer.name == name), None)


def update_in_place(layer, data: np.ndarray) -> None:
    """Make a 2D Labels layer show ``data``: the differing pixels' bounding box is written
    into its array and refreshed; a change over most of the plane replaces the data."""
    current = layer.data
    changed = current != data
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    if (rows[-1] + 1 - rows[0]) * (cols[-1] + 1 - cols[0]) > current.size // 2:
        layer.data = data
        return
    r, c = np.nonzero(changed[window])
    # data_setitem uploads only the changed region; the preview's own undo history is
    # never offered to the user, and each entry holds just these pixels.
    layer.data_setitem((r + rows[0], c + cols[0]), data[window][r, c])


def new_labels_layer(viewer, image_layer, channel_axis: int | None, prompt_layers):
    """A new empty Labels layer covering ``image_layer`` (without its channel axis)."""
    shape = list(L.layer_array(image_layer).shape[: image_layer.ndim])
    scale, translate = list(image_layer.scale), list(image_layer.translate)
    if channel_axis is not None:
        for values in (shape, scale, translate):
            del values[channel_axis]
    labels = _keep_selection(viewer, lambda: viewer.add_labels(
        np.zeros(shape, dtype=np.int32), name=f"{image_layer.name} labels", scale=scale, translate=translate))
    below(viewer, labels, prompt_layers)
    return labels


def add_prompt_layers(viewer, image_layer, sign: str):
    """A Points layer (with the sign feature, next point ``sign``) and a Shapes layer for
    prompts, placed like ``image_layer``; returns ``(points, boxes)``."""
    plane = L.layer_array(image_layer).shape[image_layer.ndim - 2 : image_layer.ndim]
    placed = {"ndim": image_layer.ndim, "scale": image_layer.scale, "translate": image_layer.translate}
    points = viewer.add_points(
        np.zeros((0, image_layer.ndim)), name="SAM points", size=max(4.0, min(plane) / 40),
        features=L.empty_sign_features(), feature_defaults={L.SIGN_FEATURE: sign},
        face_color=L.SIGN_FEATURE, face_color_cycle=L.SIGN_COLORS, border_color="white", **placed)
    boxes = viewer.add_shapes(name="SAM boxes", edge_color="yellow", face_color="transparent",
                              edge_width=max(1.0, min(plane) / 200), **placed)
    boxes.mode, points.mode = "add_rectangle", "add"
    return points, boxes


def remove_prompts_on_plane(prompt_layers, image_layer, ref: L.PlaneRef, world_point) -> None:
    """Delete the points and shapes of ``prompt_layers`` that lie on the plane ``ref``."""
    for layer in prompt_layers:
        on_plane = L.prompts_on_plane(layer, image_layer, ref, world_point)
        if len(on_plane):
            layer.selected_data = set(int(i) for i in on_plane)
            layer.remove_selected()
