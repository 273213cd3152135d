"""The Annotate widget in a headless napari, end to end through its public controls:
prompts from layers through to committed labels.

The rules of the loop (dispatch, refinement memory, mask prompts and their frame, what an
accept writes) are tested without Qt in tests/annotate; here, that the widget wires napari
to them. Run under Xvfb (see scripts/test.sh). Every test waits until the widget is idle,
so no worker outlives its test. Tests whose assertions depend on segmentation quality use
the bundled default model and are skipped while its weights are not installed; the others
use a tiny random-weight model, or replace the decoder's answer with a known mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_sam.model import build_sam  # noqa: E402
from napari_sam.inference.predictor import Candidates  # noqa: E402
from napari_sam.synthetic import sample_nuclei  # noqa: E402

from napari_sam._napari import layers as L  # noqa: E402
from napari_sam._napari.widget import KEYS, PREVIEW_NAME, AnnotateWidget  # noqa: E402
from tiny import TINY

from tiny import DEFAULT_WEIGHTS
TIMEOUT = 30_000  # ms


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam(TINY)


@pytest.fixture(scope="module")
def default_model():
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("the bundled default model (src/napari_sam/weights/default.pt) is not installed yet")
    from napari_sam.checkpoints import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def nuclei():
    return sample_nuclei((256, 256), seed=0)


@pytest.fixture
def start(make_napari_viewer, qtbot):
    """``start(image, model, **image_kwargs) -> (viewer, widget)``; waits for idle at teardown."""
    widgets = []

    def _start(image, model, **kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(image, **kwargs)
        widget = AnnotateWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widgets.append(widget)
        widget.use_model(model, name="test")
        wait_idle(qtbot, widget)
        return viewer, widget

    yield _start
    for widget in widgets:
        wait_idle(qtbot, widget)


def wait_idle(qtbot, widget, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def add_point(qtbot, widget, rc, sign=L.POSITIVE, z=None):
    """Add a point in the widget's points layer (data = image pixels) and wait for the preview."""
    points = widget.points_layer
    points.feature_defaults = {L.SIGN_FEATURE: sign}
    coords = list(rc) if z is None else [*z, *rc]
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        points.add(np.asarray(coords, dtype=float))
    wait_idle(qtbot, widget)


def accept(qtbot, widget) -> int:
    with qtbot.waitSignal(widget.committed, timeout=TIMEOUT) as blocker:
        widget.accept()
    wait_idle(qtbot, widget)
    return blocker.args[0]


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def isolated_objects(labels, count, margin=6):
    """Ids of the ``count`` largest objects whose dilated box touches no other object."""
    found = []
    for value in np.unique(labels)[1:]:
        rows, cols = np.nonzero(labels == value)
        r0, r1 = max(rows.min() - margin, 0), rows.max() + margin + 1
        c0, c1 = max(cols.min() - margin, 0), cols.max() + margin + 1
        window = labels[r0:r1, c0:c1]
        if rows.min() > margin and cols.min() > margin and set(np.unique(window)) <= {0, value}:
            found.append((rows.size, int(value)))
    return [value for _, value in sorted(found, reverse=True)[:count]]


def disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def raw(prompts):
    """The fields of the ``Prompts`` (tile frame) a TiledPredictor hands its Predictor."""
    mask = None if prompts.mask_input is None else prompts.mask_input.logits[0]
    return {"points": prompts.points, "point_labels": prompts.point_labels, "box": prompts.box,
            "mask_input": mask, "text": prompts.text}


def fake_decoder(widget, monkeypatch, radius=6):
    """Make the decoder answer a disk around the first point (or box centre); record calls."""
    calls = []
    predictor = widget.predictor

    def predict(*, prompts, multimask=None):
        fields = raw(prompts)
        points, box = fields["points"], fields["box"]
        calls.append({"points": points, "labels": fields["point_labels"], "box": box,
                      "mask_input": fields["mask_input"], "text": fields["text"]})
        shape = predictor.embedding.original_size
        centre = points[0] if points is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        mask = disk(shape, np.round(centre), radius)
        low = predictor.model.low_res_size
        return Candidates(masks=mask[None], scores=np.array([0.9]), logits=np.zeros((1, *low), np.float32))

    monkeypatch.setattr(predictor, "predict", predict)
    return calls


