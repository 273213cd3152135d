"""AIS on planes of any size: tiles with halo, instances whole and once across tile borders.

Exact cases with the deterministic stand-ins of ``stand_ins.py`` (a perfect decoder that
sees only its window), and the real decoder on the tiny model for shapes and dtypes.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.automatic import (
    WatershedOptions, decoder_maps, instances_from_maps, segment_instances, tile_grid,
)
from napari_sam.automatic.decoder import InstanceDecoder
from napari_sam.inference.encoding import encode_plane

from stand_ins import DistanceDecoder, ThresholdModel, discs, perfect_maps

EXACT = WatershedOptions(foreground_smoothing=0, distance_smoothing=0)


def assert_same_instances(found: np.ndarray, expected: np.ndarray) -> None:
    """Same background and a one-to-one map between object ids (the numbering may differ)."""
    np.testing.assert_array_equal(found > 0, expected > 0)
    pairs = np.unique(np.stack([found[expected > 0], expected[expected > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])), "objects split or merged"


def test_a_plane_within_one_tile_is_segmented_exactly():
    model = ThresholdModel(64)
    image, truth = discs((50, 60), [(10, 10), (25, 40), (40, 15)], 6)
    labels = segment_instances(model, DistanceDecoder(), image, EXACT)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert_same_instances(labels, truth)
    assert model.encoded == 1


def test_objects_on_core_borders_and_corners_come_out_whole_and_once():
    model = ThresholdModel(64)
    grid = tile_grid(model, (200, 230), halo=10)
    assert grid.grid_shape[0] > 2 and grid.grid_shape[1] > 2
    row_borders = sorted({t.core[2] for t in grid if t.core[2] < 200})
    col_borders = sorted({t.core[3] for t in grid if t.core[3] < 230})
    # A disc centred on every core border crossing (four tiles meet), and on edges between.
    centres = [(r, c) for r in row_borders for c in col_borders]
    centres += [(r, 20) for r in row_borders] + [(20, c) for c in col_borders]
    image, truth = discs((200, 230), centres, 7)
    labels = segment_instances(model, DistanceDecoder(), image, EXACT, halo=10)
    assert_same_instances(labels, truth)
    assert labels.max() == len(centres)


def test_tiled_maps_equal_whole_plane_maps_wherever_objects_fit_the_halo():
    rng = np.random.default_rng(0)  # separate discs on a jittered lattice, anywhere relative to the tiles
    centres = [(r + rng.integers(-6, 7), c + rng.integers(-6, 7)) for r in range(15, 250, 28) for c in range(15, 250, 28)]
    image, truth = discs((250, 250), centres, 5)  # 11 pixels across: within a halo of 12 from any of their pixels
    maps = decoder_maps(ThresholdModel(64), DistanceDecoder(), image, halo=12)
    np.testing.assert_allclose(maps, perfect_maps(image > 500), atol=1e-6)
    whole = instances_from_maps(*perfect_maps(image > 500), EXACT)
    np.testing.assert_array_equal(instances_from_maps(*maps, EXACT), whole)


def test_without_a_halo_the_maps_near_a_border_lack_context_so_the_halo_is_what_keeps_objects_exact():
    model = ThresholdModel(64)
    grid = tile_grid(model, (120, 64), halo=0)
    border = grid.tiles[0].core[2]
    image, truth = discs((120, 64), [(border, 30)], 8)
    exact = perfect_maps(image > 500)
    assert np.abs(decoder_maps(model, DistanceDecoder(), image, halo=0) - exact).max() > 0.1
    np.testing.assert_allclose(decoder_maps(model, DistanceDecoder(), image, halo=18), exact, atol=1e-6)
    assert_same_instances(segment_instances(model, DistanceDecoder(), image, EXACT, halo=18), truth)


def test_min_size_removes_small_objects_and_renumbers():
    image, truth = discs((60, 60), [(15, 15), (40, 40)], 8)
    image[5:7, 50:52] = 1000  # a 4-pixel speck
    labels = segment_instances(ThresholdModel(64), DistanceDecoder(), image, WatershedOptions(
        foreground_smoothing=0, distance_smoothing=0, min_size=10))
    assert_same_instances(labels, truth)
    assert sorted(np.unique(labels)) == [0, 1, 2]


def test_progress_counts_tiles_and_a_custom_embedder_is_used():
    model = ThresholdModel(64)
    image, _ = discs((150, 100), [(30, 30)], 5)
    calls, windows = [], []

    def embed(tile, rgb):
        windows.append(tile.window)
        return encode_plane(model, rgb)

    decoder_maps(model, DistanceDecoder(), image, progress=lambda d, t: calls.append((d, t)), embed=embed)
    grid = tile_grid(model, image.shape)
    assert calls == [(k + 1, len(grid)) for k in range(len(grid))]
    assert windows == [t.window for t in grid]


@pytest.mark.parametrize("shape", [(40, 70), (300, 170)])
def test_the_real_decoder_on_the_tiny_model_gives_plane_sized_maps_and_labels(tiny_model, shape):
    decoder = InstanceDecoder(embed_dim=tiny_model.prompt_encoder.embed_dim, initial_features=8,
                              conventions="napari_sam").eval()
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    maps = decoder_maps(tiny_model, decoder, image)
    assert maps.shape == (3,) + shape and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1
    labels = segment_instances(tiny_model, decoder, image, WatershedOptions(min_size=5))
    assert labels.shape == shape and labels.dtype == np.uint32
