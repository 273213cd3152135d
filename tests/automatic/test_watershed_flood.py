"""``flood`` (the seeded watershed that floods only pieces holding several markers) equals
scikit-image's full watershed, ties included; ``smooth`` equals scipy's Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from napari_sam.automatic.watershed import flood, smooth


@pytest.mark.parametrize("seed", range(6))
def test_flood_equals_skimage_on_pieces_with_none_one_or_several_markers(seed):
    rng = np.random.default_rng(seed)
    shape = (120, 150)
    mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.5  # many pieces of every size
    heights = rng.integers(0, 6, shape).astype(np.float32)  # few levels: many ties (markers too)
    seeds = (rng.random(shape) < 0.01) & mask
    seeds[::7, ::9] &= False
    # A marker straddling two pieces diagonally (8-connected seeds, 4-connected pieces).
    markers, _ = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    expected = watershed(heights, markers, mask=mask, connectivity=1)
    np.testing.assert_array_equal(flood(heights, markers, mask), expected)


def test_flood_of_an_empty_mask_or_no_markers_is_background():
    heights = np.zeros((10, 12), np.float32)
    assert not flood(heights, np.zeros((10, 12), np.int32), np.zeros((10, 12), bool)).any()
    assert not flood(heights, np.zeros((10, 12), np.int32), np.ones((10, 12), bool)).any()


def test_a_marker_in_two_diagonal_pieces_labels_both():
    mask = np.zeros((6, 6), bool)
    mask[:3, :3] = mask[3:, 3:] = True  # two pieces touching at a corner only
    markers = np.zeros((6, 6), np.int32)
    markers[2, 2] = markers[3, 3] = 1
    markers[0, 0] = 2
    heights = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_array_equal(flood(heights, markers, mask),
                                  watershed(heights, markers, mask=mask, connectivity=1))


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.6, 2.0])
def test_smooth_is_scipys_gaussian_in_float32(sigma):
    image = np.random.default_rng(0).random((40, 57)).astype(np.float32)
    expected = ndimage.gaussian_filter(image.astype(np.float64), sigma, mode="mirror", truncate=3.0)
    np.testing.assert_allclose(smooth(image, sigma), expected, atol=1e-6)
    tiny = image[:2, :3]  # not wider than the kernel's radius: scipy's own filter
    np.testing.assert_allclose(smooth(tiny, sigma), ndimage.gaussian_filter(tiny, sigma, mode="mirror", truncate=3.0))


@pytest.mark.parametrize("seed", range(4))
def test_flood_equals_skimage_when_marker_heights_are_distinct(seed):
    """The packed path (taken when no two marker pixels share a height)."""
    rng = np.random.default_rng(seed)
    shape = (120, 150)
    mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.5
    heights = rng.integers(0, 6, shape).astype(np.float32)  # ties between flooded pixels
    seeds = (rng.random(shape) < 0.01) & mask
    heights[seeds] = -1 - np.arange(seeds.sum()) / seeds.sum()
    markers, _ = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    np.testing.assert_array_equal(flood(heights, markers, mask),
                                  watershed(heights, markers, mask=mask, connectivity=1))
