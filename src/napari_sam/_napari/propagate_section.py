"""The Annotate widget's "Propagate" section: objects of the shown plane through z / t.

The work is :class:`~napari_sam.annotate.propagate.Propagator`'s; this module picks the
seeds on the shown plane (the shown candidate(s), else the labels layer's selected label,
or every label of the plane), runs it in a worker and writes the result as one undoable
``Labels.data_setitem`` (:meth:`~napari_sam.annotate.stack_objects.StackObjects.edit`).

The "stack" choice, volume (z) or time-lapse (t), picks the measured defaults of
:meth:`~napari_sam.annotate.propagate.PropagationSettings.for_axis`; it follows the chosen
axis's label (:func:`axis_kind`) whenever the image or the axis changes, and the user can
change it.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox

from . import layers as L
from .automatic_section import JobSection
from ..annotate.propagate import PlaneSource, PropagationSettings, Propagator, Seed

CURRENT, ALL = "current", "all"
DIRECTIONS = (("both", "both"), ("up (+)", "forward"), ("down (-)", "backward"))
KINDS = (("volume (z)", "z"), ("time-lapse (t)", "t"))
TIME_NAMES = ("t", "time", "times", "frame", "frames", "timepoint", "timepoints", "time point")
DEPTH_NAMES = ("z", "depth", "plane", "planes", "slice", "slices")


def label_kind(label) -> str | None:
    """``"t"`` for a label naming time (t, time, frame, ...), ``"z"`` for depth (z, slice, ...), else None."""
    text = str(label).strip().lower()
    return "t" if text in TIME_NAMES else "z" if text in DEPTH_NAMES else None


def axis_names(image, axis: int, dims_labels=None) -> list[str]:
    """The names given to the image's data axis ``axis``, most specific first: the layer's
    ``axis_labels``, the viewer's label of the same world axis (``dims_labels``,
    ``viewer.dims.axis_labels``: what the slider shows), the TIFF axis letter this plugin's
    reader keeps in ``metadata["axes"]`` (e.g. ``"TZYX"``)."""
    names = []
    layer_labels = tuple(getattr(image, "axis_labels", ()) or ())
    if len(layer_labels) == image.ndim:
        names.append(str(layer_labels[axis]))
    if dims_labels is not None and len(dims_labels) >= image.ndim:
        names.append(str(dims_labels[axis + len(dims_labels) - image.ndim]))  # layers fill the last world axes
    letters = str((getattr(image, "metadata", None) or {}).get("axes") or "")
    if len(letters) == image.ndim + (1 if image.rgb else 0):  # the reader's letters: one per data axis
        names.append(letters[axis])
    return names


def axis_kind(image, axis: int, dims_labels=None) -> str:
    """``"t"`` when the first of :func:`axis_names` that names z or t names time, else ``"z"``
    (default labels such as ``"-3"`` or ``"0"`` name neither)."""
    for name in axis_names(image, axis, dims_labels):
        kind = label_kind(name)
        if kind is not None:
            return kind
    return "z"


def propagation_axes(image, channel_axis: int | None) -> list[int]:
    """The data axes of ``image`` an object can be followed along: every stack axis but the channel axis."""
    return [axis for axis in range(image.ndim - 2) if axis != channel_axis]


def plane_seeds(session, ref: L.PlaneRef, labels_plane: np.ndarray | None, selected: int, which: str,
                next_id: int, plane: int) -> list[Seed]:
    """Seeds on the shown plane (index ``plane`` along the propagation axis).

    ``which == ALL``: one per label of ``labels_plane``. ``CURRENT``: the shown
    candidate(s) as new labels ``next_id, ...``, else the ``selected`` label's pixels.
    Raises ``ValueError`` when there is nothing to propagate.
    """
    if which == ALL:
        values = [] if labels_plane is None else [int(v) for v in np.unique(labels_plane) if v != 0]
        if not values:
            raise ValueError("No labels on this plane to propagate.")
        return [Seed(value, plane, mask=labels_plane == value) for value in values]
    result = None if session is None else session.result
    if result is not None and result.request.key == ref.key:
        masks = [mask for mask in session.preview_masks() if mask.any()]
        if masks:
            return [Seed(next_id + k, plane, mask=mask) for k, mask in enumerate(masks)]
    if labels_plane is not None and selected != 0 and (labels_plane == selected).any():
        return [Seed(int(selected), plane, mask=labels_plane == selected)]
    raise ValueError("Nothing to propagate: show a candidate, or select a label present on this plane.")


class PropagateSection(JobSection):
    """"Propagate": follow the current object, or every label of the plane, up / down the
    chosen axis until the stop rules end it; written as labels in one step.

    ``predictor``: a predictor to use instead of the widget's (scripts, tests; it then
    embeds with its own ``compute_embedding``, in a store of its own).
    """

    def __init__(self, widget) -> None:
        self.object_combo = QComboBox()
        self.object_combo.addItem("current object", CURRENT)
        self.object_combo.addItem("all labels of this plane", ALL)
        self.object_combo.setToolTip("current object: the shown candidate, else the labels layer's selected label")
        self.axis_spin = QSpinBox()
        self.axis_spin.setToolTip("The image axis (data order) to propagate along, e.g. 0 for z in (z, y, x)")
        self.kind_combo = QComboBox()
        for text, kind in KINDS:
            self.kind_combo.addItem(text, kind)
        self.kind_combo.setToolTip(
            "volume (z): points inside the previous mask and the mask prompt the next plane; stops where the "
            "object no longer stands out (contrast).\ntime-lapse (t): the previous mask's box prompts the next "
            "frame; no contrast rule.\nSet from the axis label (t / time / frame) when the image or axis changes. "
            "A SAM 2 model follows objects with its memory: the prompt and contrast rules do not apply.")
        self._kind_for = None  # (image layer id, axis, its names) the stack choice was last set from
        self.direction_combo = QComboBox()
        for text, direction in DIRECTIONS:
            self.direction_combo.addItem(text, direction)
        self.min_score_spin = QDoubleSpinBox()
        self.min_score_spin.setRange(0.0, 1.0)
        self.min_score_spin.setSingleStep(0.05)
        self.min_score_spin.setValue(PropagationSettings.min_score)
        self.min_score_spin.setToolTip("Stop where the model's predicted IoU falls below this")
        super().__init__(widget, "Propagate", "Propagate", [
            ("object", self.object_combo), ("axis", self.axis_spin), ("stack", self.kind_combo),
            ("direction", self.direction_combo), ("min score", self.min_score_spin)])
        self.run_button.setToolTip("Segment the object(s) on the neighbouring planes (Ctrl+Z undoes it)")
        self.predictor = None
        widget.image_combo.layer_changed.connect(self._update_axes)
        widget.channel_axis_combo.currentIndexChanged.connect(self._update_axes)
        self.axis_spin.valueChanged.connect(self._update_kind)
        widget.viewer.dims.events.axis_labels.connect(self._update_kind)
        self._update_axes()

    def _update_axes(self, *_) -> None:
        """Offer the image's stack axes; keep the chosen one while it is still one."""
        image = self.widget.image_layer
        axes = [] if image is None else propagation_axes(image, self.widget.channel_axis)
        self.axis_spin.setRange(0, max(axes, default=0))
        if axes and self.axis_spin.value() not in axes:
            self.axis_spin.setValue(axes[0])
        self.run_button.setEnabled(bool(axes) and self.worker is None)
        self._update_kind()

    def _update_kind(self, *_) -> None:
        """Set the stack choice from the axis's names when the image, the axis or a name
        changed; a choice the user made stays otherwise (e.g. when a labels layer is added)."""
        image = self.widget.image_layer
        if image is None:
            return
        axis, dims_labels = int(self.axis_spin.value()), tuple(self.widget.viewer.dims.axis_labels)
        key = (id(image), axis, tuple(axis_names(image, axis, dims_labels)))
        if key != self._kind_for:
            self._kind_for = key
            self.kind_combo.setCurrentIndex(self.kind_combo.findData(axis_kind(image, axis, dims_labels)))

    def prepare(self):
        widget = self.widget
        image, session = widget.image_layer, widget.session
        predictor = self.predictor or widget.predictor
        if image is None or predictor is None:
            raise ValueError("Open an image and load a model first.")
        world = tuple(widget.viewer.dims.point)
        ref = L.plane_ref(image, world, widget.channel_axis, widget.channel_spin.value())
        axes = propagation_axes(image, widget.channel_axis)
        axis = int(self.axis_spin.value())
        if axis not in axes:
            raise ValueError(f"Axis {axis} cannot be propagated along; choose one of {axes}." if axes
                             else "The image has no stack axis to propagate along.")
        position = [ref.index[i] for i in range(image.ndim - 2) if i != axis]
        source = PlaneSource(L.layer_array(image), axis, position, rgb=image.rgb)
        labels = widget.labels_layer
        labels_plane = selected = index = None
        if labels is not None:
            index = L.labels_plane_index(labels, image, ref, world)
            labels_plane, selected = L.read_labels_plane(labels, index), int(labels.selected_label)
        seeds = plane_seeds(session, ref, labels_plane, selected or 0, self.object_combo.currentData(),
                            1 if labels is None else L.next_label_id(labels), ref.index[axis])
        # The stack choice picks the measured defaults (time-lapse: box prompts, no contrast rule).
        settings = PropagationSettings.for_axis(self.kind_combo.currentData(),
                                                direction=self.direction_combo.currentData(),
                                                min_score=float(self.min_score_spin.value()))
        if self.predictor is not None:
            propagator = Propagator(self.predictor, settings=settings)
        else:
            propagator = Propagator(predictor, widget.store, tile_size=session.tile_size, settings=settings)

        def compute(progress, cancel):
            return propagator.run(source, seeds, progress=progress, cancel=cancel)

        def write(objects):
            target = self.target_labels(image)
            plane_index = L.labels_plane_index(target, image, ref, world)
            labels_axis = axis + target.ndim - image.ndim  # the same world axis in the labels' data
            data = L.layer_array(target)
            if not 0 <= labels_axis < target.ndim - 2 or data.shape[labels_axis] != len(source):
                raise ValueError(f"labels layer {target.name!r} does not span the image's axis {axis}")
            others = tuple(i for k, i in enumerate(plane_index) if k != labels_axis)
            edit = objects.edit(data, labels_axis, others, preserve=not widget.overwrite_check.isChecked())
            if len(edit):
                with target.block_history():
                    target.data_setitem(edit.indices, edit.new)
            return len(edit)

        return compute, write
