"""A model's weights and sidecar JSON stay a pair whatever kills ``save_model`` (issue 21).

``save_model`` writes two files, each atomically; a crash between the two renames used to
leave the new weights beside the old sidecar, which ``load_model`` then read as theirs
(the wrong metadata, or the wrong architecture for a custom config). Now both carry a
``weights_id`` and the weights carry the sidecar's text: killed anywhere, the file loads
as the old pair or the new one, and a rerun writes a clean pair.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import napari_sam.files as files
from napari_sam import load_model, save_model
from napari_sam.checkpoints import metadata_path
from tiny import assert_same_state, build_tiny, randomized


class Killed(Exception):
    """Stands for the process dying at that point."""


def _save(path, version):
    save_model(randomized(build_tiny(), version), path, metadata={"version": version})


def _load_quietly(path, caplog):
    caplog.clear()
    model = load_model(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a clean pair loads without a word
    return model


def _load_told(path, caplog, words):
    caplog.clear()
    model = load_model(path)
    assert any(words in r.getMessage() for r in caplog.records), "the stale sidecar was not told"
    return model


def _assert_pair(model, version):
    assert model.metadata["version"] == version
    assert_same_state(model.state_dict(), randomized(build_tiny(), version).state_dict())


class _SecondWriteBreaks(io.FileIO):
    """Files open normally, but the ``nth`` file opened for writing dies after ``limit`` bytes."""

    nth, limit, opened = 2, 0, 0

    def __init__(self, path, mode):
        super().__init__(path, mode)
        type(self).opened += 1
        self._doomed = type(self).opened == self.nth

    def write(self, data):
        if self._doomed and self.tell() + len(data) > self.limit:
            super().write(bytes(data)[: max(self.limit - self.tell(), 0)])
            raise Killed("killed while writing the sidecar")
        return super().write(data)


def _kill_at(patch, where):
    """Make the next ``save_model`` die at ``where``; the weights file is always written first."""
    if where.startswith("sidecar bytes"):
        patch.setattr(_SecondWriteBreaks, "limit", int(where.split()[-1]))
        patch.setattr(_SecondWriteBreaks, "opened", 0)
        patch.setattr(files, "open", lambda p, mode: _SecondWriteBreaks(p, mode[0]), raising=False)
        return
    real, calls = files.os.replace, []

    def replace(source, target):  # the weights' rename goes through; the sidecar's never happens
        calls.append(target)
        if len(calls) == 2:
            raise Killed("killed between the two renames")
        return real(source, target)

    patch.setattr(files.os, "replace", replace)


@pytest.mark.parametrize("where", ["between the renames", "sidecar bytes 0", "sidecar bytes 40"])
def test_killed_after_the_weights_loads_as_the_new_pair_and_a_rerun_repairs(where, tmp_path, monkeypatch, caplog):
    path = tmp_path / "model.pt"
    _save(path, 1)
    old_sidecar = metadata_path(path).read_bytes()
    with monkeypatch.context() as patch:
        _kill_at(patch, where)
        with pytest.raises(Killed):
            _save(path, 2)
    assert metadata_path(path).read_bytes() == old_sidecar  # the state the crash left: new weights, old sidecar
    _assert_pair(_load_told(path, caplog, "belongs to other weights"), 2)  # never version 1's metadata
    _save(path, 2)  # the rerun
    _assert_pair(_load_quietly(path, caplog), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_a_stale_sidecar_never_picks_the_architecture(tmp_path, monkeypatch, caplog):
    """The old sidecar of another architecture beside new weights: the new one is built."""
    path = tmp_path / "model.pt"
    other = dict(build_tiny().config, embed_dim=48)
    save_model(randomized(build_tiny(other), 1), path, metadata={"version": 1})
    with monkeypatch.context() as patch:
        _kill_at(patch, "between the renames")
        with pytest.raises(Killed):
            _save(path, 2)
    _assert_pair(_load_told(path, caplog, "belongs to other weights"), 2)


def test_the_weights_file_alone_carries_its_metadata(tmp_path, caplog):
    path = tmp_path / "model.pt"
    _save(path, 3)
    metadata_path(path).unlink()  # e.g. only the .pt was copied
    _assert_pair(_load_quietly(path, caplog), 3)
    state = torch.load(path, weights_only=True)  # still a plain state dict for other tools
    build_tiny().load_state_dict(state, strict=True)


def test_a_hand_edited_sidecar_of_the_same_weights_is_read(tmp_path, caplog):
    path = tmp_path / "model.pt"
    _save(path, 4)
    sidecar = json.loads(metadata_path(path).read_text())
    sidecar["note"] = "trained on the March data"
    metadata_path(path).write_text(json.dumps(sidecar))
    assert _load_quietly(path, caplog).metadata["note"] == "trained on the March data"


def test_foreign_weights_copied_over_a_saved_model_ignore_its_sidecar(tmp_path, caplog):
    path = tmp_path / "model.pt"
    _save(path, 5)
    torch.save(randomized(build_tiny(), 6).state_dict(), path)  # a plain state dict from elsewhere
    model = _load_told(path, caplog, "written for other weights")
    assert "version" not in model.metadata
    assert_same_state(model.state_dict(), randomized(build_tiny(), 6).state_dict())


_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from tiny import build_tiny, randomized
from napari_sam import save_model
models = {v: randomized(build_tiny(), v) for v in (1, 2)}
count = 0
while True:
    count += 1
    version = 1 + count % 2  # 2, 1, 2, ...: every save replaces the other pair
    save_model(models[version], sys.argv[1], metadata={"version": version})
    print(count, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.03])
def test_a_save_killed_by_sigkill_loads_as_one_pair(tmp_path, delay):
    path = tmp_path / "model.pt"
    tests = str(Path(__file__).resolve().parents[1])
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), tests], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "1"  # one whole pair exists
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    model = load_model(path)  # a kill between the renames is told (logged); either way one pair loads
    _assert_pair(model, model.metadata["version"])
