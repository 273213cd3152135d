"""Which 2D plane the Annotate widget segments: the chosen image at the viewer's position."""

from __future__ import annotations

import numpy as np

from . import layers as L
from ..annotate import PromptSet
from ..annotate.prompt_set import ONE


class PlaneTracker:
    """Follows the image chosen in ``controls`` through the viewer's dims, the channel
    controls and changes of the image's data.

    Parameters
    ----------
    viewer : napari.Viewer
    controls : AnnotateControls
        Its ``image_combo``, ``channel_axis_combo``, ``channel_spin`` (filled here).
    changed : callable(new: bool)
        After every update; ``new`` when the plane (position or shape) is another one.
    pixels_changed : callable()
        The image's data changed: the same position holds new pixels.
    error : callable(message)
        The view cannot be segmented (e.g. a 3D view).

    Attributes
    ----------
    ref : PlaneRef or None
    prefetch_axis : int or None
        The stack axis the user last moved along (neighbours are precomputed on it).
    """

    def __init__(self, viewer, controls, *, changed, pixels_changed, error) -> None:
        self.viewer, self.controls = viewer, controls
        self.ref: L.PlaneRef | None = None
        self.prefetch_axis: int | None = None
        self._last_step = tuple(viewer.dims.current_step)
        self._image = None
        self._changed, self._pixels_changed, self._error = changed, pixels_changed, error
        controls.image_combo.layer_changed.connect(self.image_changed)
        controls.channel_axis_combo.currentIndexChanged.connect(self._channel_axis_changed)
        controls.channel_spin.valueChanged.connect(self.update)
        viewer.dims.events.current_step.connect(self._dims_changed)
        viewer.dims.events.ndisplay.connect(self.update)
        viewer.dims.events.order.connect(self.update)

    @property
    def channel_axis(self) -> int | None:
        return self.controls.channel_axis_combo.currentData()

    def image_changed(self) -> None:
        """Watch the chosen image's data and offer its stack axes as channel axes."""
        image = self.controls.image_combo.layer()
        if self._image is not None:
            self._image.events.data.disconnect(self._on_data)
        self._image = image
        if image is not None:
            image.events.data.connect(self._on_data)
        combo = self.controls.channel_axis_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("none")
        if image is not None and not image.rgb:
            shape = L.layer_array(image).shape
            for axis in range(image.ndim - 2):
                combo.addItem(f"axis {axis} (size {shape[axis]})", axis)
        combo.blockSignals(False)
        self.controls.channel_row.setVisible(combo.count() > 1)
        self.controls.channel_label.setVisible(combo.count() > 1)
        self._channel_axis_changed()

    def _on_data(self, event=None) -> None:
        self.ref = None  # same position, new pixels
        self._pixels_changed()
        self.update()

    def _channel_axis_changed(self, *_) -> None:
        axis, image, spin = self.channel_axis, self.controls.image_combo.layer(), self.controls.channel_spin
        spin.setEnabled(axis is not None)
        if axis is not None and image is not None:
            spin.setRange(0, L.layer_array(image).shape[axis] - 1)
        self.update()

    def _dims_changed(self, event=None) -> None:
        step = tuple(self.viewer.dims.current_step)
        moved = [i for i, (a, b) in enumerate(zip(step, self._last_step)) if a != b]
        self._last_step = step
        image = self.controls.image_combo.layer()
        if moved and image is not None:
            axis = moved[-1] - (self.viewer.dims.ndim - image.ndim)
            if 0 <= axis < image.ndim - 2:
                self.prefetch_axis = axis
        self.update()

    def current(self) -> L.PlaneRef | None:
        """The plane shown now. Raises ``ValueError`` when the view is not a 2D plane of the image."""
        image, dims = self.controls.image_combo.layer(), self.viewer.dims
        if image is None:
            return None
        if dims.ndisplay != 2 or set(dims.displayed) != {dims.ndim - 2, dims.ndim - 1}:
            raise ValueError("SAM segments 2D planes: show the image's last two axes in 2D view")
        return L.plane_ref(image, dims.point, self.channel_axis, self.controls.channel_spin.value())

    def update(self, *_) -> None:
        try:
            ref = self.current()
        except ValueError as error:
            ref = None
            self._error(str(error))
        new = ref is None or self.ref is None or ref.key != self.ref.key or ref.shape != self.ref.shape
        if new:
            self.ref = ref
        self._changed(new)

    def point_session(self, session, whole: bool = False) -> None:
        """Make the current plane ``session``'s (read lazily, tile by tile; ``whole``: one
        tile however large). Raises ``ValueError`` for a plane that cannot be segmented."""
        image, ref = self.controls.image_combo.layer(), self.ref
        if session is None:
            return
        session.clear_plane()
        if ref is None or image is None:
            return
        session.tile_size = max(max(ref.shape), 2) if whole else None
        session.set_plane(ref.key, L.LazyPlane(L.layer_array(image), ref))

    # ---- the prompts on the plane ----------------------------------------------------

    def watch_prompts(self, layers, on_change) -> None:
        """Call ``on_change(event)`` when the data of ``layers`` (points, shapes) change."""
        for layer in getattr(self, "_prompt_layers", []):
            try:
                layer.events.data.disconnect(on_change)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._prompt_layers = [layer for layer in layers if layer is not None]
        for layer in self._prompt_layers:
            layer.events.data.connect(on_change)

    def prompt_set(self, points_layer, boxes_layer, text: str | None) -> PromptSet | None:
        """The points and boxes on the current plane, with ``text`` (None without a plane)."""
        image, ref = self.controls.image_combo.layer(), self.ref
        if image is None or ref is None:
            return None
        world = self.viewer.dims.point
        points, labels = L.points_prompt(points_layer, image, ref, world)
        return PromptSet.make(points, labels, L.boxes_prompt(boxes_layer, image, ref, world), text)

    def existing_label(self, mask_layer, prompt_set: PromptSet):
        """``(label, (H, W) mask)``: the selected label of ``mask_layer`` on this plane, as the
        mask prompt of one object's points; None when it does not apply."""
        if mask_layer is None or mask_layer.selected_label == 0 or prompt_set.dispatch != ONE or (
                not len(prompt_set.points)):
            return None
        index = L.labels_plane_index(mask_layer, self.controls.image_combo.layer(), self.ref, self.viewer.dims.point)
        return int(mask_layer.selected_label), np.asarray(L.layer_array(mask_layer)[index]) == mask_layer.selected_label