# --------------------------------------------------------------------------- quality: default model


def test_point_prompt_segments_a_nucleus_into_a_new_label(start, qtbot, default_model, nuclei):
    viewer, widget = start(nuclei.image, default_model)
    target = isolated_objects(nuclei.labels, 1)[0]
    truth = nuclei.labels == target
    centre = np.argwhere(truth).mean(axis=0)
    add_point(qtbot, widget, centre)
    assert widget.preview_layer.data.any()
    accept(qtbot, widget)
    labels = widget.labels_layer.data
    assert set(np.unique(labels)) == {0, 1}
    assert iou(labels == 1, truth) > 0.7
    assert len(widget.points_layer.data) == 0  # prompts are cleared after a commit


def test_boxes_segment_several_nuclei_in_one_batch(start, qtbot, default_model, nuclei, monkeypatch):
    viewer, widget = start(nuclei.image, default_model)
    targets = isolated_objects(nuclei.labels, 3)
    batches = []
    original = widget.predictor.predict_boxes
    monkeypatch.setattr(widget.predictor, "predict_boxes", lambda boxes: batches.append(len(boxes)) or original(boxes))
    rectangles = []
    for value in targets:
        rows, cols = np.nonzero(nuclei.labels == value)
        rectangles.append(np.array([[rows.min() - 2, cols.min() - 2], [rows.max() + 2, cols.max() + 2]], float))
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        widget.boxes_layer.add_rectangles(rectangles)
    wait_idle(qtbot, widget)
    assert len(widget.candidates) == 3
    accept(qtbot, widget)
    # One batched decoder call per tile: the default model tiles this plane (128-px input).
    assert sum(batches) == 3 and len(batches) <= 3
    labels = widget.labels_layer.data
    for new_id, value in zip((1, 2, 3), targets):
        # Loose boxes (2 px margin); the default model's box mIoU is ~0.8 with a 0.6-0.9 spread.
        assert iou(labels == new_id, nuclei.labels == value) > 0.65


def test_mask_prompt_and_a_point_refine_the_selected_label(start, qtbot, default_model, nuclei):
    viewer, widget = start(nuclei.image, default_model)
    target = isolated_objects(nuclei.labels, 1)[0]
    truth = nuclei.labels == target
    rows, cols = np.nonzero(truth)
    partial = truth & (np.arange(truth.shape[1])[None, :] <= np.median(cols))  # the left half only
    existing = np.zeros_like(nuclei.labels)
    existing[partial] = 7
    existing[:4, :4] = 3  # another object, far away, must survive
    labels = viewer.add_labels(existing.copy(), name="annotations")
    labels.selected_label = 7
    widget.labels_combo.set_layer(labels)
    widget.mask_combo.set_layer(labels)
    right = truth & ~partial
    add_point(qtbot, widget, np.argwhere(right).mean(axis=0))
    shown = widget.session.result.request
    assert shown.mask_prompt is not None and shown.mask_label == 7
    accept(qtbot, widget)
    refined = labels.data == 7
    assert iou(refined, truth) > max(0.7, iou(partial, truth) + 0.1)
    assert (labels.data[:4, :4] == 3).all()
    assert set(np.unique(labels.data)) <= {0, 3, 7}


# --------------------------------------------------------------------------- the loop, tiny model


