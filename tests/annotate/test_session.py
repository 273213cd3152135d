"""The annotation session: which prediction runs, refinement memory, mask prompts, tiles.

No Qt: the rules of the Annotate widget and ``napari-sam segment`` tested on the session
they both drive. The decoder is a recording stand-in (``conftest.DiskPredictor``).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotate import AnnotationSession, PromptSet
from napari_sam.inference.transforms import mask_to_low_res_logits


def session_on(predictor, shape=(64, 64), key="plane", **kwargs) -> AnnotationSession:
    session = AnnotationSession(predictor, **kwargs)
    session.set_plane(key, np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8))
    return session


def click(session, points, labels=None, boxes=None, text=None, **kwargs):
    """Request, predict and show; returns the result."""
    result = session.predict(session.request(PromptSet.make(points, labels, boxes, text), **kwargs))
    assert session.show(result)
    return result


# ---- dispatch -----------------------------------------------------------------------------


def test_prompt_sets_choose_one_object_several_boxes_boxes_with_text_or_text_alone():
    box = (1, 1, 9, 9)
    assert PromptSet.make([(3, 4)]).dispatch == "one"
    assert PromptSet.make(boxes=[box], text="nucleus").dispatch == "one"
    assert PromptSet.make([(3, 4)], boxes=[box, box]).dispatch == "boxes"
    assert PromptSet.make(boxes=[box, box], text="nucleus").dispatch == "boxes_text"
    assert PromptSet.make(text=" nucleus ").dispatch == "text"
    assert PromptSet.make(text="   ").empty  # blank text is no prompt
    assert PromptSet.make([(3, 4)], boxes=[box, box]).points_ignored


def test_single_point_gives_three_candidates_best_first_and_next_cycles_them(disk_predictor):
    session = session_on(disk_predictor)
    click(session, [(30, 30)])
    (candidates,) = session.candidates
    assert len(candidates) == 3 and np.all(np.diff(candidates.scores) <= 0)
    np.testing.assert_array_equal(session.preview() > 0, candidates.masks[0])
    assert session.next_candidate() and session.choice == 1
    np.testing.assert_array_equal(session.preview_masks()[0], candidates.masks[1])
    session.next_candidate()
    session.next_candidate()
    assert session.choice == 0


def test_several_boxes_are_batched_per_tile_one_object_each_and_points_ignored(disk_predictor, monkeypatch):
    session = session_on(disk_predictor, shape=(300, 300))  # tiny model: 128 px tiles
    batches = []
    original = disk_predictor.predict_boxes
    monkeypatch.setattr(disk_predictor, "predict_boxes", lambda boxes: batches.append(len(boxes)) or original(boxes))
    boxes = [(10, 10, 30, 30), (40, 10, 60, 30), (250, 250, 280, 280)]
    result = click(session, [(5, 5)], boxes=boxes)
    assert len(result.candidates) == 3 and sorted(batches) == [1, 2]  # two tiles
    assert all(call.points is None for call in disk_predictor.calls)
    preview = session.preview()
    assert set(np.unique(preview)) == {0, 1, 2, 3}
    assert preview[20, 20] == 1 and preview[50, 20] == 2 and preview[265, 265] == 3


def test_several_boxes_with_text_ask_for_each_box_with_the_text(text_session):
    session, predictor = text_session
    result = click(session, None, boxes=[(10, 10, 30, 30), (40, 40, 60, 60)], text="nucleus")
    assert len(result.candidates) == 2
    assert [(c.text, c.box is not None) for c in predictor.calls] == [("nucleus", True)] * 2


def test_text_alone_decodes_every_tile_and_is_split_into_objects_when_asked(text_session_large):
    session, predictor = text_session_large
    request = session.request(PromptSet.make(text="nucleus"), split=True)
    assert set(request.tiles) == set(session.tiled.grid.tiles) and request.split
    result = session.predict(request)
    assert len(predictor.calls) == len(session.tiled.grid)
    assert result.pieces is not None and result.pieces.max() >= 1
    assert not session.request(PromptSet.make([(20, 20)], text="nucleus"), split=True).split  # not text alone


# ---- refinement memory ---------------------------------------------------------------------


def test_an_added_point_refines_from_the_chosen_candidates_logits_in_their_tile(disk_predictor):
    session = session_on(disk_predictor, shape=(300, 340))
    first = click(session, [(250, 40)])
    assert first.request.mask_prompt is None
    session.choose(1)
    request = session.request(PromptSet.make([(250, 40), (240, 60)], [1, 0]))
    assert request.refined
    assert request.mask_prompt.frame == first.candidates[0].frame  # the logits' own tile
    np.testing.assert_array_equal(request.mask_prompt.logits[0], first.candidates[0].logits[1])
    session.show(session.predict(request))
    np.testing.assert_array_equal(disk_predictor.calls[-1].point_labels, [1, 0])
    assert disk_predictor.calls[-1].mask_input is not None


@pytest.mark.parametrize("change", ["box", "text", "removed point", "moved point"])
def test_only_more_points_on_the_same_prompts_refine(disk_predictor, change):
    session = session_on(disk_predictor)
    click(session, [(30, 30)], boxes=[(20, 20, 40, 40)])
    points, labels, boxes, text = [(30, 30), (35, 35)], [1, 1], [(20, 20, 40, 40)], None
    if change == "box":
        boxes = [(20, 20, 41, 41)]
    elif change == "text":
        text = "nucleus"
    elif change == "removed point":
        points, labels = [(35, 35)], [1]
    else:
        points = [(31, 30), (35, 35)]
    assert not session.request(PromptSet.make(points, labels, boxes, text)).refined


def test_a_point_after_text_alone_asks_for_one_object_without_the_mask_of_every_object(text_session):
    session, predictor = text_session
    click(session, None, text="nucleus")
    request = session.request(PromptSet.make([(30, 30)], text="nucleus"))
    assert not request.refined and request.mask_prompt is None
    session.show(session.predict(request))
    assert predictor.calls[-1].text == "nucleus" and len(session.candidates[0]) == 1


def test_a_new_plane_forgets_the_shown_result_and_its_memory(disk_predictor):
    session = session_on(disk_predictor)
    result = click(session, [(30, 30)])
    session.set_plane("other", np.zeros((64, 64), np.uint8))
    assert not session.candidates and not session.show(result)  # a result for the old plane
    assert not session.request(PromptSet.make([(30, 30), (35, 35)])).refined


# ---- an existing label as the mask prompt --------------------------------------------------


def test_existing_label_is_the_mask_prompt_in_the_frame_of_the_tile_used(disk_predictor, tiny_model):
    session = session_on(disk_predictor, shape=(300, 300))
    existing = np.zeros((300, 300), bool)
    existing[200:230, 210:240] = True
    request = session.request(PromptSet.make([(215, 225)]), existing=(4, existing))
    (tile,) = request.tiles
    assert request.mask_label == 4 and request.mask_prompt.frame == tile
    expected = mask_to_low_res_logits(existing[tile.slices()], 128, tiny_model.low_res_size)
    np.testing.assert_allclose(request.mask_prompt.logits[0], expected)
    session.show(session.predict(request))
    np.testing.assert_allclose(disk_predictor.calls[-1].points, [[215 - tile.offset[0], 225 - tile.offset[1]]])
    np.testing.assert_allclose(disk_predictor.calls[-1].mask_input.logits[0], expected)
    # More points keep refining the same label, now from the shown candidate.
    assert session.request(PromptSet.make([(215, 225), (205, 215)])).mask_label == 4


def test_existing_label_is_no_mask_prompt_for_a_box_alone_several_boxes_or_an_empty_mask(disk_predictor):
    session = session_on(disk_predictor)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    assert session.request(PromptSet.make(boxes=[(5, 5, 25, 25)]), existing=(3, mask)).mask_label is None
    two = PromptSet.make([(12, 12)], boxes=[(5, 5, 25, 25), (30, 30, 40, 40)])
    assert session.request(two, existing=(3, mask)).mask_label is None
    assert session.request(PromptSet.make([(12, 12)]), existing=(3, ~np.ones_like(mask))).mask_label is None


# ---- tiles and embeddings --------------------------------------------------------------------


def test_large_plane_needs_only_the_tile_under_the_prompt_and_a_small_one_its_only_tile(disk_predictor):
    session = session_on(disk_predictor, shape=(300, 340))
    assert session.tiles_to_embed() == [] and session.ready  # nothing before a prompt
    request = session.request(PromptSet.make([(250, 40)]))
    (tile,) = session.tiles_to_embed(request)
    session.mark_embedded(session.key, [tile.index])
    assert session.tiles_to_embed(request) == []
    session.forget_embeddings()
    assert session.tiles_to_embed(request) == [tile]

    small = session_on(disk_predictor, shape=(64, 64))
    assert len(small.tiles_to_embed()) == 1 and not small.ready


def test_untiled_session_embeds_a_large_plane_whole(disk_predictor):
    session = session_on(disk_predictor, shape=(300, 340), tile_size=340)
    assert len(session.tiled.grid) == 1 and len(session.tiles_to_embed()) == 1


def test_invalid_prompts_and_a_missing_plane_are_refused_with_a_reason(disk_predictor):
    session = session_on(disk_predictor)
    with pytest.raises(ValueError, match="outside"):
        session.request(PromptSet.make([(100, 5)]))
    with pytest.raises(ValueError, match="no prompt"):
        session.request(PromptSet.make())
    session.clear_plane()
    with pytest.raises(ValueError, match="no plane"):
        session.request(PromptSet.make([(5, 5)]))


# ---- text fixtures ------------------------------------------------------------------------------


@pytest.fixture
def text_session():
    return _text_session((64, 64))


@pytest.fixture
def text_session_large():
    return _text_session((300, 300))


def _text_session(shape):
    from disk_predictor import DiskPredictor
    from tiny import TINY, build_tiny

    from napari_sam.inference.text import TEXT_DIM

    predictor = DiskPredictor(build_tiny({**TINY, "text_dim": TEXT_DIM}))
    predictor._embed_text = lambda text: np.zeros(TEXT_DIM, np.float32)  # no sentence encoder needed
    return session_on(predictor, shape=shape), predictor
