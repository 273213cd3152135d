"""Splitting one mask (what text alone returns) into objects."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_sam.inference.objects import split_objects
from napari_sam.synthetic import generate


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def matched(labels: np.ndarray, truth: np.ndarray, ids) -> int:
    """True objects whose most-overlapping split label has IoU > 0.5 with them."""
    count = 0
    for value in ids:
        target = truth == value
        found, sizes = np.unique(labels[target], return_counts=True)
        sizes, found = sizes[found > 0], found[found > 0]
        if found.size:
            mask = labels == found[np.argmax(sizes)]
            count += (mask & target).sum() / (mask | target).sum() > 0.5
    return count


def test_two_touching_discs_are_cut_at_the_neck_and_a_rod_stays_whole():
    shape = (60, 120)
    pair = disc(shape, (30, 30), 12) | disc(shape, (30, 52), 12)  # overlapping: one connected piece
    rod = np.zeros(shape, bool)
    rod[26:34, 75:115] = True
    labels = split_objects(pair | rod)
    assert labels.max() == 3
    assert len(np.unique(labels[disc(shape, (30, 24), 5)])) == 1
    assert labels[30, 24] != labels[30, 58]  # the discs apart
    assert len(np.unique(labels[rod])) == 1  # the rod, 40 px long and 8 wide, in one piece
    assert split_objects(pair | rod, separate_touching=False).max() == 2


def test_generated_nuclei_are_recovered_from_their_union():
    sample = generate((256, 256), modality="fluorescence", kinds=("nucleus", "elongated cell"), seed=11)
    nuclei = [label for label, kind in sample.classes.items() if kind == "nucleus"]
    union = np.isin(sample.labels, nuclei)
    pieces_only = matched(split_objects(union, separate_touching=False), sample.labels, nuclei)
    split = matched(split_objects(union), sample.labels, nuclei)
    assert split >= 0.95 * len(nuclei) > pieces_only  # measured 36 of 37; connected pieces alone 31


def test_small_specks_are_dropped_and_bad_input_is_refused():
    mask = np.zeros((20, 20), bool)
    mask[2:8, 2:8] = True
    mask[15, 15] = True
    assert split_objects(mask, min_pixels=4).max() == 1
    assert split_objects(mask, min_pixels=1).max() == 2
    assert split_objects(np.zeros((5, 5), bool)).max() == 0
    assert split_objects(mask.astype(np.uint16) * 7).max() == 1  # integer labels count as a mask
    with pytest.raises(ValueError, match="2D"):
        split_objects(np.zeros((2, 5, 5), bool))
    with pytest.raises(ValueError, match="dtype"):
        split_objects(np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="neck_ratio"):
        split_objects(mask, neck_ratio=0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 47), st.integers(0, 47), st.integers(1, 9)), min_size=0, max_size=8),
    st.booleans(),
)
def test_labels_partition_the_mask_into_connected_pieces(discs, separate):
    mask = np.zeros((48, 48), bool)
    for row, col, radius in discs:
        mask |= disc(mask.shape, (row, col), radius)
    labels = split_objects(mask, min_pixels=1, separate_touching=separate)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels > 0, mask)  # nothing outside, nothing lost (min_pixels=1)
    values = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(values, np.arange(1, len(values) + 1))
    for value in values:
        assert ndimage.label(labels == value)[1] == 1
    assert len(values) >= ndimage.label(mask)[1]