def test_single_point_lists_candidates_and_next_cycles_them(start, qtbot, tiny_model, nuclei):
    viewer, widget = start(nuclei.image, tiny_model)
    add_point(qtbot, widget, (128, 128))
    (candidates,) = widget.candidates
    assert len(candidates) == 3 and widget.candidate_list.count() == 3
    assert np.all(np.diff(candidates.scores) <= 0)  # best first
    assert "IoU" in widget.candidate_list.item(0).text()
    np.testing.assert_array_equal(widget.preview_layer.data > 0, candidates.masks[0])
    layers = viewer.layers
    assert layers.index(layers[PREVIEW_NAME]) < layers.index(widget.points_layer)  # prompts stay on top
    assert layers.selection.active is widget.points_layer  # the preview did not steal the selection
    widget.next_candidate()
    assert widget.choice == 1
    np.testing.assert_array_equal(widget.preview_layer.data > 0, candidates.masks[1])
    widget.next_candidate()
    widget.next_candidate()
    assert widget.choice == 0


def test_added_point_refines_from_the_chosen_candidate(start, qtbot, tiny_model, nuclei):
    viewer, widget = start(nuclei.image, tiny_model)
    add_point(qtbot, widget, (100, 100))
    assert not widget.session.result.request.refined
    widget.next_button.click()
    chosen = widget.candidates[0].logits[1].copy()
    add_point(qtbot, widget, (140, 120), sign=L.NEGATIVE)
    request = widget.session.result.request
    assert request.refined
    np.testing.assert_array_equal(request.mask_prompt.logits[0], chosen)
    np.testing.assert_array_equal(request.prompt_set.labels, [1, 0])


def test_commit_is_undone_exactly_by_one_undo(start, qtbot, tiny_model, nuclei, monkeypatch):
    viewer, widget = start(nuclei.image, tiny_model)
    existing = viewer.add_labels(nuclei.labels.copy(), name="annotations")
    widget.labels_combo.set_layer(existing)
    before = existing.data.copy()
    fake_decoder(widget, monkeypatch, radius=12)
    add_point(qtbot, widget, (60, 70))
    assert accept(qtbot, widget) > 0
    assert not np.array_equal(existing.data, before)
    existing.undo()
    np.testing.assert_array_equal(existing.data, before)


def test_preserve_mode_never_overwrites_other_labels_and_overwrite_does(start, qtbot, tiny_model, monkeypatch):
    image = np.zeros((64, 64), np.uint8)
    viewer, widget = start(image, tiny_model)
    existing = np.zeros((64, 64), np.int32)
    existing[30:34, 30:40] = 5
    labels = viewer.add_labels(existing.copy(), name="annotations")
    widget.labels_combo.set_layer(labels)
    fake_decoder(widget, monkeypatch, radius=8)
    add_point(qtbot, widget, (32, 32))
    accept(qtbot, widget)
    disk_mask = disk((64, 64), (32, 32), 8)
    assert (labels.data[existing == 5] == 5).all()
    np.testing.assert_array_equal(labels.data == 6, disk_mask & (existing == 0))
    assert labels.data.max() == 6

    widget.overwrite_check.setChecked(True)
    add_point(qtbot, widget, (32, 32))
    accept(qtbot, widget)
    np.testing.assert_array_equal(labels.data == 7, disk_mask)


def test_selected_label_mode_writes_the_selected_id(start, qtbot, tiny_model, monkeypatch):
    viewer, widget = start(np.zeros((48, 48), np.uint8), tiny_model)
    labels = viewer.add_labels(np.zeros((48, 48), np.int32), name="annotations")
    labels.selected_label = 42
    widget.labels_combo.set_layer(labels)
    widget.id_combo.setCurrentText("selected label")
    fake_decoder(widget, monkeypatch, radius=5)
    add_point(qtbot, widget, (20, 20))
    accept(qtbot, widget)
    assert set(np.unique(labels.data)) == {0, 42}


def test_stack_commit_writes_only_the_current_slice_and_ignores_other_slices_points(
    start, qtbot, tiny_model, monkeypatch
):
    stack = np.random.default_rng(0).integers(0, 255, (4, 48, 48)).astype(np.uint8)
    viewer, widget = start(stack, tiny_model)
    calls = fake_decoder(widget, monkeypatch, radius=5)
    viewer.dims.set_current_step(0, 2)
    wait_idle(qtbot, widget)
    widget.points_layer.add(np.array([1.0, 10, 10]))  # another slice: ignored
    add_point(qtbot, widget, (30, 20), z=[2])
    np.testing.assert_allclose(calls[-1]["points"], [[30, 20]])
    accept(qtbot, widget)
    labels = widget.labels_layer.data
    assert labels.shape == stack.shape
    np.testing.assert_array_equal(labels[2] == 1, disk((48, 48), (30, 20), 5))
    assert not labels[[0, 1, 3]].any()
    assert len(widget.points_layer.data) == 1  # only this slice's prompts are cleared


