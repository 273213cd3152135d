"""Linking per-plane instances into 3D objects and tracks by optimal IoU assignment."""

from __future__ import annotations

import numpy as np

from napari_sam.annotate.linking import link, match
from tiny import ellipse

SHAPE = (48, 64)


def shuffled_ids(stack, seed=0):
    """The same instances with ids that change from plane to plane (as automatic segmentation gives)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(stack)
    for index, plane in enumerate(stack):
        ids = np.unique(plane)
        ids = ids[ids != 0]
        new = rng.permutation(np.arange(1, 200))[: len(ids)]
        for old, value in zip(ids, new):
            out[index][plane == old] = value
    return out


def same_partition(a, b):
    """Whether ``a`` and ``b`` label the same objects, whatever the ids."""
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel())}
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


def test_instances_with_changing_ids_are_linked_into_3d_objects():
    truth = np.zeros((8, *SHAPE), np.uint16)
    for z in range(8):
        truth[z][ellipse(SHAPE, (14, 14 + z), (6, 6))] = 1
        truth[z][ellipse(SHAPE, (30, 40), (8, 5 + z // 2))] = 2
        if z >= 3:
            truth[z][ellipse(SHAPE, (40, 12), (4, 4))] = 3
    linked = link(shuffled_ids(truth))
    assert linked.labels.shape == truth.shape
    assert same_partition(linked.labels, truth)
    assert len(np.unique(linked.labels)) == 4 and not linked.parents


def test_pairs_below_the_iou_floor_are_not_linked():
    a = np.zeros(SHAPE, np.uint16)
    b = np.zeros(SHAPE, np.uint16)
    a[ellipse(SHAPE, (20, 20), (6, 6))] = 5
    b[ellipse(SHAPE, (20, 29), (6, 6))] = 7  # shifted by 9 px: IoU about 0.1
    assert match(a, b, iou_floor=0.3) == []
    assert [(x, y) for x, y, _ in match(a, b, iou_floor=0.05)] == [(5, 7)]
    linked = link(np.stack([a, b]))
    assert set(np.unique(linked.labels[0])) == {0, 1} and set(np.unique(linked.labels[1])) == {0, 2}


def test_the_assignment_is_optimal_not_greedy():
    # Object 1 overlaps both 10 and 20 of the next plane; 2 overlaps only 10. Greedy would give 1 -> 10.
    a = np.zeros((1, 40), np.uint16)
    b = np.zeros((1, 40), np.uint16)
    a[0, 0:20], a[0, 20:30] = 1, 2
    b[0, 2:22], b[0, 22:30] = 10, 20
    b[0, 0:2] = 0
    pairs = {(x, y) for x, y, _ in match(a, b, 0.1)}
    assert pairs == {(1, 10), (2, 20)}


def test_divisions_end_the_parent_and_start_two_daughters_with_the_parent_recorded():
    movie = np.zeros((6, *SHAPE), np.uint16)
    for t in range(3):
        movie[t][ellipse(SHAPE, (24, 32), (8, 10))] = 4
    for t in range(3, 6):
        movie[t][ellipse(SHAPE, (24, 30 - t), (5, 5))] = 8
        movie[t][ellipse(SHAPE, (24, 34 + t), (5, 5))] = 9
    plain = link(movie)
    assert not plain.parents
    linked = link(movie, divisions=True)
    parent = int(linked.labels[0, 24, 32])
    left, right = int(linked.labels[3, 24, 25]), int(linked.labels[3, 24, 39])
    assert len({parent, left, right}) == 3
    assert linked.graph == {left: [parent], right: [parent]}
    tracks = linked.tracks
    assert tracks.shape == (3 + 3 + 3, 4)
    assert list(tracks[:, 0]) == sorted(tracks[:, 0])
    rows = tracks[tracks[:, 0] == left]
    np.testing.assert_allclose(rows[:, 1], [3, 4, 5])
    np.testing.assert_allclose(rows[:, 2:], [[24, 27], [24, 26], [24, 25]], atol=0.1)  # t = 3: they touch


def test_volumes_over_time_link_3d_objects_with_zyx_centroids():
    movie = np.zeros((3, 4, *SHAPE), np.uint16)
    for t in range(3):
        movie[t, 1:3][:, ellipse(SHAPE, (20, 20 + t), (5, 5))] = 3 + t
    linked = link(movie)
    assert len(np.unique(linked.labels)) == 2
    assert linked.tracks.shape == (3, 5)
    np.testing.assert_allclose(linked.tracks[:, 2:], [[1.5, 20, 20], [1.5, 20, 21], [1.5, 20, 22]], atol=0.01)
