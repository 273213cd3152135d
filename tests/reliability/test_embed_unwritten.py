"""`napari-sam embed` whose cache entries cannot be written fails, naming why (issue 21, item 7).

The up-front checks (``--cache`` a file, a read-only folder) cannot see every failure: a
model folder inside a shared cache owned by someone else, a full disk. Then every
computed embedding was lost, yet ``embed`` reported "N computed" and exited 0.
"""

from __future__ import annotations

import errno

import napari_sam.inference.embeddings as embeddings
from napari_sam.cli import main


def _embed(stack, model_file, cache):
    return main(["embed", str(stack), "--model", str(model_file), "--device", "cpu", "--cache", str(cache),
                 "--planes", "0:2", "--quiet"])


def test_embeddings_that_cannot_be_stored_end_in_one_line_and_exit_1(grey_stack, model_file, tmp_path, monkeypatch,
                                                                     capsys):
    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(embeddings, "write_embedding", full_disk)
    assert _embed(grey_stack, model_file, tmp_path / "cache") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 2 of 2 computed embeddings could not be written") and "No space left" in error


def test_a_file_where_a_cache_folder_goes_is_reported(grey_stack, model_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _embed(grey_stack, model_file, cache) == 0
    capsys.readouterr()
    (model_folder,) = [p for p in cache.iterdir() if p.is_dir()]
    for entry in sorted(model_folder.rglob("*"), reverse=True):  # empty it, then a file in its place
        entry.unlink() if entry.is_file() else entry.rmdir()
    model_folder.rmdir()
    model_folder.write_bytes(b"not a folder")
    assert _embed(grey_stack, model_file, cache) == 1
    assert "could not be written" in capsys.readouterr().err
    assert model_folder.read_bytes() == b"not a folder"


def test_a_cache_that_stores_reports_success(grey_stack, model_file, tmp_path):
    assert _embed(grey_stack, model_file, tmp_path / "cache") == 0
    assert _embed(grey_stack, model_file, tmp_path / "cache") == 0  # all cached now
