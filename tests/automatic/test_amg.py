"""Segment everything: grid prompts, filters, mask NMS, cleaning, tiles merged without duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.automatic.amg import (
    AmgOptions, MaskCandidate, generate_masks, mask_nms, paint, point_grid, segment_everything,
)
from napari_sam.automatic.ais import tile_grid

from stand_ins import ThresholdModel, discs
from test_ais import assert_same_instances


def test_point_grid_is_segment_anythings_grid_in_pixel_coordinates():
    points = point_grid((64, 32), (16.0, 8.0))
    assert points.shape == (16, 2)
    # continuous (k + 0.5) * 16 -> pixel (k + 0.5) * 16 - 0.5
    np.testing.assert_allclose(np.unique(points[:, 0]), [7.5, 23.5, 39.5, 55.5])
    np.testing.assert_allclose(np.unique(points[:, 1]), [3.5, 11.5, 19.5, 27.5])


def test_every_object_once_on_a_single_tile_even_with_many_points_inside_it():
    model = ThresholdModel(64)
    image, truth = discs((60, 64), [(15, 15), (15, 45), (42, 30)], 9)
    labels = segment_everything(model, image, AmgOptions(points_per_side=16))
    assert_same_instances(labels, truth)
    assert labels.max() == 3 and model.decoded == 16 * 16


def test_objects_on_tile_borders_come_out_whole_and_once():
    model = ThresholdModel(64)
    grid = tile_grid(model, (180, 200), halo=12)
    rows = sorted({t.core[2] for t in grid if t.core[2] < 180})
    cols = sorted({t.core[3] for t in grid if t.core[3] < 200})
    centres = [(r, c) for r in rows for c in cols] + [(r, 25) for r in rows] + [(25, c) for c in cols]
    image, truth = discs((180, 200), centres, 6)
    candidates = generate_masks(model, image, AmgOptions(points_per_side=16), halo=12)
    assert len(candidates) == len(centres)
    assert_same_instances(paint(candidates, image.shape), truth)


def test_masks_cut_by_a_window_edge_inside_the_plane_are_not_kept():
    model = ThresholdModel(64)
    # A bar longer than a tile: every window cuts it, so no tile may claim it.
    image = np.full((64, 200), 100, np.uint16)
    image[20:30, :] = 1000
    image[45:55, 94:106] = 1000  # on a core border, within the halo
    labels = segment_everything(model, image, AmgOptions(points_per_side=16), halo=8)
    assert labels[25].max() == 0
    assert labels.max() == 1 and (labels > 0).sum() == 120


def test_filters_drop_unsure_and_unstable_candidates():
    model = ThresholdModel(64)
    image, _ = discs((64, 64), [(32, 32)], 10)
    assert segment_everything(model, image, AmgOptions(points_per_side=8, pred_iou_thresh=0.96)).max() == 0
    assert segment_everything(model, image, AmgOptions(points_per_side=8, stability_score_offset=20.0)).max() == 0
    assert segment_everything(model, image, AmgOptions(points_per_side=8)).max() == 1


def test_small_holes_and_islands_are_cleaned():
    model = ThresholdModel(64)
    image, truth = discs((64, 64), [(30, 30)], 14)
    image[29:31, 29:31] = 100  # a 4-pixel hole
    labels = segment_everything(model, image, AmgOptions(points_per_side=16, min_area=10))
    assert labels.max() == 1
    np.testing.assert_array_equal(labels > 0, truth > 0)


def box_mask(box, shape=(40, 40)):
    mask = np.zeros(shape, bool)
    mask[box[0]:box[2], box[1]:box[3]] = True
    return MaskCandidate(box, mask[box[0]:box[2], box[1]:box[3]], 0.0, 1.0)


def test_mask_nms_keeps_the_best_of_overlapping_masks_and_disjoint_ones():
    a, b, c = box_mask((0, 0, 10, 10)), box_mask((0, 0, 10, 9)), box_mask((20, 20, 30, 30))
    a.score, b.score, c.score = 0.9, 0.95, 0.5
    kept = mask_nms([a, b, c], 0.7)
    assert kept == [b, c]
    assert len(mask_nms([a, b], 0.95)) == 2  # IoU 0.9 is below this threshold


def test_paint_keeps_small_objects_inside_large_ones_visible():
    big, small = box_mask((0, 0, 20, 20)), box_mask((5, 5, 8, 8))
    labels = paint([small, big], (40, 40))
    assert labels[6, 6] != labels[1, 1] and labels.max() == 2


@pytest.mark.parametrize("shape", [(50, 90), (200, 140)])
def test_the_tiny_model_segments_everything_on_planes_of_any_size(tiny_model, shape):
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    options = AmgOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=5)
    candidates = generate_masks(tiny_model, image, options)
    labels = paint(candidates, shape)
    assert labels.shape == shape and labels.dtype == np.uint32
    assert labels.max() <= len(candidates)
    if shape[0] <= tiny_model.image_size and shape[1] <= tiny_model.image_size:
        assert len(candidates) > 0  # (random masks reach the windows' inner edges, so tiles may keep none)
    assert all(0 <= c.box[0] < c.box[2] <= shape[0] and 0 <= c.box[1] < c.box[3] <= shape[1] for c in candidates)
