"""``napari-sam propagate``: shape and ids of the written label stack, axes, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam import cli
from napari_sam.annotate import propagate_cli
from propagation_stand_in import GreyLevelPredictor
from tiny import ellipse

SHAPE = (48, 56)


@pytest.fixture
def grey_model(monkeypatch):
    monkeypatch.setattr(propagate_cli, "make_predictor", GreyLevelPredictor)


def volume(count=12):
    stack = np.zeros((count, *SHAPE), np.uint16)
    for z in range(2, 9):
        stack[z][ellipse(SHAPE, (14, 16), (6, 7))] = 40
    for z in range(4, 12):
        stack[z][ellipse(SHAPE, (32, 38), (7, 6))] = 80
    return stack


def test_each_point_or_box_is_one_object_with_ids_in_the_order_given(tmp_path, model_file, grey_model, capsys):
    path, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    stack = volume()
    tifffile.imwrite(path, stack)
    code = cli.main(["propagate", str(path), "--box", "6,25,31,39,45", "--point", "5,14,16",
                     "--out", str(out), "--model", model_file])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == stack.shape and labels.dtype == np.uint16
    np.testing.assert_array_equal(labels == 1, stack == 80)
    np.testing.assert_array_equal(labels == 2, stack == 40)
    lines = capsys.readouterr().out.splitlines()
    assert "object 1: planes 4-11 (8 planes)" in lines and lines[-1].startswith("napari-sam propagate: wrote")


def test_axis_and_position_pick_the_planes_of_an_nd_stack(tmp_path, model_file, grey_model):
    path, out = tmp_path / "tz.tif", tmp_path / "labels.tif"
    data = np.zeros((2, 12, *SHAPE), np.uint16)
    data[1] = volume()
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    assert cli.main(["propagate", str(path), "--point", "6,32,38", "--axis", "1", "--at", "1",
                     "--out", str(out), "--model", model_file]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == data.shape and not labels[0].any()
    np.testing.assert_array_equal(labels[1] == 1, data[1] == 80)


def test_an_existing_output_is_kept_without_overwrite_and_bad_planes_are_refused(tmp_path, model_file, grey_model):
    path, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(path, volume())
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(["propagate", str(path), "--point", "5,14,16", "--out", str(out), "--model", model_file])
    assert out.read_bytes() == b"keep"
    with pytest.raises(SystemExit, match="plane 30"):
        cli.main(["propagate", str(path), "--point", "30,14,16", "--out", str(out), "--overwrite",
                  "--model", model_file])
    with pytest.raises(SystemExit):  # plane,row,col needs three numbers
        cli.main(["propagate", str(path), "--point", "14,16", "--out", str(out), "--model", model_file])
    with pytest.raises(SystemExit, match="at least one object"):
        cli.main(["propagate", str(path), "--out", str(tmp_path / "new.tif"), "--model", model_file])
