import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from napari_sam.synthetic import (
    KINDS,
    MIN_OBJECT_PIXELS,
    MODALITIES,
    SyntheticImage,
    generate,
    random_training_image,
    sample_nuclei,
)

kinds_strategy = st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True).map(tuple)


def assert_valid(result: SyntheticImage, shape, kinds=KINDS):
    labels = result.labels
    assert labels.shape == tuple(shape)
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    ids = ids[ids > 0]
    # one label per pixel by construction; ids run 1..N and each has a declared kind
    assert ids.tolist() == list(range(1, len(ids) + 1))
    assert sorted(result.classes) == ids.tolist()
    assert set(result.classes.values()) <= set(kinds)
    areas = np.bincount(labels.ravel())[1:]
    assert areas.min(initial=MIN_OBJECT_PIXELS) >= MIN_OBJECT_PIXELS
    # every object is one connected piece
    slices = ndi.find_objects(labels)
    for obj, where in enumerate(slices, start=1):
        assert ndi.label(labels[where] == obj)[1] == 1


@settings(max_examples=25, deadline=None)
@given(
    modality=st.sampled_from(MODALITIES),
    kinds=kinds_strategy,
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(16, 120), st.integers(16, 120)),
    density=st.one_of(st.none(), st.floats(0.01, 0.8)),
)
def test_labels_are_exclusive_sized_connected_and_match_classes(modality, kinds, seed, shape, density):
    result = generate(shape, modality=modality, kinds=kinds, density=density, seed=seed)
    assert_valid(result, shape, kinds)
    assert result.modality == modality


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_training_images_are_valid(seed):
    result = random_training_image(np.random.default_rng(seed), shape=(96, 128))
    assert_valid(result, (96, 128))
    assert result.image.shape[:2] == (96, 128)


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_gives_the_same_image_and_labels(modality):
    a = generate((64, 80), modality=modality, kinds=("nucleus", "small spot"), seed=7)
    b = generate((64, 80), modality=modality, kinds=("nucleus", "small spot"), seed=7)
    c = generate((64, 80), modality=modality, kinds=("nucleus", "small spot"), seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes
    assert not np.array_equal(a.image, c.image)


def test_rng_and_seed_are_interchangeable():
    a = generate((64, 64), seed=3)
    b = generate((64, 64), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("modality", MODALITIES)
def test_image_has_requested_dtype_and_shape(modality, dtype):
    result = generate((48, 72), modality=modality, dtype=dtype, seed=1)
    expected = (48, 72, 3) if modality in ("histology", "ihc") else (48, 72)
    assert result.image.shape == expected
    assert result.image.dtype == dtype


def test_uint16_fluorescence_uses_a_camera_like_sub_range():
    for seed in range(5):
        image = generate((128, 128), dtype=np.uint16, density=0.3, seed=seed).image
        assert 50 <= np.percentile(image, 5) and image.max() < 30000
        assert image.max() - np.percentile(image, 5) > 100


def test_histology_is_rgb_and_nuclei_are_darker_and_bluer_than_tissue():
    result = generate((128, 128), modality="histology", density=0.3, seed=2)
    image = result.image.astype(float)
    assert image.shape == (128, 128, 3)
    inside, outside = image[result.labels > 0], image[result.labels == 0]
    assert inside.mean() < outside.mean()
    # hematoxylin absorbs red more than blue
    assert (inside[:, 2] - inside[:, 0]).mean() > 0


def aspect_ratios(labels, ids):
    ratios = []
    for obj in ids:
        rr, cc = np.nonzero(labels == obj)
        if len(rr) < 30:
            continue
        eig = np.linalg.eigvalsh(np.cov(np.stack([rr, cc])))
        ratios.append(np.sqrt(eig[1] / max(eig[0], 1e-6)))
    return np.array(ratios)


def test_elongated_cells_are_more_elongated_than_nuclei():
    result = generate((256, 256), kinds=("nucleus", "elongated cell"), density=0.3, seed=4)
    by_kind = {kind: [i for i, k in result.classes.items() if k == kind] for kind in ("nucleus", "elongated cell")}
    nuclei = aspect_ratios(result.labels, by_kind["nucleus"])
    rods = aspect_ratios(result.labels, by_kind["elongated cell"])
    assert len(nuclei) >= 5 and len(rods) >= 5
    assert rods.mean() > 1.5 * nuclei.mean()


@pytest.mark.parametrize("kind", KINDS)
def test_fluorescence_objects_are_brighter_than_background(kind):
    for seed in range(3):
        result = generate((128, 128), kinds=(kind,), density=0.2, seed=seed)
        image = result.image.astype(float)
        assert image[result.labels > 0].mean() > image[result.labels == 0].mean() + 5


def test_crowded_nuclei_touch():
    # some seed among a few draws a crowded style where nuclei share boundaries
    touching = 0
    for seed in range(4):
        labels = generate((128, 128), density=0.6, seed=seed).labels
        a, b = labels[:, :-1], labels[:, 1:]
        touching += np.count_nonzero((a > 0) & (b > 0) & (a != b))
    assert touching > 0


def test_mixed_kinds_are_all_drawn():
    result = generate((256, 256), kinds=("cell", "small spot"), density=0.5, seed=0)
    assert set(result.classes.values()) == {"cell", "small spot"}


def test_size_range_sets_object_size():
    for low, high in [(8, 10), (30, 36)]:
        result = generate((256, 256), size_range=(low, high), density=0.2, seed=0)
        areas = np.bincount(result.labels.ravel())[1:]
        interior = np.median(areas)
        assert np.pi / 4 * (0.6 * low) ** 2 < interior < np.pi / 4 * (1.4 * high) ** 2


def test_sample_nuclei_is_a_small_fluorescence_image():
    result = sample_nuclei()
    assert result.image.shape == (256, 256) and result.image.dtype == np.uint8
    assert result.modality == "fluorescence"
    assert 10 <= len(result.classes) <= 25
    assert set(result.classes.values()) == {"nucleus"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modality": "confocal"}, "modality"),
        ({"kinds": ("mitochondrion",)}, "kinds"),
        ({"kinds": ()}, "kinds"),
        ({"dtype": np.float32}, "dtype"),
        ({"density": 0.0}, "density"),
        ({"size_range": (10, 5)}, "size_range"),
        ({"shape": (8, 64)}, "shape"),
        ({"seed": 1, "rng": np.random.default_rng(1)}, "seed or rng"),
    ],
)
def test_bad_arguments_say_which_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)
