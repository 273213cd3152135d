"""Plane <-> window (tile) frames and the half-pixel rule of transforms.py (property tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam.inference import transforms

shapes = st.tuples(st.integers(1, 500), st.integers(1, 500))


@st.composite
def window_in_plane(draw):
    """``(plane shape, window (r0, c0, r1, c1))`` with the window inside the plane."""
    height, width = draw(shapes)
    r0 = draw(st.integers(0, height - 1))
    c0 = draw(st.integers(0, width - 1))
    return (height, width), (r0, c0, draw(st.integers(r0 + 1, height)), draw(st.integers(c0 + 1, width)))


coordinate = st.floats(-1000, 1000, allow_nan=False)


@given(window_in_plane(), st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_points_and_boxes_go_to_a_window_and_back_exactly(geometry, points):
    _, window = geometry
    points = np.array(points)
    local = transforms.plane_to_window_rc(points, window)
    np.testing.assert_array_equal(local, points - window[:2])
    np.testing.assert_allclose(transforms.window_to_plane_rc(local, window), points, atol=1e-9)
    boxes = np.concatenate([points, points + 3.0], axis=1)
    local_boxes = transforms.plane_to_window_rc(boxes, window)
    np.testing.assert_array_equal(local_boxes[:, :2], local)
    np.testing.assert_allclose(transforms.window_to_plane_rc(local_boxes, window), boxes, atol=1e-9)


@given(shapes, st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_a_point_is_on_the_plane_when_a_pixel_area_holds_it(shape, points):
    points = np.array(points)
    inside = transforms.inside_plane_rc(points, shape)
    # pixel i spans [i - 0.5, i + 0.5]
    expected = ((points >= -0.5) & (points <= np.array(shape) - 0.5)).all(axis=1)
    np.testing.assert_array_equal(inside, expected)
    clipped = transforms.clip_to_plane_rc(points, shape)
    assert transforms.inside_plane_rc(clipped, shape).all()
    np.testing.assert_array_equal(clipped[inside], points[inside])  # points on the plane do not move
    np.testing.assert_array_equal(transforms.clip_to_plane_rc(clipped, shape), clipped)


@given(st.floats(-1e4, 1e4, allow_nan=False))
def test_nearest_pixel_is_the_pixel_whose_area_holds_the_coordinate(value):
    pixel = transforms.nearest_pixel(value)
    low, high = transforms.window_extent(pixel, pixel + 1)
    assert low <= value < high


@given(window_in_plane(), st.integers(1, 3))
@settings(max_examples=100, deadline=None)
def test_window_masks_land_on_the_window_of_the_plane(geometry, count):
    shape, window = geometry
    rng = np.random.default_rng(sum(window))
    masks = rng.random((count, window[2] - window[0], window[3] - window[1])) > 0.5
    plane = transforms.window_to_plane_masks(masks, window, shape)
    assert plane.shape == (count, *shape) and plane.dtype == bool
    inside = (slice(None),) + transforms.window_slices(window, (0, 0) + shape)
    np.testing.assert_array_equal(plane[inside], masks)
    assert plane.sum() == masks.sum()  # nothing outside the window


def test_box_meets_the_plane_only_when_it_shares_pixel_area():
    shape = (10, 20)
    assert transforms.box_meets_plane_rc(np.array([-3.0, -3.0, -0.5, -0.5]), shape)  # touches pixel (0, 0)
    assert not transforms.box_meets_plane_rc(np.array([-3.0, -3.0, -0.6, 5.0]), shape)
    assert not transforms.box_meets_plane_rc(np.array([2.0, 19.6, 4.0, 30.0]), shape)
    assert transforms.box_meets_plane_rc(np.array([2.0, 19.5, 4.0, 30.0]), shape)


# ---- low-res logits between windows ------------------------------------------------------


def _plane_coordinates(window, size):
    """Plane (row, col) of the centres of a window's low-res pixels (the documented frame)."""
    longest = max(window[2] - window[0], window[3] - window[1])
    rows = window[0] + longest / size[0] * (np.arange(size[0]) + 0.5) - 0.5
    cols = window[1] + longest / size[1] * (np.arange(size[1]) + 0.5) - 0.5
    return rows, cols


@st.composite
def two_windows(draw):
    def window():
        r0, c0 = draw(st.integers(-50, 50)), draw(st.integers(-50, 50))
        return (r0, c0, r0 + draw(st.integers(16, 200)), c0 + draw(st.integers(16, 200)))

    return window(), window()


@given(two_windows(), st.floats(-2, 2), st.floats(-2, 2), st.floats(-20, 20))
@settings(max_examples=150, deadline=None)
def test_resampled_logits_keep_a_linear_field_where_both_windows_see_it(windows, a, b, c):
    # Bilinear re-sampling is exact on a linear function: whatever the windows' offsets
    # and sizes, a field f(row, col) sampled in one window's frame reads f in the other's.
    source, target = windows
    size = (32, 32)
    rows, cols = _plane_coordinates(source, size)
    logits = (a * rows[:, None] + b * cols[None, :] + c).astype(np.float32)[None]
    out = transforms.resample_low_res(logits, source, target)
    assert out.shape == logits.shape and out.dtype == np.float32
    rows_t, cols_t = _plane_coordinates(target, size)
    expected = a * rows_t[:, None] + b * cols_t[None, :] + c
    seen_r = (rows_t >= rows[0]) & (rows_t <= rows[-1])
    seen_c = (cols_t >= cols[0]) & (cols_t <= cols[-1])
    np.testing.assert_allclose(out[0][np.ix_(seen_r, seen_c)], expected[np.ix_(seen_r, seen_c)], atol=1e-3)


def test_resampling_into_the_same_window_is_the_identity_and_a_whole_pixel_shift_is_exact():
    logits = np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32)
    window = (10, 20, 138, 148)  # 128 px: 8 plane pixels per low-res pixel
    assert transforms.resample_low_res(logits, window, window) is logits
    moved = (26, 20, 154, 148)  # 16 px = 2 low-res pixels further down
    there = transforms.resample_low_res(logits, window, moved)
    np.testing.assert_array_equal(there[0, :-2], logits[0, 2:])
    back = transforms.resample_low_res(there, moved, window)
    np.testing.assert_array_equal(back[0, 2:-2], logits[0, 2:-2])
