"""Commit / undo fuzz of the Annotate widget in a headless napari (issue 21).

Random operations on a small 3D stack, drawn from a seeded generator and done through the
widget and the layers as a user would: point and box prompts (one or several boxes), the
next candidate, a mask prompt from the labels layer (refinement), accept with preserve or
overwrite (new label, the selected label, split into objects), Ctrl+Z / Ctrl+Shift+Z on the
labels layer, slice changes, the "Propagate" and "Segment all" sections. After EVERY step
the labels layer must equal a model of the expected labels, computed here from the rules
a user is told:

- an accept writes the shown masks on the shown plane only: the chosen candidate (or each
  box's best) as a new label, the selected label, one label per piece (split), or as the
  refined label (whose other pixels on the plane become background); an earlier object
  of the same accept keeps its pixels (what the preview shows); with preserve no other
  label loses a pixel, with overwrite the masks replace what is under them;
- "Propagate" writes the objects it followed, each on its planes, by the same rules;
- "Segment all" writes the plane's objects as new labels above the layer's largest
  (with preserve on background only);
- one Ctrl+Z takes back exactly one accept / propagation / segmentation, Ctrl+Shift+Z
  puts it back exactly (napari keeps the last 100).

The model is the tiny random-weight SAM (its masks are arbitrary, which is what a fuzz
wants) with a random-weight instance decoder for "Segment all". CI runs
:data:`STEPS` operations; ``NAPARI_SAM_WIDGET_FUZZ_STEPS=1000`` runs a thousand (see
docs/usage.md, "Safety").
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Labels  # noqa: E402
from napari.utils.key_bindings import KeyBinding  # noqa: E402

from napari_sam.annotate import propagate as propagate_module  # noqa: E402
from napari_sam.automatic import AutomaticSegmenter, InstanceDecoder  # noqa: E402
from napari_sam.inference.objects import split_objects  # noqa: E402
from napari_sam._napari import layers as L  # noqa: E402
from napari_sam._napari.annotate_ui import SELECTED_ID  # noqa: E402
from napari_sam._napari.widget import AnnotateWidget  # noqa: E402
from tiny import TINY, build_tiny, ellipse  # noqa: E402

STEPS = int(os.environ.get("NAPARI_SAM_WIDGET_FUZZ_STEPS", "120"))
SEED = int(os.environ.get("NAPARI_SAM_WIDGET_FUZZ_SEED", "0"))
TIMEOUT = 30_000  # ms
SHAPE = (3, 64, 64)
HISTORY = 100  # napari's Labels keeps this many undo steps


def _stack() -> np.ndarray:
    """Three 64x64 uint8 planes with a few bright blobs that drift from plane to plane."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 40, SHAPE).astype(np.uint8)
    for z in range(SHAPE[0]):
        for centre, radii in (((16, 16 + 2 * z), (9, 7)), ((42, 40), (8, 11 - z)), ((20, 50 - z), (5, 5))):
            data[z][ellipse(SHAPE[1:], centre, radii)] = 200
    return data


# --------------------------------------------------------------------------- the model


def _paint(plane, masks, values, *, preserve, replace=None):
    """The accept rules on a whole plane, pixel by pixel (see the module docstring)."""
    after = plane.copy()
    if replace is not None:
        covered = np.logical_or.reduce(masks) if masks else np.zeros(plane.shape, bool)
        after[(after == replace) & ~covered] = 0
    claimed = np.zeros(plane.shape, bool)
    for mask, value in zip(masks, values):
        write = mask & ~claimed
        if preserve:
            write &= (after == 0) | (after == value) | ((after == replace) if replace is not None else False)
        after[write] = value
        claimed |= mask
    return after


class History:
    """The expected labels and napari's undo / redo queues (each step a whole array)."""

    def __init__(self, labels):
        self.labels = labels.copy()
        self.undo, self.redo = deque(maxlen=HISTORY), deque(maxlen=HISTORY)

    def edit(self, after):
        if np.array_equal(after, self.labels):
            return  # nothing written: napari records no step
        self.undo.append((self.labels, after))
        self.redo.clear()
        self.labels = after

    def take_back(self):
        if self.undo:
            before, after = self.undo.pop()
            self.redo.append((before, after))
            self.labels = before

    def put_back(self):
        if self.redo:
            before, after = self.redo.pop()
            self.undo.append((before, after))
            self.labels = after