def test_anisotropic_scale_and_translate_map_world_prompts_to_plane_pixels(start, qtbot, tiny_model, monkeypatch):
    stack = np.zeros((3, 40, 60), np.uint8)
    scale, translate = (4.0, 2.0, 0.5), (0.0, 10.0, -3.0)
    viewer, widget = start(stack, tiny_model, scale=scale, translate=translate)
    calls = fake_decoder(widget, monkeypatch, radius=3)
    world_points = viewer.add_points(ndim=3, name="world points")  # scale 1: data = world
    widget.points_combo.set_layer(world_points)
    viewer.dims.set_point(0, 4.0)  # world units: slice 1 of the image
    wait_idle(qtbot, widget)
    row, col = 25, 44
    world = (1 * 4.0, 10.0 + row * 2.0, -3.0 + col * 0.5)
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        world_points.add(np.array(world))
    wait_idle(qtbot, widget)
    np.testing.assert_allclose(calls[-1]["points"], [[row, col]])
    accept(qtbot, widget)
    labels = widget.labels_layer
    assert tuple(labels.scale) == scale and tuple(labels.translate) == translate
    np.testing.assert_array_equal(labels.data[1] == 1, disk((40, 60), (row, col), 3))
    assert not labels.data[[0, 2]].any()
    # A user's Points layer gets the sign feature when a negative point is asked for.
    widget.toggle_sign()
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        world_points.add(np.array(world))
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(calls[-1]["labels"], [0])


def test_rgb_image_is_segmented_as_colour(start, qtbot, tiny_model, monkeypatch):
    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    viewer, widget = start(rgb, tiny_model, rgb=True)
    assert widget.store.lookup(rgb) is not None  # the (H, W, 3) plane was embedded
    fake_decoder(widget, monkeypatch, radius=4)
    add_point(qtbot, widget, (20, 25))
    accept(qtbot, widget)
    assert widget.labels_layer.data.shape == (40, 50)


def test_channel_axis_stays_at_the_chosen_channel_and_labels_drop_it(start, qtbot, tiny_model, monkeypatch):
    czyx = np.random.default_rng(2).integers(0, 1000, (2, 3, 32, 32)).astype(np.uint16)
    viewer, widget = start(czyx, tiny_model)
    widget.channel_axis_combo.setCurrentIndex(1)  # axis 0
    widget.channel_spin.setValue(1)
    viewer.dims.set_current_step(1, 2)
    wait_idle(qtbot, widget)
    emb = widget.store.lookup(czyx[1, 2])
    assert emb is not None  # the embedded plane is channel 1, z 2
    fake_decoder(widget, monkeypatch, radius=4)
    add_point(qtbot, widget, (16, 16), z=[0, 2])  # a point at channel 0 still counts
    accept(qtbot, widget)
    labels = widget.labels_layer.data
    assert labels.shape == (3, 32, 32)
    assert labels[2].any() and not labels[[0, 1]].any()


def test_switching_slices_reuses_cached_embeddings(start, qtbot, tiny_model):
    stack = np.random.default_rng(3).integers(0, 255, (3, 40, 40)).astype(np.uint8)
    viewer, widget = start(stack, tiny_model)
    assert widget.store.encoder_calls == 1
    for z in (1, 0, 1, 0):
        viewer.dims.set_current_step(0, z)
        wait_idle(qtbot, widget)
        assert widget.plane_ready
    assert widget.store.encoder_calls == 2


