"""Accepting masks into a labels plane: which ids, which pixels, and an exact undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotate import AnnotationSession, PromptSet, paint, plan_commit


def disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def commit(labels, plan):
    edit = paint(labels, plan)
    before = labels.copy()
    edit.apply(labels)
    return edit, before


def test_a_mask_becomes_a_new_label_that_never_overwrites_other_labels():
    labels = np.zeros((64, 64), np.int32)
    labels[30:34, 30:40] = 5
    mask = disk(labels.shape, (32, 32), 8)
    plan = plan_commit([mask], next_id=6)
    assert plan.values == (6,) and plan.preserve and plan.description == "label 6"
    edit, before = commit(labels, plan)
    assert (labels[before == 5] == 5).all()
    np.testing.assert_array_equal(labels == 6, mask & (before == 0))
    assert len(edit) == int((mask & (before == 0)).sum())


def test_overwrite_mode_writes_the_whole_mask_over_other_labels():
    labels = np.zeros((64, 64), np.int32)
    labels[30:34, 30:40] = 5
    mask = disk(labels.shape, (32, 32), 8)
    commit(labels, plan_commit([mask], next_id=6, preserve=False))
    np.testing.assert_array_equal(labels == 6, mask)


def test_selected_label_mode_writes_the_selected_id_unless_it_is_background():
    mask = disk((48, 48), (20, 20), 5)
    assert plan_commit([mask], next_id=1, selected_id=42, use_selected=True).values == (42,)
    assert plan_commit([mask], next_id=3, selected_id=0, use_selected=True).values == (3,)
    assert plan_commit([mask], next_id=3, selected_id=42).values == (3,)  # new-label mode


def test_several_boxes_write_consecutive_new_ids_and_earlier_objects_keep_shared_pixels():
    labels = np.zeros((40, 40), np.int32)
    a, b = disk(labels.shape, (15, 15), 6), disk(labels.shape, (15, 22), 6)
    plan = plan_commit([a, b], next_id=1, selected_id=9, use_selected=True)
    assert plan.values == (1, 2)  # several objects always get new ids
    commit(labels, plan)
    np.testing.assert_array_equal(labels == 1, a)
    np.testing.assert_array_equal(labels == 2, b & ~a)


def test_refining_a_label_replaces_it_and_leaves_other_labels_alone():
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 7  # the partial object being refined
    labels[:3, :3] = 3
    refined = np.zeros_like(labels, bool)
    refined[8:20, 8:20] = True
    plan = plan_commit([refined], next_id=8, refine_label=7, split=True)  # split does not apply
    assert plan.values == (7,) and plan.replace == 7
    commit(labels, plan)
    np.testing.assert_array_equal(labels == 7, refined)
    assert (labels[:3, :3] == 3).all() and set(np.unique(labels)) == {0, 3, 7}


def test_split_writes_one_new_label_per_object_and_nothing_when_there_is_none():
    mask = disk((60, 60), (15, 15), 6) | disk((60, 60), (45, 45), 6)
    plan = plan_commit([mask], next_id=4, split=True)
    assert plan.values == (4, 5)
    labels = np.zeros((60, 60), np.int32)
    commit(labels, plan)
    assert labels[15, 15] == 4 and labels[45, 45] == 5 and np.array_equal(labels > 0, mask)
    speck = np.zeros((60, 60), bool)
    speck[0, 0] = True
    assert plan_commit([speck], next_id=1, split=True).masks == ()
    many = plan_commit([mask] * 1, next_id=1, split=True, pieces=np.arange(6).reshape(2, 3))
    assert many.values == (1, 2, 3, 4, 5) and many.description == "labels 1-5"


def test_an_edit_is_undone_exactly_and_touches_only_the_masks_bounding_box():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (128, 128)).astype(np.uint16)
    mask = disk(labels.shape, (100, 30), 10)
    edit, before = commit(labels, plan_commit([mask], next_id=9, preserve=False))
    assert (edit.rows >= 90).all() and (edit.rows <= 110).all() and (edit.cols <= 40).all()
    np.testing.assert_array_equal(edit.old, before[edit.rows, edit.cols])
    edit.undo(labels)
    np.testing.assert_array_equal(labels, before)
    assert len(paint(labels, plan_commit([np.zeros_like(mask)], next_id=1))) == 0


# ---- the session's plan: what is shown is what is written --------------------------------------


def test_session_plans_the_chosen_candidate_and_replaces_a_refined_label_only_in_its_own_layer(disk_predictor):
    session = AnnotationSession(disk_predictor)
    session.set_plane("plane", np.zeros((64, 64), np.uint8))
    assert session.plan_commit(next_id=1) is None  # nothing shown
    existing = np.zeros((64, 64), bool)
    existing[20:30, 20:30] = True
    session.show(session.predict(session.request(PromptSet.make([(25, 25)]), existing=(7, existing))))
    into_mask_layer = session.plan_commit(next_id=8, refine_target=True)
    assert into_mask_layer.values == (7,) and into_mask_layer.replace == 7
    elsewhere = session.plan_commit(next_id=8, refine_target=False)
    assert elsewhere.values == (8,) and elsewhere.replace is None
    np.testing.assert_array_equal(elsewhere.masks[0], session.candidates[0].masks[0])


@pytest.mark.parametrize("choice", [0, 1])
def test_session_split_reuses_the_pieces_made_with_the_prediction_for_the_first_candidate(
    disk_predictor, monkeypatch, choice
):
    session = AnnotationSession(disk_predictor)
    session.set_plane("plane", np.zeros((64, 64), np.uint8))
    result = session.predict(session.request(PromptSet.make([(25, 25)])))
    from napari_sam.annotate.session import Result

    pieces = np.zeros((64, 64), np.int32)
    pieces[:5, :5], pieces[10:15, 10:15] = 1, 2
    session.show(Result(result.request, result.candidates, pieces))
    session.choose(choice)
    plan = session.plan_commit(next_id=1, split=True)
    if choice == 0:
        assert plan.values == (1, 2) and plan.masks[0][:5, :5].all()
    else:  # another candidate is split anew: one disk, one object
        assert plan.values == (1,)