# --------------------------------------------------------------------------- the driver


class Driver:
    """Does one random operation at a time through the widget; keeps the expected labels."""

    def __init__(self, viewer, widget, layer, qtbot, rng):
        self.viewer, self.widget, self.layer, self.qtbot, self.rng = viewer, widget, layer, qtbot, rng
        self.history = History(np.asarray(layer.data))
        self.log: list[str] = []
        self.counts: dict[str, int] = {}
        self.captured: list = []  # what the sections' workers computed (StackObjects / instances)
        keymap = Labels.class_keymap
        self.ctrl_z = keymap[KeyBinding.from_str("Control-Z")]
        self.ctrl_shift_z = keymap[KeyBinding.from_str("Control-Shift-Z")]

    # ---- helpers

    @property
    def z(self) -> int:
        return int(self.viewer.dims.current_step[0])

    def idle(self):
        widget = self.widget
        self.qtbot.waitUntil(lambda: not widget.busy and not widget.automatic_section.busy
                             and not widget.propagate_section.busy, timeout=TIMEOUT)

    def prompt(self, add):
        with self.qtbot.waitSignal(self.widget.predicted, timeout=TIMEOUT):
            add()
        self.idle()

    def _point(self):
        return self.rng.integers(2, SHAPE[1] - 2), self.rng.integers(2, SHAPE[2] - 2)

    def _rectangle(self):
        r0, c0 = self.rng.integers(0, SHAPE[1] - 8, size=2)
        r1, c1 = r0 + self.rng.integers(6, 40), c0 + self.rng.integers(6, 40)
        r1, c1 = min(r1, SHAPE[1] - 1), min(c1, SHAPE[2] - 1)
        return np.array([[self.z, r0, c0], [self.z, r0, c1], [self.z, r1, c1], [self.z, r1, c0]], float)

    # ---- operations

    def point(self):
        points = self.widget.points_layer
        sign = L.POSITIVE if self.rng.random() < 0.75 else L.NEGATIVE
        points.feature_defaults = {L.SIGN_FEATURE: sign}
        row, col = self._point()
        self.prompt(lambda: points.add(np.array([self.z, row, col], float)))
        return f"point {row},{col} {sign}"

    def box(self):
        count = 1 if self.rng.random() < 0.7 else 2
        rectangles = [self._rectangle() for _ in range(count)]
        self.prompt(lambda: self.widget.boxes_layer.add_rectangles(rectangles))
        return f"{count} box(es)"

    def next(self):
        self.widget.next_candidate()
        self.idle()
        return f"next -> {self.widget.choice}"

    def mask_prompt(self):
        widget = self.widget
        use = widget.mask_combo.layer() is None
        widget.mask_combo.set_layer(self.layer if use else None)
        self.idle()
        return f"mask prompt {'on' if use else 'off'}"

    def clear(self):
        self.widget.clear()
        self.idle()
        return "clear"

    def slice(self):
        z = int(self.rng.integers(0, SHAPE[0]))
        self.viewer.dims.set_current_step(0, z)
        self.idle()
        return f"slice {z}"

    def accept(self):
        widget, layer, rng = self.widget, self.layer, self.rng
        preserve = bool(rng.random() < 0.6)
        selected = bool(rng.random() < 0.25)
        split = bool(rng.random() < 0.15)
        widget.overwrite_check.setChecked(not preserve)
        widget.split_check.setChecked(split)
        widget.id_combo.setCurrentIndex(widget.id_combo.findText(SELECTED_ID) if selected else 0)
        existing = [int(v) for v in np.unique(self.history.labels) if v]
        pick_existing = existing and rng.random() < 0.7
        layer.selected_label = int(rng.choice(existing)) if pick_existing else int(rng.integers(1, 60))
        self.idle()  # the split check re-predicts
        session, z = widget.session, self.z
        shown = session is not None and session.result is not None and widget._result_is_current()
        expected = self.history.labels.copy()
        what = "nothing shown"
        if shown:
            masks = [np.array(m) for m in session.preview_masks()]
            label = session.result.request.mask_label
            refine = label if widget.mask_combo.layer() is layer and len(masks) == 1 else None
            next_id = int(self.history.labels.max()) + 1
            if refine is not None:
                values, what = [refine], f"refine {refine}"
            elif len(masks) == 1 and split:
                pieces = split_objects(masks[0])
                masks = [pieces == k for k in range(1, int(pieces.max(initial=0)) + 1)]
                values, what = list(range(next_id, next_id + len(masks))), f"split into {len(masks)}"
            elif len(masks) == 1 and selected and layer.selected_label != 0:
                values, what = [int(layer.selected_label)], f"selected {layer.selected_label}"
            else:
                values, what = list(range(next_id, next_id + len(masks))), f"{len(masks)} new"
            if masks:
                expected[z] = _paint(expected[z], masks, values, preserve=preserve, replace=refine)
        widget.accept()
        self.idle()
        self.history.edit(expected)
        return f"accept {what} {'preserve' if preserve else 'overwrite'}"

    def undo(self):
        self.ctrl_z(self.layer)
        self.history.take_back()
        return "ctrl+z"

    def redo(self):
        self.ctrl_shift_z(self.layer)
        self.history.put_back()
        return "ctrl+shift+z"

    def propagate(self):
        widget, rng = self.widget, self.rng
        section = widget.propagate_section
        which = "all" if rng.random() < 0.4 else "current"
        section.object_combo.setCurrentIndex(section.object_combo.findData(which))
        section.direction_combo.setCurrentIndex(int(rng.integers(0, section.direction_combo.count())))
        section.min_score_spin.setValue(float(rng.choice([0.0, 0.05, 0.12])))
        preserve = bool(rng.random() < 0.6)
        widget.overwrite_check.setChecked(not preserve)
        self.layer.selected_label = int(rng.integers(1, int(self.history.labels.max()) + 2))
        self.captured.clear()
        section.run()
        if not section.busy:  # nothing to propagate: told in the section, nothing written
            return f"propagate {which}: {section.status_label.text()[:40]}"
        with self.qtbot.waitSignal(section.finished, timeout=TIMEOUT):
            pass
        self.idle()
        expected = self.history.labels.copy()
        (objects,) = self.captured
        planes = sorted({plane for per_plane in objects.masks.values() for plane in per_plane})
        for plane in planes:
            masks, values = [], []
            for label, per_plane in objects.masks.items():
                if plane in per_plane:
                    masks.append(per_plane[plane].full())
                    values.append(int(label))
            expected[plane] = _paint(expected[plane], masks, values, preserve=preserve)
        self.history.edit(expected)
        return f"propagate {which} {section.direction_combo.currentData()} -> planes {planes} " + (
            "preserve" if preserve else "overwrite")

    def segment_all(self):
        widget, rng = self.widget, self.rng
        section = widget.automatic_section
        section.min_size_spin.setValue(int(rng.choice([0, 25, 120])))
        preserve = bool(rng.random() < 0.6)
        widget.overwrite_check.setChecked(not preserve)
        self.captured.clear()
        z = self.z
        with self.qtbot.waitSignal(section.finished, timeout=TIMEOUT):
            section.run()
        self.idle()
        (instances,) = self.captured
        expected = self.history.labels.copy()
        first = int(expected.max()) + 1
        write = (instances > 0) & ((expected[z] == 0) if preserve else True)
        expected[z][write] = instances[write].astype(np.int64) + first - 1
        self.history.edit(expected)
        return f"segment all: {int(instances.max())} objects {'preserve' if preserve else 'overwrite'}"

    OPERATIONS = {  # weight of each operation
        "point": 6, "box": 4, "next": 2, "mask_prompt": 1, "clear": 1, "slice": 2, "accept": 6,
        "undo": 4, "redo": 2, "propagate": 1, "segment_all": 1,
    }

    def step(self, index):
        names = list(self.OPERATIONS)
        if index < len(names):  # every kind once, in a random order, then drawn by weight
            if index == 0:
                self.first = [names[i] for i in self.rng.permutation(len(names))]
            name = self.first[index]
        else:
            weights = np.array([self.OPERATIONS[n] for n in names], float)
            name = names[int(self.rng.choice(len(names), p=weights / weights.sum()))]
        self.log.append(f"{index}: " + getattr(self, name)())
        self.counts[name] = self.counts.get(name, 0) + 1
        actual = np.asarray(self.layer.data)
        if not np.array_equal(actual, self.history.labels):
            wrong = np.argwhere(actual != self.history.labels)
            z, r, c = wrong[0]
            raise AssertionError(
                f"seed {SEED}, step {index} ({self.log[-1]}): {len(wrong)} pixels differ from the model, first at "
                f"{(z, r, c)}: layer {actual[z, r, c]}, expected {self.history.labels[z, r, c]}. Last steps:\n"
                + "\n".join(self.log[-12:]))


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny()


