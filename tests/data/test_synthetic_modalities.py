"""The generator's phase-contrast, DIC and IHC modalities, whole cells of 5-150 px, low SNR."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure

from napari_sam.synthetic import MIN_OBJECT_PIXELS, generate

NEW_MODALITIES = ("phase contrast", "dic", "ihc")


def assert_exact_labels(result, shape, kinds):
    """Ids 1..N, each with a kind of ``kinds``, one connected piece of >= MIN_OBJECT_PIXELS."""
    labels = result.labels
    assert labels.shape == shape and labels.dtype == np.int32
    ids = np.unique(labels)[1:]
    assert ids.tolist() == list(range(1, len(ids) + 1)) and len(ids) > 0
    assert sorted(result.classes) == ids.tolist() and set(result.classes.values()) <= set(kinds)
    assert np.bincount(labels.ravel())[1:].min() >= MIN_OBJECT_PIXELS
    for obj, where in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[where] == obj)[1] == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("kinds", [("elongated cell",), ("cell",), ("nucleus", "small spot")])
@pytest.mark.parametrize("modality", NEW_MODALITIES)
def test_new_modalities_give_exact_labels_and_the_requested_dtype(modality, kinds, dtype):
    result = generate((96, 112), modality=modality, kinds=kinds, dtype=dtype, seed=3)
    assert_exact_labels(result, (96, 112), kinds)
    assert result.modality == modality and result.image.dtype == dtype
    assert result.image.shape == ((96, 112, 3) if modality == "ihc" else (96, 112))
    assert result.image.max() > result.image.min()


def _ring(labels, width):
    """Background pixels within ``width`` px of an object."""
    return ndi.binary_dilation(labels > 0, iterations=width) & (labels == 0)


def test_phase_contrast_objects_and_their_outer_halos_are_on_opposite_sides_of_the_background():
    inverted = opposite = 0
    for seed in range(12):
        result = generate((128, 128), modality="phase contrast", kinds=("elongated cell",), density=0.15,
                          size_range=(20.0, 40.0), seed=seed)
        image, labels = result.image.astype(float), result.labels
        inside = image[ndi.binary_erosion(labels > 0)].mean()
        halo = image[_ring(labels, 3)].mean()
        background = np.median(image[~ndi.binary_dilation(labels > 0, iterations=10)])
        assert abs(inside - background) > 10, seed
        # dark objects with a bright halo outside them, or the inverted look (a weak
        # halo, about as bright as the background, is allowed now and then)
        opposite += (inside < background < halo) or (inside > background > halo)
        inverted += inside > background
    assert opposite >= 10
    assert 0 < inverted <= 6  # both looks occur, the dark one at least as often


def test_phase_contrast_rods_are_bacteria_sized():
    result = generate((256, 256), modality="phase contrast", kinds=("elongated cell",),
                      size_range=(15.0, 45.0), seed=2)
    props = measure.regionprops(result.labels)
    widths = np.array([p.axis_minor_length for p in props if p.area > 40])
    lengths = np.array([p.axis_major_length for p in props if p.area > 40])
    assert np.median(widths) >= 3 and widths.max() <= 20
    assert lengths.max() <= 1.15 * 45 and np.median(lengths / widths) > 2


def test_dic_shows_relief_at_object_edges():
    result = generate((128, 128), modality="dic", kinds=("cell",), density=0.3, size_range=(30.0, 50.0), seed=4)
    image, labels = result.image.astype(float), result.labels
    edges = ndi.binary_dilation(labels > 0, iterations=2) & ~ndi.binary_erosion(labels > 0, iterations=2)
    far = ~ndi.binary_dilation(labels > 0, iterations=8)
    gradient = np.hypot(*np.gradient(ndi.gaussian_filter(image, 1.0)))
    assert gradient[edges].mean() > 2 * gradient[far].mean()


def test_ihc_has_brown_dab_positive_and_blue_counterstained_objects():
    result = generate((192, 192), modality="ihc", kinds=("nucleus",), density=0.3, seed=1)
    image, labels = result.image.astype(float), result.labels
    assert image.shape == (192, 192, 3)
    assert image[labels > 0].mean() < image[labels == 0].mean()  # stained objects are darker
    colour = np.array([image[labels == i].mean(0) for i in range(1, labels.max() + 1)])
    red_minus_blue = colour[:, 0] - colour[:, 2]
    # DAB (brown) absorbs blue most; hematoxylin (blue) absorbs red most
    assert (red_minus_blue > 10).any() and (red_minus_blue < -10).any()


def test_fluorescence_whole_cells_reach_large_sizes_and_small_ones_touch():
    large = generate((320, 320), modality="fluorescence", kinds=("cell",), size_range=(100.0, 150.0), seed=5)
    assert_exact_labels(large, (320, 320), ("cell",))
    diameters = [p.axis_major_length for p in measure.regionprops(large.labels)]
    assert max(diameters) >= 100
    small = generate((128, 128), modality="fluorescence", kinds=("cell",), size_range=(5.0, 8.0), density=0.5, seed=6)
    assert_exact_labels(small, (128, 128), ("cell",))
    assert small.labels.max() > 40
    # touching: some object pixels have a 4-neighbour of another object
    a, b = small.labels[:, :-1], small.labels[:, 1:]
    assert np.any((a > 0) & (b > 0) & (a != b))


@pytest.mark.parametrize("modality", ["fluorescence", "phase contrast", "dic", "ihc", "brightfield", "histology"])
def test_noise_scale_lowers_the_snr_and_keeps_the_labels(modality):
    clean = generate((96, 96), modality=modality, kinds=("nucleus",), seed=8)
    noisy = generate((96, 96), modality=modality, kinds=("nucleus",), seed=8, noise_scale=4.0)
    np.testing.assert_array_equal(clean.labels, noisy.labels)
    far = ~ndi.binary_dilation(clean.labels > 0, iterations=6)

    def roughness(image):  # background noise: the pixel-to-pixel differences
        grey = image.astype(float).reshape(96, 96, -1).mean(-1)
        return np.abs(np.diff(grey, axis=1))[far[:, 1:] & far[:, :-1]].mean()

    assert roughness(noisy.image) > 1.5 * roughness(clean.image)
    same = generate((96, 96), modality=modality, kinds=("nucleus",), seed=8, noise_scale=1.0)
    np.testing.assert_array_equal(clean.image, same.image)


def test_noise_scale_must_be_positive():
    with pytest.raises(ValueError, match="noise_scale"):
        generate((32, 32), noise_scale=0.0)


def test_out_of_focus_light_raises_the_background_between_unchanged_objects():
    plain = generate((128, 128), modality="fluorescence", density=0.4, size_range=(10, 16), seed=3, dtype=np.uint16)
    hazy = generate((128, 128), modality="fluorescence", density=0.4, size_range=(10, 16), seed=3, dtype=np.uint16,
                    out_of_focus=0.8)
    np.testing.assert_array_equal(hazy.labels, plain.labels)  # the same objects, only the light differs

    def contrast(sample):  # background over objects, above the camera's offset
        image = sample.image.astype(np.float64)
        image -= np.percentile(image, 0.5)
        return np.median(image[sample.labels == 0]) / np.median(image[sample.labels > 0])

    assert contrast(hazy) > contrast(plain) + 0.1
    again = generate((128, 128), modality="fluorescence", density=0.4, size_range=(10, 16), seed=3, dtype=np.uint16,
                     out_of_focus=0.8)
    np.testing.assert_array_equal(again.image, hazy.image)  # deterministic
    zero = generate((128, 128), modality="fluorescence", density=0.4, size_range=(10, 16), seed=3, dtype=np.uint16,
                    out_of_focus=0.0)
    np.testing.assert_array_equal(zero.image, plain.image)  # 0 keeps earlier images bit for bit


def test_a_given_psf_blurs_and_bad_values_are_refused():
    sharp = generate((96, 96), modality="fluorescence", seed=4, psf_sigma=0.5, noise_scale=0.01)
    blurred = generate((96, 96), modality="fluorescence", seed=4, psf_sigma=4.0, noise_scale=0.01)

    def edges(image):
        return np.abs(np.diff(image.astype(np.float64), axis=1)).mean()

    assert edges(blurred.image) < 0.6 * edges(sharp.image)
    with pytest.raises(ValueError, match="out_of_focus"):
        generate((64, 64), modality="phase contrast", out_of_focus=0.5)
    with pytest.raises(ValueError, match="out_of_focus"):
        generate((64, 64), out_of_focus=-1)
    with pytest.raises(ValueError, match="psf_sigma"):
        generate((64, 64), psf_sigma=0)
