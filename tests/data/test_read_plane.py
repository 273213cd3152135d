"""read_plane: one plane of any image file, its size checked before anything is allocated."""

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_sam.io import ImageReadError, read_plane


@pytest.fixture
def stack_file(tmp_path):
    data = np.arange(5 * 20 * 30, dtype=np.uint16).reshape(5, 20, 30)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data)
    return path, data


def test_one_plane_of_a_stack_is_read(stack_file):
    path, data = stack_file
    np.testing.assert_array_equal(read_plane(path, 3), data[3])


def test_a_stack_without_a_plane_index_names_the_planes(stack_file):
    path, _ = stack_file
    with pytest.raises(IndexError, match="holds 5 planes"):
        read_plane(path)


def test_the_plane_index_of_an_rgba_image_indexes_planes_not_channels(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (40, 50, 4), dtype=np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_plane(path, 0), rgba)
    with pytest.raises(IndexError):
        read_plane(path, 1)


def test_a_header_claiming_more_pixels_than_the_file_holds_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(shape=(20_000, 20_000, 3), dtype=np.uint8, photometric="rgb")
    with open(path, "r+b") as handle:  # keep the header, drop the pixels
        handle.truncate(1024)
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_plane(path)


def test_a_plane_larger_than_the_memory_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((512, 512), np.uint16), compression="zlib")
    monkeypatch.setenv("NAPARI_SAM_MAX_PLANE_BYTES", str(100_000))
    with pytest.raises(ImageReadError, match="NAPARI_SAM_MAX_PLANE_BYTES"):
        read_plane(path)


def test_a_png_over_the_memory_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(path)
    monkeypatch.setenv("NAPARI_SAM_MAX_PLANE_BYTES", str(10_000))
    with pytest.raises(ImageReadError, match="more than"):
        read_plane(path)


def test_a_png_reads_as_one_plane(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(read_plane(path), image)
    np.testing.assert_array_equal(read_plane(path, 0), image)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_plane(tmp_path / "absent.tif")


def _damaged_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("originals")
    rng = np.random.default_rng(2)
    originals = {}
    for name, data, kwargs in [
        ("raw.tif", rng.integers(0, 60000, (4, 32, 48), dtype=np.uint16), {}),
        ("zlib.tif", rng.integers(0, 255, (4, 32, 48), dtype=np.uint8), {"compression": "zlib"}),
        ("tiled.tif", rng.random((64, 64)).astype(np.float32), {"tile": (32, 32), "compression": "zlib"}),
    ]:
        path = folder / name
        tifffile.imwrite(path, data, **kwargs)
        originals[name] = path.read_bytes()
    png = folder / "image.png"
    Image.fromarray(rng.integers(0, 255, (32, 48), dtype=np.uint8)).save(png)
    originals["image.png"] = png.read_bytes()
    return originals


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return _damaged_files(tmp_path_factory)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["raw.tif", "zlib.tif", "tiled.tif", "image.png"]),
       cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       plane=st.integers(0, 3))
def test_damaged_files_give_a_one_line_error_or_a_plane_and_stay_unchanged(
        tmp_path, originals, monkeypatch, name, cut, flips, plane):
    monkeypatch.setenv("NAPARI_SAM_MAX_PLANE_BYTES", str(1 << 20))  # bounded memory
    data = bytearray(originals[name][: max(1, int(len(originals[name]) * cut))] if cut < 0.98 else originals[name])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    path = tmp_path / name
    path.write_bytes(bytes(data))
    try:
        result = read_plane(path, plane if name != "image.png" else 0)
    except (ImageReadError, IndexError) as error:
        message = str(error)
        assert message and "\n" not in message
    else:
        assert isinstance(result, np.ndarray) and result.ndim in (2, 3)
        assert result.nbytes <= 1 << 20
    assert path.read_bytes() == bytes(data)


def test_read_image_reads_a_whole_stack_and_checks_its_size_first(stack_file, monkeypatch):
    from napari_sam.files import read_image

    path, data = stack_file
    np.testing.assert_array_equal(read_image(path), data)
    monkeypatch.setenv("NAPARI_SAM_MAX_PLANE_BYTES", str(data.nbytes - 1))
    with pytest.raises(ImageReadError, match="stack.tif"):
        read_image(path)