def test_neighbouring_slices_are_precomputed_when_asked(start, qtbot, tiny_model):
    stack = np.random.default_rng(4).integers(0, 255, (7, 32, 32)).astype(np.uint8)
    viewer, widget = start(stack, tiny_model)
    assert widget.store.lookup(stack[3]) is not None  # napari opens a stack at its middle
    widget.prefetch_check.setChecked(True)
    wait_idle(qtbot, widget)
    assert widget.store.encoder_calls == 5  # 3, then 4, 2, 5, 1
    assert all(widget.store.lookup(stack[z]) is not None for z in (1, 2, 3, 4, 5))
    viewer.dims.set_current_step(0, 5)
    wait_idle(qtbot, widget)
    assert widget.store.encoder_calls == 6  # 5 was ready; 6 precomputed (4 and 3 are cached)
    assert widget.plane_ready


def test_large_plane_embeds_only_the_tile_under_the_prompt(start, qtbot, tiny_model, monkeypatch):
    image = np.random.default_rng(5).integers(0, 255, (300, 340)).astype(np.uint8)  # tiny model: 128 px tiles
    viewer, widget = start(image, tiny_model)
    assert widget.store.encoder_calls == 0  # nothing is embedded before a prompt
    fake_decoder(widget, monkeypatch, radius=5)
    add_point(qtbot, widget, (250, 40))
    assert widget.store.encoder_calls == 1
    accept(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data == 1, disk(image.shape, (250, 40), 5))


def test_untiled_large_plane_is_embedded_whole_at_once(start, qtbot, tiny_model):
    image = np.random.default_rng(6).integers(0, 255, (300, 340)).astype(np.uint8)
    viewer, widget = start(image, tiny_model)
    widget.tile_check.setChecked(False)
    wait_idle(qtbot, widget)
    assert widget.store.encoder_calls == 1 and widget.plane_ready


def test_cancel_stops_an_embedding_and_a_prompt_restarts_it(start, qtbot, tiny_model, monkeypatch):
    import time

    stack = np.random.default_rng(7).integers(0, 255, (3, 40, 40)).astype(np.uint8)
    viewer, widget = start(stack, tiny_model)
    block = tiny_model.image_encoder.blocks[0]
    slow = block.forward
    monkeypatch.setattr(block, "forward", lambda x: (time.sleep(0.25), slow(x))[1])
    viewer.dims.set_current_step(0, 0)
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Embedding plane 0"), timeout=TIMEOUT)
    assert widget.cancel_button.isVisible() or not widget.isVisible()
    widget.cancel()
    wait_idle(qtbot, widget)
    assert not widget.plane_ready and widget.store.encoder_calls == 1
    assert "cancelled" in widget.status_label.text()
    add_point(qtbot, widget, (20, 20), z=[0])
    assert widget.plane_ready and widget.store.encoder_calls == 2 and widget.candidates


def test_worker_error_becomes_a_notification(start, qtbot, tiny_model, monkeypatch):
    viewer, widget = start(np.zeros((32, 32), np.uint8), tiny_model)

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(widget.predictor, "predict", broken)
    before = len(notification_manager.records)
    widget.points_layer.add(np.array([10.0, 10.0]))
    qtbot.waitUntil(lambda: len(notification_manager.records) > before, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert "decoder exploded" in str(notification_manager.records[-1].message)
    assert not widget.candidates


def test_keys_and_sign_toggle(start, qtbot, tiny_model):
    viewer, widget = start(np.zeros((32, 32), np.uint8), tiny_model)
    bound = {str(key) for key in viewer.keymap}
    assert {KEYS[name] for name in KEYS} <= bound
    for button in (widget.accept_button, widget.next_button, widget.clear_button):
        assert "[" in button.toolTip()
    points = widget.points_layer
    widget.toggle_sign()
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        points.add(np.array([5.0, 5.0]))
    wait_idle(qtbot, widget)
    assert list(points.features[L.SIGN_FEATURE]) == [L.NEGATIVE]
    np.testing.assert_allclose(points.face_color[0], [1, 0, 0, 1])
    widget.toggle_sign()
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        points.add(np.array([9.0, 9.0]))
    wait_idle(qtbot, widget)
    assert list(points.features[L.SIGN_FEATURE]) == [L.NEGATIVE, L.POSITIVE]  # existing points keep theirs
    np.testing.assert_allclose(points.face_color[1], [0, 1, 0, 1])
    widget.clear()
    wait_idle(qtbot, widget)
    assert len(points.data) == 0 and not widget.candidates


def test_model_is_loaded_by_name_in_a_worker(make_napari_viewer, qtbot, tmp_path, tiny_model, monkeypatch):
    from napari_sam.checkpoints import save_model

    path = tmp_path / "tiny.pt"
    save_model(tiny_model, path)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8))
    widget = AnnotateWidget(viewer)
    widget.model_combo.setCurrentText("checkpoint file…")
    widget.model_path.setText(str(path))
    widget.device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(widget.model_loaded, timeout=TIMEOUT):
        widget.load_model()
    wait_idle(qtbot, widget)
    assert widget.model.image_size == 128 and widget.store.encoder_calls == 1

    widget.model_path.setText(str(tmp_path / "missing.pt"))
    before = len(notification_manager.records)
    widget.load_model()
    wait_idle(qtbot, widget)
    assert len(notification_manager.records) > before


