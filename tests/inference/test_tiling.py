"""Tile grid geometry (property tests) and TiledPredictor: prompt-centred tiles, stitching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_sam.inference import transforms
from napari_sam.inference.embeddings import EmbeddingStore
from napari_sam.imaging import to_rgb_uint8
from napari_sam.model import build_sam
from napari_sam.inference.predictor import Candidates, Embedding, Predictor
from napari_sam.inference.prompts import MaskPrompt, Prompts
from napari_sam.inference.tiling import TiledPredictor, TileGrid, axis_split
from tiny import TINY



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(TINY)


# ---- geometry ---------------------------------------------------------------------------

geometry = st.integers(2, 300).flatmap(
    lambda tile: st.tuples(st.integers(1, 1500), st.just(tile), st.integers(0, (tile - 1) // 2)))


@given(geometry)
@settings(max_examples=300, deadline=None)
def test_axis_cores_partition_windows_fit_and_halos_hold(args):
    length, tile, halo = args
    parts = axis_split(length, tile, halo)
    assert parts[0][0] == 0 and parts[-1][1] == length
    for (s0, e0, _, _), (s1, _, _, _) in zip(parts[:-1], parts[1:]):
        assert e0 == s1  # cores are contiguous: they partition [0, length)
    for start, end, w0, w1 in parts:
        assert start < end
        assert 0 <= w0 and w1 <= length and w1 - w0 == min(tile, length)
        assert w0 <= max(start - halo, 0) and w1 >= min(end + halo, length)  # halo inside the window


@given(st.integers(1, 400), st.integers(1, 400), st.integers(8, 128).flatmap(
    lambda tile: st.tuples(st.just(tile), st.integers(0, (tile - 1) // 2))), st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tiles_cover_the_plane_and_the_chosen_tile_holds_a_point_with_margin(height, width, tile_halo, data):
    tile_size, halo = tile_halo
    grid = TileGrid((height, width), tile_size, halo)
    cores = np.zeros((height, width), np.int32)
    covered = np.zeros((height, width), bool)
    for tile in grid:
        r0, c0, r1, c1 = tile.core
        cores[r0:r1, c0:c1] += 1
        covered[tile.slices()] = True
        assert tile.window[0] >= 0 and tile.window[1] >= 0
        assert tile.window[2] <= height and tile.window[3] <= width
    assert (cores == 1).all() and covered.all()

    row = data.draw(st.floats(-0.5, height - 0.5))
    col = data.draw(st.floats(-0.5, width - 0.5))
    chosen = grid.choose((row, col, row, col))
    assert chosen is not None
    assert grid.margin(chosen, (row, col, row, col)) >= halo - 0.5  # pixel centres round by <= 0.5
    # an object reaching `halo` pixels around the point is inside the tile (or cut by the plane only)
    r0, c0, r1, c1 = chosen.window
    assert r0 <= max(math.floor(row + 0.5) - halo, 0) and r1 >= min(math.floor(row + 0.5) + halo + 1, height)
    assert c0 <= max(math.floor(col + 0.5) - halo, 0) and c1 >= min(math.floor(col + 0.5) + halo + 1, width)


@given(st.integers(130, 400), st.integers(130, 400), st.data())
@settings(max_examples=100, deadline=None)
def test_a_box_within_twice_the_halo_gets_one_tile_else_the_overlapping_cores(height, width, data):
    grid = TileGrid((height, width), 64, 8)
    r0 = data.draw(st.integers(0, height - 1))
    c0 = data.draw(st.integers(0, width - 1))
    r1 = data.draw(st.integers(r0, min(height - 1, r0 + 150)))
    c1 = data.draw(st.integers(c0, min(width - 1, c0 + 150)))
    box = (r0, c0, r1, c1)
    chosen = grid.choose(box)
    if chosen is not None:
        w = chosen.window
        assert w[0] <= r0 and r1 < w[2] and w[1] <= c0 and c1 < w[3]
    else:
        # window starts are at most a core (+1) apart: boxes up to 2 * halo always fit
        assert max(r1 - r0, c1 - c0) >= 2 * 8 - 1
        tiles = grid.overlapping(box)
        union = np.zeros((height, width), bool)
        for tile in tiles:
            union[tile.core[0]:tile.core[2], tile.core[1]:tile.core[3]] = True
        assert union[r0:r1 + 1, c0:c1 + 1].all()


def test_invalid_tile_geometry_is_refused(model):
    with pytest.raises(ValueError, match="tile_size - 2 \\* halo"):
        TileGrid((100, 100), 64, 32)
    with pytest.raises(ValueError, match="tile_size - 2 \\* halo"):
        TiledPredictor(Predictor(model), tile_size=64, halo=40)


# ---- a deterministic stand-in for the model ----------------------------------------------


class ThresholdPredictor(Predictor):
    """Segments exactly the bright connected component under the prompt.

    The "embedding" is the thresholded model input itself, at model-input resolution, and
    decoding picks the components under the positive points (or inside the box, clipped to
    it). With tiles of the model's input size there is no resizing, so a correct tiling gives
    the object's exact pixels, and an object cut by a tile edge comes out cut.
    """

    def compute_embedding(self, image):
        rgb = to_rgb_uint8(image, self.normalization)
        resized = transforms.resize_rgb(rgb, self.model.image_size)
        size = self.model.image_size
        padded = np.zeros((size, size), np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = np.where(resized[..., 0] > 127, 10.0, -10.0)
        return Embedding(torch.from_numpy(padded)[None, None], tuple(rgb.shape[:2]), tuple(resized.shape[:2]),
                         size, "threshold")

    def _decode(self, embedding, prompts, multimask):
        foreground = embedding.features[0, 0].numpy() > 0
        components, _ = ndimage.label(foreground)
        keep = np.zeros_like(foreground)
        if prompts.points is not None:
            xy = transforms.points_rc_to_model_xy(prompts.points, embedding.original_size, embedding.image_size)
            for (x, y), label in zip(xy, prompts.point_labels):
                found = components[min(int(y), foreground.shape[0] - 1), min(int(x), foreground.shape[1] - 1)]
                if label == 1 and found:
                    keep |= components == found
        if prompts.box is not None:
            x0, y0, x1, y1 = transforms.boxes_rc_to_model_xyxy(prompts.box, embedding.original_size,
                                                                embedding.image_size)
            inside = np.zeros_like(foreground)
            inside[math.ceil(y0): math.floor(y1) + 1, math.ceil(x0): math.floor(x1) + 1] = True
            keep |= np.isin(components, np.unique(components[inside & foreground])) & inside & foreground
        count = 3 if multimask else 1
        logits = torch.from_numpy(np.where(keep, 10.0, -10.0).astype(np.float32))[None, None].repeat(1, count, 1, 1)
        scores = torch.linspace(0.9, 0.7, count)[None]
        return logits, scores


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def threshold_predictor(model):
    return ThresholdPredictor(model)


def test_object_straddling_a_core_border_comes_out_whole(threshold_predictor):
    shape = (300, 420)
    tiled = TiledPredictor(threshold_predictor, tile_size=128, halo=32)
    grid = TileGrid(shape, 128, 32)
    border = grid.tile(1, 1).core[0]  # a row where two cores meet
    obj = disc(shape, (border, 200), 20)
    tiled.set_plane(np.where(obj, 200, 20).astype(np.uint8))
    for click in [(border - 15, 200), (border + 12, 195), (border, 200)]:
        candidates = tiled.predict(points=[click])
        np.testing.assert_array_equal(candidates.best, obj)
    assert tiled.store.encoder_calls <= 3


@given(st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_click_inside_an_object_within_the_halo_gives_the_whole_object(threshold_predictor, data):
    shape = (260, 330)
    radius = data.draw(st.integers(3, 15))
    centre = (data.draw(st.integers(radius, shape[0] - radius - 1)),
              data.draw(st.integers(radius, shape[1] - radius - 1)))
    obj = disc(shape, centre, radius)
    rows, cols = np.nonzero(obj)
    pick = data.draw(st.integers(0, len(rows) - 1))
    tiled = TiledPredictor(threshold_predictor, tile_size=128, halo=2 * radius)
    tiled.set_plane(np.where(obj, 220, 10).astype(np.uint8))
    np.testing.assert_array_equal(tiled.predict(points=[(rows[pick], cols[pick])]).best, obj)


def test_box_larger_than_a_tile_is_stitched_from_several_tiles_without_seams(threshold_predictor):
    shape = (600, 600)
    rows, cols = np.ogrid[:600, :600]
    obj = ((rows - 200) / 150.0) ** 2 + ((cols - 190) / 110.0) ** 2 <= 1  # 300 x 220 ellipse
    other = disc(shape, (30, 380), 10) | disc(shape, (500, 500), 30)  # outside the box: must stay out
    tiled = TiledPredictor(threshold_predictor, tile_size=128, halo=16)
    tiled.set_plane(np.where(obj | other, 200, 30).astype(np.uint16))
    box = (45, 75, 355, 305)
    candidates = tiled.predict(box=box)
    assert len(candidates) == 1
    np.testing.assert_array_equal(candidates.best, obj)
    used = tiled.tiles_for(box=box)
    assert len(used) > 1 and tiled.store.encoder_calls == len(used) < len(tiled.grid)


def test_only_the_tiles_a_prompt_needs_are_embedded(model):
    predictor = Predictor(model)
    tiled = TiledPredictor(predictor, tile_size=128, halo=16)
    plane = np.random.default_rng(0).integers(0, 1000, (1000, 900)).astype(np.uint16)
    tiled.set_plane(plane)
    assert tiled.store.encoder_calls == 0
    candidates = tiled.predict(points=[(510, 433)])
    assert tiled.store.encoder_calls == 1
    assert candidates.masks.shape == (3, 1000, 900) and candidates.logits.shape == (3, *model.low_res_size)
    r0, c0, r1, c1 = candidates.frame.window
    outside = candidates.masks.copy()
    outside[:, r0:r1, c0:c1] = False
    assert not outside.any()
    again = tiled.predict(points=[(515, 440)])  # same tile: cached
    assert tiled.store.encoder_calls == 1 and again.frame == candidates.frame
    assert tiled.cached(again.frame) and not tiled.cached(tiled.grid.tile(0, 0))


def test_a_click_on_a_lazy_plane_reads_only_the_tile_it_needs(model):
    import dask.array as da

    shape, chunk = (1000, 900), 50
    grid = TileGrid(shape, 128, 16)
    click = (510, 433)
    w = grid.choose(click + click).window
    rng = np.random.default_rng(0)
    reads = []

    def block(block_id=None):
        r, c = block_id[0] * chunk, block_id[1] * chunk
        if not (r + chunk > w[0] and r < w[2] and c + chunk > w[1] and c < w[3]):
            raise AssertionError(f"chunk at {(r, c)} is outside the tile {w}")
        reads.append(block_id)
        return rng.integers(0, 1000, (chunk, chunk)).astype(np.uint16)

    lazy = da.map_blocks(block, chunks=((chunk,) * 20, (chunk,) * 18), dtype=np.uint16)
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(lazy)
    assert not reads
    candidates = tiled.predict(points=[click])
    assert candidates.masks.shape == (3, *shape) and tiled.store.encoder_calls == 1
    assert 0 < len(reads) <= 16
    read_before = len(reads)
    tiled.predict(points=[(click[0] + 3, click[1] - 2)])  # same tile, known key: no pixel read
    assert len(reads) == read_before


def test_refining_with_mask_input_reuses_the_tile_of_the_logits(model):
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(np.random.default_rng(1).random((500, 500)).astype(np.float32))
    first = tiled.predict(points=[(250, 250)])
    tile = first.frame
    assert tile in tiled.grid.tiles
    refined = tiled.predict(points=[(250, 250), (260, 255)], point_labels=[1, 0], mask_input=first.mask_prompt(0))
    assert refined.frame == tile and len(refined) == 1
    alone = tiled.predict(mask_input=refined.mask_prompt(0))
    assert alone.masks.shape == (1, 500, 500) and alone.frame == tile
    with pytest.raises(ValueError, match="mask_prompt"):
        tiled.predict(mask_input=refined.logits[0])  # an array alone says nothing of its tile


def test_small_planes_behave_exactly_like_predictor(model):
    plane = np.random.default_rng(2).integers(0, 255, (100, 120)).astype(np.uint8)
    reference = Predictor(model)
    reference.set_image(plane)
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(plane)
    for prompt in [dict(points=[(40, 50)]), dict(box=(10, 20, 80, 90)),
                   dict(points=[(40, 50), (60, 70)], point_labels=[1, 0], multimask=True)]:
        expected, got = reference.predict(**prompt), tiled.predict(**prompt)
        np.testing.assert_array_equal(got.masks, expected.masks)
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.logits, expected.logits)
    assert len(tiled.grid) == 1


def test_tiled_embeddings_are_cached_on_disk_with_their_geometry(model, tmp_path):
    plane = np.random.default_rng(3).integers(0, 1000, (300, 300)).astype(np.uint16)
    predictor = Predictor(model)
    tiled = TiledPredictor(predictor, EmbeddingStore(model, cache_dir=tmp_path), tile_size=128, halo=16)
    tiled.set_plane(plane)
    assert tiled.precompute() == len(tiled.grid)
    assert len(list(Path(tmp_path).rglob("*.pt"))) == len(tiled.grid)
    fresh = TiledPredictor(predictor, EmbeddingStore(model, cache_dir=tmp_path), tile_size=128, halo=16)
    fresh.set_plane(plane)
    fresh.predict(points=[(150, 150)])
    fresh.predict(box=(10, 10, 290, 290))
    assert fresh.store.encoder_calls == 0
    other = TiledPredictor(predictor, EmbeddingStore(model, cache_dir=tmp_path), tile_size=128, halo=24)
    other.set_plane(plane)
    other.predict(points=[(150, 150)])  # other windows: their own entries
    assert other.store.encoder_calls == 1


from tiny import DEFAULT_WEIGHTS


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="the bundled default model is not built yet")
def test_default_model_segments_a_cell_across_a_tile_border_as_one_mask():
    from napari_sam.checkpoints import load_model

    predictor = Predictor(load_model("default", device="cpu"))
    size = predictor.model.image_size
    shape = (int(size * 2.2), int(size * 1.5))
    grid = TileGrid(shape, size, size // 8)
    border = grid.tile(1, 0).core[0]
    rng = np.random.default_rng(0)
    obj = disc(shape, (border, shape[1] // 2), size // 12)
    plane = (rng.normal(40, 5, shape) + 120 * obj).astype(np.float32)
    tiled = TiledPredictor(predictor)
    tiled.set_plane(plane)
    mask = tiled.predict(points=[(border - size // 24, shape[1] // 2)]).best
    labels, count = ndimage.label(mask)
    assert count >= 1
    biggest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    iou = (biggest & obj).sum() / (biggest | obj).sum()
    assert iou > 0.75  # measured 0.84 with the bundled default model
    assert biggest[border - 5: border + 5].any()  # crosses the core border


# ---- text prompts and batched boxes over tiles --------------------------------------------


class TextThresholdPredictor(ThresholdPredictor):
    """The threshold stand-in with a text path: text alone is every bright object; with a
    point or box, the text changes nothing. Records the texts it was asked."""

    def __init__(self, model):
        super().__init__(model)
        self.texts = []

    def _decode(self, embedding, prompts, multimask):
        self.texts.append(prompts.text)
        if prompts.text is None or prompts.points is not None or prompts.box is not None:
            return super()._decode(embedding, prompts, multimask)
        foreground = embedding.features[0, 0].numpy() > 0
        count = 3 if multimask else 1
        logits = torch.from_numpy(np.where(foreground, 10.0, -10.0).astype(np.float32))[None, None]
        return logits.repeat(1, count, 1, 1), torch.linspace(0.9, 0.7, count)[None]

    def predict_boxes(self, boxes):  # the real one calls the model's batched decoder directly
        if len(boxes) and isinstance(boxes[0], Prompts):  # validated already (TiledPredictor)
            return [self.predict(prompts=prompts) for prompts in boxes]
        return [self.predict(box=box) for box in np.asarray(boxes).reshape(-1, 4)]


def test_text_alone_on_a_tiled_plane_is_every_object_whole_across_core_borders(model):
    shape = (300, 420)
    grid = TileGrid(shape, 128, 32)
    row_border, col_border = grid.tile(1, 1).core[0], grid.tile(1, 1).core[1]
    objects = (disc(shape, (row_border, 200), 20) | disc(shape, (150, col_border), 18)
               | disc(shape, (row_border, col_border), 12) | disc(shape, (30, 30), 10) | disc(shape, (280, 400), 9))
    tiled = TiledPredictor(TextThresholdPredictor(model), tile_size=128, halo=32)
    tiled.set_plane(np.where(objects, 200, 20).astype(np.uint8))
    steps = []
    candidates = tiled.predict(text="Nucleus ", progress=lambda done, total: steps.append((done, total)))
    assert len(candidates) == 1 and candidates.masks.shape == (1, *shape)
    np.testing.assert_array_equal(candidates.best, objects)
    assert tiled.store.encoder_calls == len(tiled.grid) > 1  # the whole plane, each tile once
    assert steps[0] == (0, len(tiled.grid)) and steps[-1] == (len(tiled.grid), len(tiled.grid))
    assert set(tiled.predictor.texts) == {"nucleus"}
    assert candidates.frame in tiled.grid.tiles and len(candidates.logits) == 1  # the centre tile's
    assert tiled.tiles_for(text="nucleus") == list(tiled.grid)
    several = tiled.predict(text="nucleus", multimask=True)
    assert several.masks.shape == (3, *shape) and np.all(np.diff(several.scores) <= 0)
    assert tiled.store.encoder_calls == len(tiled.grid)  # cached


def test_text_with_a_point_is_passed_to_the_one_tile_the_point_chooses(model):
    shape = (300, 420)
    obj, other = disc(shape, (100, 100), 15), disc(shape, (250, 350), 15)
    tiled = TiledPredictor(TextThresholdPredictor(model), tile_size=128, halo=32)
    tiled.set_plane(np.where(obj | other, 200, 20).astype(np.uint8))
    candidates = tiled.predict(points=[(100, 100)], text="nucleus")
    np.testing.assert_array_equal(candidates.best, obj)
    assert tiled.predictor.texts == ["nucleus"] and tiled.store.encoder_calls == 1
    with pytest.warns(UserWarning, match="empty text"):
        tiled.predict(points=[(100, 100)], text="  ")


def test_text_alone_with_a_text_model_keeps_each_tiles_own_mask_on_its_core():
    from napari_sam.inference.text import TEXT_DIM

    torch.manual_seed(0)
    predictor = Predictor(build_sam({**TINY, "text_dim": TEXT_DIM}))
    plane = np.random.default_rng(4).integers(0, 255, (200, 260)).astype(np.uint8)
    tiled = TiledPredictor(predictor, tile_size=128, halo=16)
    tiled.set_plane(plane)
    merged = tiled.predict(text="nucleus")
    assert merged.masks.shape == (1, 200, 260) and len(tiled.grid) > 1
    for tile in tiled.grid:
        predictor.set_image(plane[tile.slices()])
        own = predictor.predict(text="nucleus").best
        r0, c0, r1, c1 = tile.core
        w0, v0 = tile.offset
        np.testing.assert_array_equal(merged.best[r0:r1, c0:c1], own[r0 - w0 : r1 - w0, c0 - v0 : c1 - v0])
    small = TiledPredictor(predictor, tile_size=128, halo=16)
    small.set_plane(plane[:100, :120])
    predictor.set_image(plane[:100, :120])
    np.testing.assert_array_equal(small.predict(text="nucleus").masks, predictor.predict(text="nucleus").masks)


def test_predict_boxes_batches_boxes_per_tile_and_stitches_larger_ones(model, monkeypatch):
    shape = (600, 600)
    rows, cols = np.ogrid[:600, :600]
    large = ((rows - 200) / 150.0) ** 2 + ((cols - 190) / 110.0) ** 2 <= 1  # larger than a tile
    small = [disc(shape, (40, 420), 12), disc(shape, (70, 450), 10), disc(shape, (520, 80), 14)]
    plane = np.where(large | small[0] | small[1] | small[2], 200, 30).astype(np.uint8)
    stand_in = TextThresholdPredictor(model)
    tiled = TiledPredictor(stand_in, tile_size=128, halo=16)
    tiled.set_plane(plane)
    batches = []
    original = stand_in.predict_boxes
    monkeypatch.setattr(stand_in, "predict_boxes", lambda boxes: batches.append(len(boxes)) or original(boxes))

    def around(mask, pad=3):
        r, c = np.nonzero(mask)
        return (r.min() - pad, c.min() - pad, r.max() + pad, c.max() + pad)

    boxes = [around(small[2]), (45, 75, 355, 305), around(small[0]), around(small[1])]
    results = tiled.predict_boxes(boxes)
    assert len(results) == 4 and all(r.masks.shape == (1, *shape) for r in results)
    for result, expected in zip(results, [small[2], large, small[0], small[1]]):
        np.testing.assert_array_equal(result.best, expected)
    assert sorted(batches) == [1, 2]  # the two neighbours share one tile and one batch
    assert tiled.predict_boxes(np.zeros((0, 4))) == []
    with pytest.raises(ValueError, match="outside"):
        tiled.predict_boxes([(10, 10, 20, 20), (10, 10, 20, 900)])


def test_predict_boxes_on_a_small_plane_is_exactly_predictor(model):
    plane = np.random.default_rng(5).integers(0, 255, (100, 120)).astype(np.uint8)
    reference = Predictor(model)
    reference.set_image(plane)
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(plane)
    boxes = [(10, 20, 80, 90), (5, 5, 30, 40)]
    for got, expected in zip(tiled.predict_boxes(boxes), reference.predict_boxes(boxes)):
        np.testing.assert_array_equal(got.masks, expected.masks)
        np.testing.assert_array_equal(got.scores, expected.scores)


# ---- one prompt path: validated once, tiles convert prompts and candidates -------------


@given(st.integers(130, 400), st.integers(130, 400), st.data())
@settings(max_examples=100, deadline=None)
def test_to_local_keeps_the_tiles_points_and_clips_the_box_and_to_plane_brings_them_back(height, width, data):
    grid = TileGrid((height, width), 64, 8)
    coord = st.tuples(st.floats(-0.5, height - 0.5), st.floats(-0.5, width - 0.5))
    points = np.array(data.draw(st.lists(coord, min_size=1, max_size=6)))
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=len(points), max_size=len(points))))
    (r0, c0), (r1, c1) = sorted(data.draw(st.tuples(coord, coord)))
    r0, r1 = min(r0, r1), max(r0, r1)
    c0, c1 = min(c0, c1), max(c0, c1)
    prompts = Prompts.build((height, width), (16, 16), points, labels, (r0, c0, r1, c1))
    tile = data.draw(st.sampled_from(grid.tiles))
    local = tile.to_local(prompts)
    assert local.shape == tile.shape and local.text is None and local.mask_input is None
    on_tile = transforms.inside_plane_rc(points - tile.offset, tile.shape)
    if on_tile.any():
        np.testing.assert_allclose(transforms.window_to_plane_rc(local.points, tile.window), points[on_tile])
        np.testing.assert_array_equal(local.point_labels, labels[on_tile])
        assert transforms.inside_plane_rc(local.points, tile.shape).all()
    else:
        assert local.points is None
    if local.box is not None:  # clipped: the part of the box on the tile
        expected = np.clip(np.array([r0, c0, r1, c1]) - tile.offset * 2, -0.5,
                           [tile.shape[0] - 0.5, tile.shape[1] - 0.5] * 2)
        np.testing.assert_allclose(local.box, expected)
    chosen = grid.choose((r0, c0, r1, c1))
    if chosen is not None:  # a tile that holds the box keeps it as it is
        np.testing.assert_allclose(transforms.window_to_plane_rc(chosen.to_local(prompts).box, chosen.window),
                                   [r0, c0, r1, c1])
    masks = np.random.default_rng(0).random((2, *tile.shape)) > 0.5
    result = Candidates(masks=masks, scores=np.array([0.9, 0.8]), logits=np.zeros((2, 16, 16), np.float32))
    on_plane = tile.to_plane(result)
    assert on_plane.frame == tile and on_plane.masks.shape == (2, height, width)
    np.testing.assert_array_equal(on_plane.masks[(slice(None),) + tile.slices()], masks)
    assert on_plane.masks.sum() == masks.sum()
    assert on_plane.logits is result.logits and on_plane.scores is result.scores


@pytest.fixture()
def count_validations(monkeypatch):
    """How many times ``Prompts.build`` (the one validation) ran."""
    calls = []
    build = Prompts.build.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(Prompts, "build", classmethod(counting))
    return calls


def test_prompts_are_validated_once_per_prediction_whatever_the_tiles(model, count_validations):
    shape = (300, 420)
    plane = np.where(disc(shape, (150, 200), 20), 200, 20).astype(np.uint8)
    tiled = TiledPredictor(TextThresholdPredictor(model), tile_size=128, halo=32)
    tiled.set_plane(plane)
    for prompt in [dict(points=[(150, 200)]),                          # one tile
                   dict(box=(10, 10, 290, 400)),                       # blended over several
                   dict(points=[(150, 200), (20, 20)], point_labels=[1, 0]),
                   dict(text="nucleus")]:                              # every tile
        count_validations.clear()
        tiled.predict(**prompt)
        assert len(count_validations) == 1, prompt
    count_validations.clear()
    ready = tiled.prompts(points=[(150, 200)])
    first = tiled.predict(prompts=ready)
    tiled.predict(prompts=ready, multimask=False)
    tiled.tiles_for(prompts=ready)
    assert len(count_validations) == 1  # only tiled.prompts(...) validated
    count_validations.clear()
    # (the stand-in's logits are model-input sized; a low-res mask prompt in the same tile)
    mask = MaskPrompt(np.zeros((1, *model.low_res_size), np.float32), first.frame)
    tiled.predict(points=[(150, 200), (160, 190)], mask_input=mask)
    assert len(count_validations) == 1
    count_validations.clear()
    tiled.predict_boxes([(130, 180, 170, 220), (10, 10, 290, 400), (20, 300, 60, 340)])
    assert len(count_validations) == 3  # once per box
    small = TiledPredictor(TextThresholdPredictor(model), tile_size=128, halo=32)
    small.set_plane(plane[:100, :120])
    count_validations.clear()
    small.predict(points=[(50, 60)])
    assert len(count_validations) == 1


def test_ready_prompts_must_be_of_the_current_plane_and_come_alone(model):
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(np.zeros((300, 300), np.uint8))
    ready = tiled.prompts(points=[(10, 10)])
    with pytest.raises(ValueError, match="not both"):
        tiled.predict(points=[(10, 10)], prompts=ready)
    tiled.set_plane(np.zeros((200, 300), np.uint8))
    with pytest.raises(ValueError, match="plane"):
        tiled.predict(prompts=ready)
    predictor = Predictor(model)
    predictor.set_image(np.zeros((90, 100), np.uint8))
    with pytest.raises(ValueError, match="90x100"):
        predictor.predict(prompts=ready)


def test_a_mask_prompt_from_another_tile_is_shifted_into_the_tile_the_new_prompt_needs(model, monkeypatch):
    predictor = Predictor(model)
    tiled = TiledPredictor(predictor, tile_size=128, halo=16)
    tiled.set_plane(np.random.default_rng(6).random((500, 500)).astype(np.float32))
    first = tiled.predict(points=[(60, 60)])
    received = []
    original = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda **kw: received.append(kw["prompts"]) or original(**kw))
    far = tiled.predict(points=[(400, 420)], mask_input=first.mask_prompt(2))
    assert far.frame != first.frame and far.frame == tiled.grid.choose((400, 420, 400, 420))
    # The logits of the first tile, moved by the offset between the tiles (in low-res pixels).
    scale = first.frame.shape[0] / model.low_res_size[0]
    shift = np.subtract(first.frame.offset, far.frame.offset) / scale
    expected = ndimage.shift(first.logits[2], shift, order=1, mode="nearest")
    np.testing.assert_allclose(received[-1].mask_input.logits[0], expected, atol=1e-5)
    assert received[-1].mask_input.frame is None  # the tile is the local plane
    same = tiled.predict(points=[(60, 60), (70, 65)], mask_input=first.mask_prompt(0))
    assert same.frame == first.frame
    np.testing.assert_array_equal(received[-1].mask_input.logits[0], first.logits[0])


def test_a_plain_array_mask_input_on_one_tile_is_exactly_predictor(model):
    plane = np.random.default_rng(7).integers(0, 255, (100, 120)).astype(np.uint8)
    reference = Predictor(model)
    reference.set_image(plane)
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(plane)
    first = reference.predict(points=[(40, 50)])
    assert first.frame is None
    expected = reference.predict(points=[(40, 50), (60, 70)], mask_input=first.logits[1])
    for mask_input in (first.logits[1], first.mask_prompt(1), tiled.predict(points=[(40, 50)]).mask_prompt(1)):
        got = tiled.predict(points=[(40, 50), (60, 70)], mask_input=mask_input)
        np.testing.assert_array_equal(got.masks, expected.masks)
        np.testing.assert_array_equal(got.logits, expected.logits)
        assert got.frame == tiled.grid.tiles[0]
    np.testing.assert_array_equal(
        reference.predict(points=[(40, 50), (60, 70)], mask_input=first.mask_prompt(1)).masks, expected.masks)


def test_an_existing_label_becomes_the_mask_prompt_of_the_tile_the_prompt_uses(model):
    tiled = TiledPredictor(Predictor(model), tile_size=128, halo=16)
    tiled.set_plane(np.zeros((300, 300), np.uint8))
    label = disc((300, 300), (215, 225), 12)
    prompts = tiled.prompts(points=[(215, 225)])
    prompt = tiled.mask_prompt(label, prompts)
    (tile,) = tiled.tiles_for(prompts=prompts)
    assert prompt.frame == tile and prompt.logits.shape == (1, *model.low_res_size)
    expected = transforms.mask_to_low_res_logits(label[tile.slices()], model.image_size, model.low_res_size)
    np.testing.assert_array_equal(prompt.logits[0], expected)
    assert tiled.mask_prompt(np.zeros((300, 300), bool), prompts) is None
    assert tiled.mask_prompt(label, tiled.prompts(box=(5, 5, 295, 295))) is None  # several tiles