@pytest.fixture
def driver(make_napari_viewer, qtbot, tiny_model, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(_stack(), name="stack")
    layer = viewer.add_labels(np.zeros(SHAPE, np.int32), name="labels")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.set_layer(layer)
    widget.prefetch_check.setChecked(False)
    widget.use_model(tiny_model, name="tiny")
    torch.manual_seed(0)  # this decoder finds a handful of objects on these planes
    automatic = widget.automatic_section
    automatic.decoder = InstanceDecoder(embed_dim=TINY["prompt_embed_dim"], initial_features=8).eval()
    automatic.mode_combo.setCurrentIndex(automatic.mode_combo.findData("ais"))
    drive = Driver(viewer, widget, layer, qtbot, np.random.default_rng(SEED))

    # Record what the workers computed (the real computation runs) to build the expectation.
    run, segment = propagate_module.Propagator.run, AutomaticSegmenter.segment
    monkeypatch.setattr(propagate_module.Propagator, "run",
                        lambda self, *a, **k: drive.captured.append(run(self, *a, **k)) or drive.captured[-1])
    monkeypatch.setattr(AutomaticSegmenter, "segment",
                        lambda self, *a, **k: drive.captured.append(segment(self, *a, **k)) or drive.captured[-1])
    drive.idle()
    yield drive
    drive.idle()


def test_random_prompts_accepts_undos_propagations_match_the_model(driver):
    for index in range(STEPS):
        driver.step(index)
    # Everything napari still remembers is taken back exactly, down to where its memory ends.
    while driver.history.undo:
        driver.undo()
        np.testing.assert_array_equal(np.asarray(driver.layer.data), driver.history.labels)
    print(f"{STEPS} operations (seed {SEED}): {driver.counts}")
    if os.environ.get("NAPARI_SAM_WIDGET_FUZZ_LOG"):
        print("\n".join(driver.log))
    if STEPS >= len(Driver.OPERATIONS):
        assert set(driver.counts) == set(Driver.OPERATIONS), driver.counts


def test_overwrite_writes_what_the_preview_shows_where_boxes_overlap(driver):
    """Regression (found by the fuzz): with overwrite, the second of two overlapping boxes
    took the shared pixels, while the preview gave them to the first."""
    widget, layer = driver.widget, driver.layer
    z = driver.z
    layer.data_setitem((np.full(100, z), *np.divmod(np.arange(100) + 64 * 20, 64)), np.full(100, 9))
    before = np.array(layer.data)
    rectangles = [np.array([[z, r0, c0], [z, r0, c0 + 30], [z, r0 + 30, c0 + 30], [z, r0 + 30, c0]], float)
                  for r0, c0 in ((10, 10), (22, 24))]
    driver.prompt(lambda: widget.boxes_layer.add_rectangles(rectangles))
    first, second = widget.session.preview_masks()
    assert (first & second).any(), "the two masks must share pixels for this test to mean anything"
    preview = widget.session.preview(SHAPE[1:]).astype(np.int32)  # 1 / 2 where the user sees object 1 / 2
    widget.overwrite_check.setChecked(True)
    widget.accept()
    driver.idle()
    expected = before.copy()
    expected[z][preview > 0] = preview[preview > 0] + 9  # new labels 10, 11 over everything, as previewed
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