def test_sample_data_is_contributed(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samscope", "nuclei")
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei ground truth"]
    assert viewer.layers["nuclei"].data.shape == (256, 256)
    assert viewer.layers["nuclei ground truth"].data.max() > 5


# --------------------------------------------------------------------------- text prompts


@pytest.fixture(scope="module")
def text_model():
    from napari_sam.inference.text import TEXT_DIM

    torch.manual_seed(0)
    return build_sam({**TINY, "text_dim": TEXT_DIM})


def enter_text(qtbot, widget, text):
    """Type ``text`` into the text prompt field and press Enter; wait for the preview."""
    from qtpy.QtCore import Qt

    widget.text_edit.clear()
    qtbot.keyClicks(widget.text_edit, text)
    with qtbot.waitSignal(widget.predicted, timeout=TIMEOUT):
        qtbot.keyClick(widget.text_edit, Qt.Key.Key_Return)
    wait_idle(qtbot, widget)


def test_text_field_is_disabled_for_a_model_without_text_path(start, qtbot, tiny_model, monkeypatch):
    viewer, widget = start(np.zeros((32, 32), np.uint8), tiny_model)
    assert widget.text_edit.placeholderText() == "e.g. nucleus"
    assert not widget.text_edit.isEnabled()
    assert "no text path" in widget.text_edit.toolTip()
    calls = fake_decoder(widget, monkeypatch, radius=4)
    widget.text_edit.setText("nucleus")  # e.g. typed while another model was loaded: ignored
    add_point(qtbot, widget, (10, 10))
    assert calls[-1]["text"] is None


def test_typed_text_alone_previews_every_tile_merged_and_commits_one_label(
    start, qtbot, text_model, nuclei, monkeypatch
):
    viewer, widget = start(nuclei.image, text_model)  # 256 px: tiles of the tiny model's 128 px
    assert widget.text_edit.isEnabled()
    texts = []
    original = widget.predictor.predict

    def spy(*, prompts, multimask=None):
        result = original(prompts=prompts, multimask=multimask)  # the real text path runs
        texts.append(prompts.text)
        # A known answer, whatever the random model says: the tile's whole window.
        return Candidates(masks=np.ones_like(result.masks), scores=result.scores, logits=result.logits)

    monkeypatch.setattr(widget.predictor, "predict", spy)
    enter_text(qtbot, widget, "nucleus")
    grid = widget.session.tiled.grid
    assert len(grid) > 1 and texts == ["nucleus"] * len(grid)
    assert widget.store.encoder_calls == len(grid)  # text alone embeds the whole plane
    (candidates,) = widget.candidates
    assert candidates.masks.shape == (1, 256, 256)
    assert (widget.preview_layer.data > 0).all()  # every tile's core reached the preview
    assert accept(qtbot, widget) == 256 * 256
    assert set(np.unique(widget.labels_layer.data)) == {1}  # one label for all of them
    assert widget.text_edit.text() == "nucleus"  # the kind stays for the next objects


def test_text_with_a_point_asks_for_the_object_under_it(start, qtbot, text_model, monkeypatch):
    image = np.random.default_rng(8).integers(0, 255, (64, 64)).astype(np.uint8)
    viewer, widget = start(image, text_model)
    calls = []
    original = widget.predictor.predict

    def spy(*, prompts, multimask=None):
        calls.append(raw(prompts))
        return original(prompts=prompts, multimask=multimask)

    monkeypatch.setattr(widget.predictor, "predict", spy)
    enter_text(qtbot, widget, "nucleus")
    assert calls[-1]["points"] is None and calls[-1]["text"] == "nucleus"
    np.testing.assert_array_equal(widget.preview_layer.data > 0, widget.candidates[0].masks[0])
    add_point(qtbot, widget, (30, 30))
    np.testing.assert_allclose(calls[-1]["points"], [[30, 30]])
    assert calls[-1]["text"] == "nucleus"
    assert calls[-1]["mask_input"] is None  # not refined from the mask of every nucleus
    assert len(widget.candidates[0]) == 1
    np.testing.assert_array_equal(widget.preview_layer.data > 0, widget.candidates[0].masks[0])


def test_unknown_and_empty_text_become_notifications(start, qtbot, text_model, monkeypatch):
    viewer, widget = start(np.zeros((32, 32), np.uint8), text_model)
    monkeypatch.setitem(text_model.metadata, "text_classes", {"nucleus": ["nucleus", "nuclei"]})
    before = len(notification_manager.records)
    enter_text(qtbot, widget, "giraffe")
    messages = [str(record.message) for record in notification_manager.records[before:]]
    assert any("unlike anything" in message for message in messages), messages
    assert widget.candidates and "unlike anything" in widget.status_label.text()
    before = len(notification_manager.records)
    enter_text(qtbot, widget, "   ")
    messages = [str(record.message) for record in notification_manager.records[before:]]
    assert any("empty text prompt" in message for message in messages), messages
    assert not widget.candidates


def test_text_nucleus_previews_the_nuclei_of_a_fluorescence_image(start, qtbot, default_model):
    from napari_sam.synthetic import generate

    sample = generate((256, 256), modality="fluorescence", kinds=("nucleus", "elongated cell"), seed=11)
    nuclei = np.isin(sample.labels, [label for label, kind in sample.classes.items() if kind == "nucleus"])
    viewer, widget = start(sample.image, default_model)
    enter_text(qtbot, widget, "nucleus")
    assert iou(widget.preview_layer.data > 0, nuclei) >= 0.7  # measured 0.75


@pytest.mark.parametrize("checked_before_the_text", [True, False])
def test_text_alone_accepted_as_one_label_per_object_in_one_undo(
    start, qtbot, default_model, nuclei, checked_before_the_text
):
    viewer, widget = start(nuclei.image, default_model)
    widget.split_check.setChecked(checked_before_the_text)
    enter_text(qtbot, widget, "nucleus")
    # Checked in time, the prediction worker splits the mask (off the GUI thread).
    assert (widget.session.result.pieces is not None) == checked_before_the_text
    mask = widget.preview_layer.data > 0
    assert iou(mask, nuclei.labels > 0) > 0.85  # a nuclei-only image: measured 0.94
    widget.split_check.setChecked(True)
    changed = accept(qtbot, widget)
    labels = widget.labels_layer.data
    values = np.unique(labels)[1:]
    assert changed == np.count_nonzero(labels) and np.all((labels > 0) <= mask)
    assert 15 <= len(values) <= 30  # 22 nuclei; measured 21 objects, each matching a nucleus
    for value in values:
        assert ndimage.label(labels == value)[1] == 1
    assert "Wrote labels 1-" in widget.status_label.text()
    widget.labels_layer.undo()
    assert not widget.labels_layer.data.any()  # one Ctrl+Z takes every object back
