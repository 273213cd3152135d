"""A broken file in a fine-tune folder: one line naming the file and the problem (issue 21, item 5).

Each folder holds one good image / labels pair and one damaged file; ``napari-sam finetune``
must stop while reading (before any training), exit non-zero, and print one line that names the
damaged file.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main


def _labels():
    labels = np.zeros((48, 48), np.uint16)
    labels[5:20, 5:20], labels[28:44, 26:44] = 1, 2
    return labels


def _image(seed=0):
    return (np.random.default_rng(seed).random((48, 48)) * 255).astype(np.uint8)


def _truncated(path):
    tifffile.imwrite(path, _image())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_png(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 20)


def _empty(path):
    path.write_bytes(b"")


def _complex(path):
    tifffile.imwrite(path, np.ones((48, 48), np.complex64))


def _all_nan(path):
    tifffile.imwrite(path, np.full((48, 48), np.nan, np.float32))


def _float_labels(path):
    tifffile.imwrite(path, np.random.default_rng(1).random((48, 48)).astype(np.float32))


def _other_shape(path):
    tifffile.imwrite(path, _image()[:40])


# (damaged file name, which side is damaged, writer, words the message must hold)
CASES = [
    ("b.tif", "image", _truncated, "truncated"),
    ("b.png", "image", _garbage_png, "cannot read"),
    ("b.tif", "image", _empty, "cannot read"),
    ("b.tif", "image", _complex, "complex64"),
    ("b.tif", "image", _all_nan, "no finite value"),  # item 6: trained on a blank image and ended "successfully"
    ("b.tif", "labels", _float_labels, "integer"),
    ("b.tif", "image", _other_shape, "does not match"),
]


@pytest.mark.parametrize("name, side, damage, words", CASES, ids=[c[2].__name__.strip("_") for c in CASES])
def test_a_damaged_file_in_the_folder_is_named_in_one_line(model_file, tmp_path, capsys, name, side, damage, words):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    tifffile.imwrite(images / "a.tif", _image())
    tifffile.imwrite(labels / "a.tif", _labels())
    good = {"image": lambda p: tifffile.imwrite(p, _image(2)), "labels": lambda p: tifffile.imwrite(p, _labels())}
    suffix_images = images / name
    suffix_labels = labels / name
    if name.endswith(".png"):  # a PNG pair: the good side as PNG too
        from PIL import Image

        good = {"image": lambda p: Image.fromarray(_image(2)).save(p, format="PNG"),
                "labels": lambda p: Image.fromarray(_labels().astype(np.uint8)).save(p, format="PNG")}
    (damage if side == "image" else good["image"])(suffix_images)
    (damage if side == "labels" else good["labels"])(suffix_labels)
    out = tmp_path / "model.pt"
    code = main(["finetune", "--images", str(images), "--labels", str(labels), "--base", str(model_file),
                 "--out", str(out), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and name in err and words in err, err
    assert not out.exists()
