"""Predictor, Prompts, Embedding and the normaliser on a tiny random model.

Quality does not matter here (random weights): these tests pin the contract — shapes,
ranking, validation errors, dtype handling, save/load.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam import Candidates, Embedding, Predictor
from napari_sam.imaging import Normalization, to_rgb_uint8
from napari_sam.model import build_sam
from napari_sam.inference import transforms
from tiny import TINY



@pytest.fixture(scope="module")
def predictor() -> Predictor:
    # The single-embedding contract (a 90x150 plane would be tiled for the 128-px model;
    # tiles are pinned in test_api_paths.py and test_tiling.py).
    torch.manual_seed(0)
    return Predictor(build_sam(TINY), mode="whole")


@pytest.fixture(scope="module")
def plane() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(90, 150)).astype(np.uint16)


@pytest.fixture()
def ready(predictor, plane) -> Predictor:
    predictor.set_image(plane)
    return predictor


# --- set_image / normalisation ---------------------------------------------------------


def test_uint8_rgb_reaches_the_model_unchanged():
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)


def test_rgba_drops_alpha_and_grayscale_is_replicated():
    rgba = np.random.default_rng(2).integers(0, 256, size=(8, 9, 4), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgba), rgba[..., :3])
    gray = rgba[..., 0]
    out = to_rgb_uint8(gray)
    assert out.shape == (8, 9, 3) and np.array_equal(out[..., 1], gray)


def test_sixteen_bit_maps_percentiles_to_full_range():
    values = np.linspace(1000, 3000, 10_000).reshape(100, 100).astype(np.uint16)
    out = to_rgb_uint8(values, Normalization(low=1, high=99))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert abs(int(out[50, 50]) - 128) <= 3  # linear in between


def test_float_with_nans_and_constant_images_do_not_crash():
    image = np.full((10, 10), 5.0, np.float32)
    image[0, 0] = np.nan
    assert to_rgb_uint8(image).dtype == np.uint8
    assert to_rgb_uint8(np.full((4, 4), np.nan)).max() == 0


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4, 5)), np.zeros((5, 5, 2)), np.zeros((0, 4))])
def test_set_image_rejects_non_planes(predictor, bad):
    with pytest.raises(ValueError, match="image"):
        predictor.set_image(bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_any_dtype_embeds(predictor, dtype):
    image = (np.random.default_rng(3).random((40, 70)) * 100).astype(dtype)
    embedding = predictor.set_image(image)
    assert embedding.original_size == (40, 70)
    assert embedding.input_size == transforms.resized_shape((40, 70), 128)
    assert embedding.features.shape == (1, 64, 16, 16)


# --- predict ----------------------------------------------------------------------------


def test_predict_before_set_image_says_what_to_do():
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(build_sam(TINY)).predict(points=[(1, 1)])


def test_one_point_gives_three_ranked_candidates(ready, plane):
    candidates = ready.predict(points=[(40, 70)])
    assert isinstance(candidates, Candidates) and len(candidates) == 3
    assert candidates.masks.shape == (3, *plane.shape) and candidates.masks.dtype == bool
    assert candidates.logits.shape == (3, 64, 64)
    assert np.all(np.diff(candidates.scores) <= 0)
    assert np.array_equal(candidates.best, candidates.masks[0])


@pytest.mark.parametrize(
    "prompt",
    [
        {"points": [(10, 10), (50, 60)], "point_labels": [1, 0]},
        {"box": (10, 20, 60, 90)},
        {"box": (10, 20, 60, 90), "points": [(30, 40)]},
    ],
)
def test_other_prompts_give_one_candidate_by_default(ready, prompt):
    assert len(ready.predict(**prompt)) == 1


def test_multimask_can_be_forced(ready):
    assert len(ready.predict(box=(10, 20, 60, 90), multimask=True)) == 3
    assert len(ready.predict(points=[(30, 40)], multimask=False)) == 1


def test_refinement_with_mask_input(ready):
    first = ready.predict(points=[(40, 70)])
    refined = ready.predict(points=[(40, 70), (45, 80)], mask_input=first.logits[0])
    assert len(refined) == 1
    alone = ready.predict(mask_input=first.logits[0])
    assert alone.masks.shape[1:] == first.masks.shape[1:]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "no prompt"),
        ({"points": [(200, 10)]}, "outside"),
        ({"points": [(-3, 10)]}, "outside"),
        ({"points": [(1, 2, 3)]}, r"\(N, 2\)"),
        ({"points": [(1, 2)], "point_labels": [2]}, "1 \\(positive\\) or 0"),
        ({"points": [(1, 2)], "point_labels": [1, 1]}, "2 entries for 1 points"),
        ({"point_labels": [1]}, "without points"),
        ({"points": [(np.nan, 2)]}, "NaN"),
        ({"box": (10, 10, 5, 20)}, "r1 < r0"),
        ({"box": (10, 10, 20)}, r"shape \(4,\)"),
        ({"box": (0, 0, 95, 10)}, "outside"),
        ({"mask_input": np.zeros((32, 32))}, r"\(64, 64\)"),
        ({"points": [(1, 2)], "text": "nucleus"}, "no text path"),
    ],
)
def test_bad_prompts_raise_clear_errors(ready, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ready.predict(**kwargs)


def test_empty_text_is_ignored_with_a_warning(ready):
    with pytest.warns(UserWarning, match="empty text"):
        candidates = ready.predict(points=[(40, 70)], text="   ")
    assert len(candidates) == 3


def test_edge_pixels_are_inside(ready, plane):
    height, width = plane.shape
    ready.predict(points=[(0, 0), (height - 1, width - 1), (-0.5, width - 0.5)])


def test_predict_boxes_segments_one_object_per_box(ready, plane):
    results = ready.predict_boxes([(5, 5, 30, 40), (40, 60, 80, 140)])
    assert len(results) == 2
    assert all(len(r) == 1 and r.masks.shape[1:] == plane.shape for r in results)


def test_predict_boxes_checks_every_box(ready):
    with pytest.raises(ValueError, match="outside"):
        ready.predict_boxes([(5, 5, 30, 40), (40, 60, 80, 400)])


# --- Embedding ---------------------------------------------------------------------------


def test_embedding_round_trips_through_a_file(ready, tmp_path):
    embedding = ready.embedding
    path = tmp_path / "plane.pt"
    embedding.save(path)
    loaded = Embedding.load(path)
    assert torch.equal(loaded.features, embedding.features.cpu())
    assert (loaded.original_size, loaded.input_size, loaded.image_size, loaded.model_id) == (
        embedding.original_size, embedding.input_size, embedding.image_size, embedding.model_id,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["plane.pt"]  # no temporary left behind


def test_loaded_embedding_gives_the_same_masks(ready, tmp_path):
    before = ready.predict(points=[(40, 70)])
    ready.embedding.save(tmp_path / "e.pt")
    fresh = Predictor(ready.model)
    fresh.set_embedding(Embedding.load(tmp_path / "e.pt"))
    after = fresh.predict(points=[(40, 70)])
    np.testing.assert_array_equal(before.masks, after.masks)


def test_truncated_embedding_file_is_refused(ready, tmp_path):
    path = tmp_path / "e.pt"
    ready.embedding.save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a napari-sam embedding"):
        Embedding.load(path)


def test_embedding_for_another_input_size_is_refused(ready):
    other = Embedding(ready.embedding.features, (10, 10), (10, 10), image_size=1024)
    with pytest.raises(ValueError, match="1024px"):
        ready.set_embedding(other)


def test_embedding_moves_between_devices(ready):
    moved = ready.embedding.to("cpu")
    assert moved.features.device.type == "cpu" and moved.original_size == ready.embedding.original_size


# --- geometry (property tests) ------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=4000)


@given(height=sizes, width=sizes, target=st.sampled_from([128, 256, 1024]))
def test_resized_shape_keeps_the_longest_side_at_target(height, width, target):
    new_h, new_w = transforms.resized_shape((height, width), target)
    assert max(new_h, new_w) == target
    assert 1 <= new_h <= target and 1 <= new_w <= target
    # Each side within rounding of the exact scaled size, floored at one pixel (a
    # 1 x 257 plane keeps a 1-pixel row instead of the reference's empty one).
    scale = target / max(height, width)
    assert abs(new_h - max(1.0, height * scale)) <= 0.5 + 1e-9
    assert abs(new_w - max(1.0, width * scale)) <= 0.5 + 1e-9


@settings(max_examples=200)
@given(
    height=st.integers(2, 3000), width=st.integers(2, 3000), target=st.sampled_from([256, 1024]),
    fr=st.floats(0, 1), fc=st.floats(0, 1),
)
def test_point_mapping_round_trips_and_stays_in_the_model_input(height, width, target, fr, fc):
    point = np.array([fr * (height - 1), fc * (width - 1)])
    xy = transforms.points_rc_to_model_xy(point, (height, width), target)
    new_h, new_w = transforms.resized_shape((height, width), target)
    assert -1e-9 <= xy[0] <= new_w and -1e-9 <= xy[1] <= new_h
    back = transforms.points_model_xy_to_rc(xy, (height, width), target)
    np.testing.assert_allclose(back, point, rtol=1e-9, atol=1e-9)


@given(
    height=st.integers(2, 2000), width=st.integers(2, 2000),
    box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)
def test_box_corners_map_like_points(height, width, box):
    r0, c0, r1, c1 = box[0] * height, box[1] * width, box[2] * height, box[3] * width
    xyxy = transforms.boxes_rc_to_model_xyxy(np.array([r0, c0, r1, c1]), (height, width), 256)
    corners = transforms.points_rc_to_model_xy(np.array([[r0, c0], [r1, c1]]), (height, width), 256)
    np.testing.assert_allclose(xyxy, corners.reshape(4))


def test_upscaled_logits_have_the_plane_shape():
    logits = torch.randn(2, 3, 64, 64)
    out = transforms.upscale_logits(logits, (100, 128), (300, 384), 128)
    assert out.shape == (2, 3, 300, 384)


def test_no_warnings_on_a_normal_call(ready):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ready.predict(points=[(40, 70)])


def test_ready_prompts_are_used_as_they_are_without_a_second_validation(ready, monkeypatch):
    from napari_sam.inference.prompts import Prompts

    shape, low = ready.embedding.original_size, ready.model.low_res_size
    point = Prompts.build(shape, low, points=[(40, 70)])
    boxes = [Prompts.build(shape, low, box=(10, 20, 60, 90)), Prompts.build(shape, low, box=(5, 5, 30, 40))]
    ready.predict(points=[(40, 70)])  # the first decode after set_image may differ in the last bit
    expected = ready.predict(points=[(40, 70)])
    expected_boxes = ready.predict_boxes([(10, 20, 60, 90), (5, 5, 30, 40)])

    def refuse(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(Prompts, "build", classmethod(refuse))
    got = ready.predict(prompts=point)
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_array_equal(got.logits, expected.logits)
    assert got.frame is None
    for got, want in zip(ready.predict_boxes(boxes), expected_boxes):
        np.testing.assert_array_equal(got.masks, want.masks)
    with pytest.raises(ValueError, match="not both"):
        ready.predict(points=[(40, 70)], prompts=point)
