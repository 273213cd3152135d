"""One quality through every path: the Python API, the annotate session (the napari widget's
loop) and ``napari-sam segment`` give the same masks on a real plane larger than the model input.

The plane is a 300x300 crop of a real BBBC007 fluorescence image (tests/data/README.md), the
model the bundled default one; point, box, several boxes, text alone, text with a point and
refinement are compared pixel for pixel. ``mode="whole"`` (the plane resized to the model
input) is used only when asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_sam import Predictor, load_model
from napari_sam.annotate import AnnotationSession, PromptSet
from napari_sam.cli import main as cli_main
from napari_sam.inference.tiling import TiledPredictor

DATA = Path(__file__).resolve().parents[1] / "data"
IMAGE = DATA / "bbbc007_crop_image.tif"


@pytest.fixture(scope="module")
def model():
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def plane() -> np.ndarray:
    return tifffile.imread(IMAGE)


@pytest.fixture(scope="module")
def nuclei(plane) -> list[tuple[tuple[int, int], tuple[int, int, int, int]]]:
    """(interior point, box) of four labelled nuclei spread over the crop (several tiles)."""
    labels = tifffile.imread(DATA / "bbbc007_crop_labels.tif")
    found = []
    for label in (3, 15, 30, 45):
        mask = labels == np.unique(labels[labels > 0])[label]
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        found.append((np.unravel_index(np.argmax(distance), mask.shape), (rows[0], cols[0], rows[-1], cols[-1])))
    return found


@pytest.fixture(scope="module")
def api(model, plane) -> Predictor:
    predictor = Predictor(model)
    assert predictor.set_image(plane) is None  # tiled: nothing embedded yet
    assert len(predictor.tiled.grid) > 1, "the crop must be larger than the model input (use a larger crop)"
    return predictor


@pytest.fixture(scope="module")
def session(model, plane) -> AnnotationSession:
    session = AnnotationSession(Predictor(model))
    session.set_plane("crop", plane)
    return session


def session_candidates(session: AnnotationSession, prompt_set: PromptSet, *, keep_shown: bool = False):
    if not keep_shown:
        session.clear_result()
    result = session.predict(session.request(prompt_set))
    session.show(result)
    return result.candidates


def assert_same(a, b, *, frame: bool = True) -> None:
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.logits, b.logits)
    if frame:  # the tile the logits belong to
        assert a.frame == b.frame


def run_cli(tmp_path, plane_path, *arguments) -> np.ndarray:
    out = tmp_path / "labels.tif"
    assert cli_main(["segment", str(plane_path), "--out", str(out), "--overwrite", "--quiet", *arguments]) == 0
    return tifffile.imread(out)


def test_a_point_gives_the_sessions_masks_from_a_tile_around_it(api, session, nuclei):
    for point, _ in nuclei:
        ours = api.predict(points=[point])
        (theirs,) = session_candidates(session, PromptSet.make([point]))
        assert_same(ours, theirs)
        assert ours.frame is not None and len(ours) == 3


def test_a_box_gives_the_sessions_masks(api, session, nuclei):
    for _, box in nuclei:
        assert_same(api.predict(box=box), session_candidates(session, PromptSet.make(boxes=[box]))[0])


def test_several_boxes_give_the_sessions_masks(api, session, nuclei):
    boxes = [box for _, box in nuclei]
    for ours, theirs in zip(api.predict_boxes(boxes), session_candidates(session, PromptSet.make(boxes=boxes))):
        assert_same(ours, theirs)


def test_refinement_gives_the_sessions_masks(api, session, nuclei):
    (first_point, box), (second_point, _) = nuclei[0], nuclei[1]
    negative = (box[0] - 3, box[1] - 3)
    session_candidates(session, PromptSet.make([first_point]))
    (theirs,) = session_candidates(session, PromptSet.make([first_point, negative], [1, 0]), keep_shown=True)
    assert session.result.request.refined  # the shown candidate's logits were the mask prompt

    first = api.predict(points=[first_point])
    ours = api.predict(points=[first_point, negative], point_labels=[1, 0], mask_input=first.mask_prompt(0))
    assert_same(ours, theirs)
    # The SAM idiom, the raw logits of the result given back, refines in the same tile.
    raw = api.predict(points=[first_point, negative], point_labels=[1, 0], mask_input=first.logits[0])
    assert_same(raw, theirs)
    # Logits of an earlier result still know their tile after another prediction.
    api.predict(points=[second_point])
    assert_same(api.predict(points=[first_point, negative], point_labels=[1, 0], mask_input=first.logits[0]),
                theirs)


def test_text_alone_gives_the_sessions_and_the_clis_mask(api, session, tmp_path):
    ours = api.predict(text="nucleus")
    (theirs,) = session_candidates(session, PromptSet.make(text="nucleus"))
    assert_same(ours, theirs)
    assert ours.best.mean() > 0.05  # the nuclei of the crop, not an empty mask
    np.testing.assert_array_equal(run_cli(tmp_path, IMAGE, "--text", "nucleus") > 0, ours.best)


def test_text_with_a_point_gives_the_sessions_masks(api, session, nuclei):
    point = nuclei[2][0]
    ours = api.predict(points=[point], text="nucleus")
    assert_same(ours, session_candidates(session, PromptSet.make([point], text="nucleus"))[0])


def test_the_cli_writes_the_apis_best_mask(api, nuclei, tmp_path):
    point, box = nuclei[3]
    labels = run_cli(tmp_path, IMAGE, "--point", f"{point[0]},{point[1]}")
    np.testing.assert_array_equal(labels > 0, api.predict(points=[point]).best)
    labels = run_cli(tmp_path, IMAGE, "--box", ",".join(str(v) for v in box))
    np.testing.assert_array_equal(labels > 0, api.predict(box=box).best)


# ---- whole-plane mode only when asked --------------------------------------------------


def test_whole_plane_mode_only_when_asked(model, plane, api, nuclei):
    point = nuclei[0][0]
    whole = Predictor(model, mode="whole")
    embedding = whole.set_image(plane)
    assert whole.tiled is None and embedding.original_size == plane.shape
    assert embedding.input_size == (model.image_size, model.image_size)  # the plane shrunk to the input
    resized = whole.predict(points=[point])
    assert resized.frame is None
    # The same as one tile over the whole plane, and not what the default path gives.
    one_tile = TiledPredictor(Predictor(model), tile_size=max(plane.shape))
    one_tile.set_plane(plane)
    assert_same(resized, one_tile.predict(points=[point]), frame=False)  # None vs the one whole-plane tile
    assert not np.array_equal(resized.logits, api.predict(points=[point]).logits)


def test_a_plane_that_fits_the_model_input_is_embedded_whole_in_both_modes(model, plane):
    small = plane[:100, :120]
    tiles, whole = Predictor(model), Predictor(model, mode="whole")
    embedding = tiles.set_image(small)
    assert tiles.tiled is None and embedding.original_size == small.shape
    whole.set_image(small)
    assert_same(tiles.predict(points=[(50, 60)]), whole.predict(points=[(50, 60)]))


def test_lists_and_tensors_are_tiled_like_arrays(model, plane, api, nuclei):
    import torch

    point = nuclei[1][0]
    predictor = Predictor(model)
    assert predictor.set_image(plane.tolist()) is None  # int64 pixels: tiled (normalised on percentiles)
    assert predictor.set_image(torch.from_numpy(plane)) is None
    assert_same(predictor.predict(points=[point]), api.predict(points=[point]))


def test_a_precomputed_embedding_is_used_whole(model, plane, api):
    predictor = Predictor(model)
    predictor.set_image(plane)
    predictor.set_embedding(api.compute_embedding(plane))  # the caller's choice: the whole plane
    assert predictor.tiled is None and predictor.predict(points=[(150, 150)]).frame is None


def test_modes_and_tiles_are_checked_when_the_predictor_is_built(model):
    with pytest.raises(ValueError, match="mode must be 'tiles'"):
        Predictor(model, mode="tiled")
    with pytest.raises(ValueError, match="for mode='tiles'"):
        Predictor(model, mode="whole", tile_size=256)
    with pytest.raises(ValueError, match="tile_size - 2 \\* halo"):
        Predictor(model, tile_size=64, halo=40)


def test_the_tiles_come_from_the_store_given(model, plane):
    from napari_sam.inference.embeddings import EmbeddingStore

    store = EmbeddingStore(model)
    predictor = Predictor(model, store=store, tile_size=128, halo=16)
    predictor.set_image(plane)
    predictor.predict(points=[(150, 150)])
    assert store.encoder_calls == 1
    predictor.set_image(plane.copy())  # the same pixels again: from the store
    predictor.predict(points=[(150, 150)])
    assert store.encoder_calls == 1
    with pytest.raises(ValueError, match="another model"):
        Predictor(load_model("default", device="cpu"), store=store)
