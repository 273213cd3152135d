"""Propagation through z / t: stops, neighbours, ids, interpolation, divisions, writing, cancel.

The model is ``propagation_stand_in.GreyLevelPredictor``: exact masks of grey-level
objects, so every difference from the truth is the propagation's own doing.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotate.propagate import (
    PlaneSource, PropagationCancelled, PropagationSettings, Propagator, Seed, interior_points, propagate)
from napari_sam.annotate.stack_objects import PlaneMask, blend
from propagation_stand_in import GreyLevelPredictor, ball_stack
from tiny import ellipse

SHAPE = (64, 64)


@pytest.fixture
def grey(tiny_model):
    return GreyLevelPredictor(tiny_model)


def disc_stack(count, objects):
    """``(count, 64, 64)`` uint16: ``objects = [(value, planes, centre, radii)]``, earlier wins."""
    stack = np.zeros((count, *SHAPE), np.uint16)
    for value, planes, centre, radii in objects:
        for plane in planes:
            mask = ellipse(SHAPE, centre, radii) & (stack[plane] == 0)
            stack[plane][mask] = value
    return stack


def box_of(mask):
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)


# ---- one object -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["box", "box+mask", "mask", "points", "points+mask"])
def test_a_box_on_one_plane_gives_the_object_exactly_and_stops_at_its_ends(grey, mode):
    stack = disc_stack(20, [(3, range(5, 15), (30, 30), (8, 8))])
    result = Propagator(grey, settings=PropagationSettings(prompt=mode)).run(
        PlaneSource(stack), [Seed(1, 9, box=box_of(stack[9] == 3))])
    np.testing.assert_array_equal(result.labels() == 1, stack == 3)
    assert result.planes(1) == list(range(5, 15))
    assert {(s.direction, s.plane) for s in result.stops} == {(+1, 15), (-1, 4)}
    # The stand-in answers an empty mask with a low predicted IoU.
    assert all(s.reason.startswith(("the object vanished", "predicted IoU")) for s in result.stops)


def test_an_ellipsoid_is_found_on_every_plane_bigger_than_min_area(grey):
    stack = ball_stack((24, 64, 64), [(2, (12, 30, 34), (9, 14, 11))])
    result = propagate(grey, stack, [Seed(4, 12, points=np.array([[30, 34]]))])
    expected = (stack == 2) & (np.asarray([(p == 2).sum() >= 4 for p in stack])[:, None, None])
    np.testing.assert_array_equal(result.labels() == 4, expected)


def test_a_touching_neighbour_is_never_taken_over_where_the_object_ends(grey):
    # A ends on plane 10; B touches it sideways and goes on, partly under A's box.
    stack = disc_stack(20, [(1, range(3, 11), (32, 24), (8, 8)), (2, range(3, 19), (32, 40), (8, 8))])
    for mode in ("points+mask", "box"):  # the box reaches into B on plane 11
        result = propagate(grey, stack, [Seed(1, 6, box=box_of(stack[6] == 1))],
                           settings=PropagationSettings(prompt=mode))
        labels = result.labels()
        np.testing.assert_array_equal(labels == 1, stack == 1)
        assert not (labels[stack == 2]).any()
    assert any(s.plane == 11 and "lies on the previous" in s.reason for s in result.stops)


def test_a_jump_in_area_stops_the_object(grey):
    # The object merges with a same-grey blob four times its size on plane 8.
    stack = disc_stack(14, [(5, range(2, 12), (32, 32), (5, 5))])
    stack[8:][ellipse(SHAPE, (32, 32), (14, 14))[None].repeat(6, 0) & (stack[8:] == 0)] = 5
    result = propagate(grey, stack, [Seed(1, 4, box=box_of(stack[4] == 5))])
    assert result.planes(1) == list(range(2, 8))
    assert any(s.plane == 8 and "area changed" in s.reason for s in result.stops)


def test_a_low_predicted_iou_stops_the_object(grey, monkeypatch):
    stack = disc_stack(12, [(5, range(12), (32, 32), (6, 6))])
    original = grey.predict

    def unsure_beyond_plane_7(*args, **kwargs):
        candidates = original(*args, **kwargs)
        plane = grey.embedding.features[0, 0].numpy()
        if plane[0, 0] == 7:  # the marker of plane 7
            return type(candidates)(candidates.masks, candidates.scores * 0 + 0.2, candidates.logits)
        return candidates

    stack[:, 0, 0] = np.arange(12)
    monkeypatch.setattr(grey, "predict", unsure_beyond_plane_7)
    result = propagate(grey, stack, [Seed(1, 3, box=box_of(stack[3] == 5))],
                       settings=PropagationSettings(direction="forward", prefetch=0, min_score=0.5))
    assert result.planes(1) == [3, 4, 5, 6]
    assert [s.reason[:13] for s in result.stops] == ["predicted IoU"]


def test_an_object_that_fades_into_its_surroundings_stops_where_its_contrast_goes(grey):
    # The stand-in still segments the faint planes 8-11 exactly (grey level 6 on 0): only
    # the image says the object is gone there (a contrast of 6 / 120 of the seed's).
    stack = disc_stack(12, [(120, range(2, 8), (32, 32), (7, 7)), (6, range(8, 12), (32, 32), (7, 7))])
    seed = [Seed(1, 4, box=box_of(stack[4] == 120))]
    result = propagate(grey, stack, seed)
    assert result.planes(1) == list(range(2, 8))
    assert any(s.plane == 8 and s.reason.startswith("contrast 0.05") for s in result.stops)
    assert propagate(grey, stack, seed, settings=PropagationSettings(min_contrast=0)).planes(1) == list(range(2, 12))


def test_an_object_darker_than_its_surroundings_is_followed_through(grey):
    stack = np.full((10, *SHAPE), 200, np.uint16)
    for plane in range(10):
        stack[plane][ellipse(SHAPE, (32, 30 + plane), (7, 7))] = 40
    result = propagate(grey, stack, [Seed(1, 5, points=np.array([[32.0, 35.0]]))])
    assert result.planes(1) == list(range(10))


def test_time_lapses_get_box_prompts_and_no_contrast_rule_unless_overridden():
    assert PropagationSettings.for_axis("T") == PropagationSettings(prompt="box", min_contrast=0.0)
    assert PropagationSettings.for_axis("Z") == PropagationSettings()
    assert PropagationSettings.for_axis("t", prompt=None, min_contrast=0.3).min_contrast == 0.3
    assert PropagationSettings.for_axis("z", prompt="box").prompt == "box"


def test_a_committed_mask_is_a_seed_and_direction_limits_the_extension(grey):
    stack = disc_stack(16, [(4, range(2, 14), (20, 40), (7, 9))])
    seed = Seed(3, 8, mask=stack[8] == 4)
    up = propagate(grey, stack, [seed], settings=PropagationSettings(direction="forward"))
    assert up.planes(3) == list(range(8, 14))
    down = propagate(grey, stack, [seed], settings=PropagationSettings(direction="backward", max_planes=3))
    assert down.planes(3) == [5, 6, 7, 8]
    assert down.scores[3][8] == 1.0


def test_an_empty_seed_is_reported_and_followed_nowhere(grey):
    stack = disc_stack(6, [(2, range(6), (32, 32), (8, 8))])
    result = propagate(grey, stack, [Seed(1, 3, mask=np.zeros(SHAPE, bool)), Seed(2, 3, mask=stack[3] == 2)])
    assert result.planes(1) == [3] and not result.masks[1][3].area
    assert {s.reason for s in result.stops if s.label == 1} == {"the seed's mask is empty"}
    assert result.planes(2) == list(range(6))


def test_interior_points_lie_inside_and_apart():
    mask = PlaneMask.from_mask(ellipse(SHAPE, (30, 30), (6, 15)))
    points = interior_points(mask)
    assert len(points) == 3
    assert mask.full()[points[:, 0].astype(int), points[:, 1].astype(int)].all()
    assert np.min([np.hypot(*(a - b)) for i, a in enumerate(points) for b in points[i + 1:]]) >= 2


# ---- several objects ------------------------------------------------------------------------


def test_several_objects_keep_their_own_ids_through_every_plane(grey):
    stack = disc_stack(18, [(1, range(2, 12), (16, 16), (7, 7)), (2, range(4, 16), (44, 20), (8, 6)),
                            (3, range(0, 18), (30, 48), (6, 9))])
    seeds = [Seed(7, 6, box=box_of(stack[6] == 1)), Seed(9, 8, points=np.array([[44, 20]])),
             Seed(11, 9, box=box_of(stack[9] == 3))]
    labels = propagate(grey, stack, seeds).labels()
    for value, label in ((1, 7), (2, 9), (3, 11)):
        np.testing.assert_array_equal(labels == label, stack == value)


def test_each_plane_is_embedded_once_only_near_the_objects_and_reused_from_the_store(grey):
    stack = disc_stack(40, [(1, range(10, 16), (20, 20), (6, 6)), (2, range(12, 18), (44, 44), (6, 6))])
    stack[:, 0, 0] = 100 + np.arange(40)  # planes of equal pixels would share one cache entry
    propagator = Propagator(grey, settings=PropagationSettings(prefetch=2))
    seeds = [Seed(1, 12, box=box_of(stack[12] == 1)), Seed(2, 14, box=box_of(stack[14] == 2))]
    propagator.run(PlaneSource(stack), seeds)
    # Planes 9..18 are needed (one past each end); prefetching reads at most 2 more per side.
    assert 10 <= grey.encoded <= 14
    before = grey.encoded
    # Everything the second run decodes on is in the store (no prefetch: it might look further ahead).
    Propagator(grey, propagator.store, settings=PropagationSettings(prefetch=0)).run(PlaneSource(stack), seeds)
    assert grey.encoded == before


# ---- interpolation ---------------------------------------------------------------------------


def test_two_annotated_planes_interpolate_the_planes_between(grey):
    # A cone: the radius grows from 4 to 14 between planes 2 and 12.
    stack = np.zeros((15, *SHAPE), np.uint16)
    for plane in range(2, 13):
        stack[plane][ellipse(SHAPE, (32, 32), (2 + plane, 2 + plane))] = 6
    seeds = [Seed(1, 2, box=box_of(stack[2] == 6)), Seed(1, 12, mask=stack[12] == 6)]
    result = propagate(grey, stack, seeds)
    np.testing.assert_array_equal(result.labels() == 1, stack == 6)


def test_planes_neither_side_reaches_are_blended_from_the_nearest_masks(grey):
    stack = disc_stack(12, [(2, [1, 2, 3, 4, 6, 7, 8, 9], (32, 32), (8, 8))])  # plane 5 is missing
    result = propagate(grey, stack, [Seed(1, 2, mask=stack[2] == 2), Seed(1, 8, mask=stack[8] == 2)])
    assert result.planes(1) == list(range(1, 10))
    np.testing.assert_array_equal(result.masks[1][5].full(), stack[4] == 2)
    assert result.scores[1][5] == 0.0


def test_blend_moves_from_one_shape_to_the_other():
    small = PlaneMask.from_mask(ellipse(SHAPE, (32, 32), (4, 4)))
    large = PlaneMask.from_mask(ellipse(SHAPE, (32, 32), (12, 12)))
    areas = [blend(small, large, w).area for w in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert areas[0] == small.area and areas[-1] == large.area
    assert all(a < b for a, b in zip(areas, areas[1:]))


# ---- time-lapse -------------------------------------------------------------------------------


def dividing_movie():
    """10 frames: one cell (grey 3), elongated on frame 5, two daughters from frame 6 on."""
    movie = np.zeros((10, *SHAPE), np.uint16)
    for t in range(5):
        movie[t][ellipse(SHAPE, (32, 30 + t // 2), (8, 8))] = 3
    movie[5][ellipse(SHAPE, (32, 32), (7, 13))] = 3
    for t in range(6, 10):
        movie[t][ellipse(SHAPE, (32, 24 - (t - 6)), (6, 6))] = 3
        movie[t][ellipse(SHAPE, (32, 40 + (t - 6)), (6, 6))] = 3
    return movie


def test_a_division_stops_the_track_when_asked(grey):
    movie = dividing_movie()
    settings = PropagationSettings(division="stop", direction="forward")
    result = propagate(grey, movie, [Seed(1, 0, box=box_of(movie[0] == 3))], settings=settings)
    assert result.planes(1) == list(range(6))
    assert [(d.parent, d.plane, d.daughters) for d in result.divisions] == [(1, 6, ())]


def test_daughters_get_new_ids_with_the_parent_recorded_and_tracks_follow_them(grey):
    movie = dividing_movie()
    settings = PropagationSettings(division="daughters", direction="forward")
    result = propagate(grey, movie, [Seed(1, 0, box=box_of(movie[0] == 3))], settings=settings)
    assert [(d.parent, d.plane, d.daughters) for d in result.divisions] == [(1, 6, (2, 3))]
    assert result.graph == {2: [1], 3: [1]}
    assert result.planes(2) == result.planes(3) == list(range(6, 10))
    labels = result.labels()
    assert labels[9, 32, 21] == 2 and labels[9, 32, 43] == 3 and labels[3, 32, 31] == 1
    tracks = result.tracks()
    assert tracks.shape == (6 + 4 + 4, 4)
    left = tracks[tracks[:, 0] == 2]
    np.testing.assert_allclose(left[:, 1], [6, 7, 8, 9])
    np.testing.assert_allclose(left[:, 3], [24, 23, 22, 21], atol=0.01)
    assert result.tracks(coordinates=(5.0,)).shape == (14, 5)


# ---- writing -------------------------------------------------------------------------------


def test_preserve_keeps_existing_labels_overwrite_replaces_them_and_undo_restores(grey):
    stack = disc_stack(8, [(2, range(1, 7), (32, 32), (8, 8))])
    result = propagate(grey, stack, [Seed(4, 3, box=box_of(stack[3] == 2))])
    labels = np.zeros((2, 8, *SHAPE), np.uint16)  # (t, z, y, x): propagated along z at t = 1
    labels[1, 2, 30:34, 30:34] = 9
    before = labels.copy()
    edit = result.edit(labels, axis=1, position=(1,))
    edit.apply(labels)
    assert (labels[1, 2, 30:34, 30:34] == 9).all()
    assert ((labels[1] == 4) == ((stack == 2) & (before[1] != 9))).all() and not labels[0].any()
    edit.undo(labels)
    np.testing.assert_array_equal(labels, before)
    result.edit(labels, axis=1, position=(1,), preserve=False).apply(labels)
    np.testing.assert_array_equal(labels[1] == 4, stack == 2)


def test_an_nd_stack_propagates_along_the_chosen_axis_at_the_chosen_position(grey):
    volume = disc_stack(10, [(2, range(2, 8), (20, 40), (6, 6))])
    data = np.zeros((3, 10, *SHAPE), np.uint16)
    data[2] = volume
    result = propagate(grey, data, [Seed(1, 4, box=box_of(volume[4] == 2))], axis=1, position=(2,))
    np.testing.assert_array_equal(result.labels() == 1, volume == 2)
    with pytest.raises(ValueError, match="not a leading axis"):
        PlaneSource(data, axis=2)


def test_cancelling_raises_and_leaves_the_labels_untouched(grey):
    stack = disc_stack(20, [(2, range(20), (32, 32), (8, 8))])
    labels = np.zeros(stack.shape, np.uint16)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    seen = []
    with pytest.raises(PropagationCancelled):
        result = propagate(grey, stack, [Seed(1, 10, box=box_of(stack[10] == 2))], cancel=cancel,
                           progress=lambda done, total: seen.append((done, total)))
        result.edit(labels).apply(labels)
    assert not labels.any()
    assert [d for d, _ in seen] == [1, 2, 3]


def test_progress_counts_up_to_the_total(grey):
    stack = disc_stack(10, [(2, range(2, 8), (32, 32), (8, 8))])
    seen = []
    propagate(grey, stack, [Seed(1, 5, box=box_of(stack[5] == 2))], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (20, 20) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bad_seeds_are_refused():
    stack = np.zeros((4, *SHAPE), np.uint16)
    with pytest.raises(ValueError, match="no object"):
        Propagator.__new__(Propagator).run(PlaneSource(stack), [])
    with pytest.raises(ValueError, match="prompt must be one of"):
        PropagationSettings(prompt="lasso")
