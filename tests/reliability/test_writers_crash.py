"""Crash safety of every writer (issue 21, item 11 and "a crash-safety test for every writer").

Each writer (labels TIFF, cache entry, model + sidecar, training state) is made to fail at
several points: midway through the bytes, at fsync, at the final rename. Afterwards the
previous file is intact, no temporary is left behind, and a rerun writes the new content.
One writer is also killed for real (SIGKILL) in a subprocess.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

import napari_sam.files as files
from napari_sam import load_model, save_model
from napari_sam.checkpoints import metadata_path
from napari_sam.files import atomic_write_tiff, clean_stale_temporaries
from napari_sam.inference.encoding import encode_plane, read_embedding, write_embedding
from napari_sam.training.state import save_train_state
from tiny import assert_same_state, build_tiny, randomized


class Killed(Exception):
    """Stands for the process dying at that point."""


def _tiff(path, version):
    atomic_write_tiff(path, np.full((40, 50), version, np.uint16))


def _check_tiff(path, version):
    assert int(tifffile.imread(path)[0, 0]) == version


_PLANE = np.random.default_rng(0).integers(0, 255, (48, 64)).astype(np.uint8)


def _embedding(path, version):
    embedding = encode_plane(randomized(build_tiny(), version), _PLANE)
    write_embedding(path, embedding, {"version": version})


def _check_embedding(path, version):
    read_embedding(path, {"version": version})  # verifies the signature and the tensors


def _model(path, version):
    save_model(randomized(build_tiny(), version), path, metadata={"version": version})


def _check_model(path, version):
    model = load_model(path)
    assert model.metadata["version"] == version
    assert_same_state(model.state_dict(), randomized(build_tiny(), version).state_dict())


def _state(path, version):
    save_train_state({"format": "napari-sam-train-state", "step": version, "weights": torch.full((300,), float(version))}, path)


def _check_state(path, version):
    state = torch.load(path, weights_only=True)
    assert state["step"] == version and float(state["weights"][0]) == version


WRITERS = {
    "labels": (_tiff, _check_tiff, "labels.tif"),
    "cache entry": (_embedding, _check_embedding, "entry.pt"),
    "model": (_model, _check_model, "model.pt"),
    "training state": (_state, _check_state, "model.state.pt"),
}


class _BreakingStream(io.FileIO):
    """A real file that dies after ``limit`` bytes: a write killed midway."""

    limit = 0
    fired = False

    def write(self, data):
        room = self.limit - self.tell()
        if len(data) > room:
            super().write(bytes(data)[: max(room, 0)])
            type(self).fired = True
            raise Killed("killed midway")
        return super().write(data)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("where", ["bytes 0", "bytes 1", "bytes 700", "bytes 20000", "fsync", "replace"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_killed_anywhere_keeps_the_previous_file_and_a_rerun_repairs(writer, where, tmp_path, monkeypatch):
    write, check, name = WRITERS[writer]
    path = tmp_path / name
    write(path, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with monkeypatch.context() as patch:
        if where.startswith("bytes"):
            limit = int(where.split()[1])
            patch.setattr(_BreakingStream, "limit", limit)
            patch.setattr(_BreakingStream, "fired", False)
            patch.setattr(files, "open", lambda p, mode: _BreakingStream(p, mode[0]), raising=False)
        else:
            target = "fsync" if where == "fsync" else "replace"

            def die(*args, **kwargs):
                raise Killed(where)

            patch.setattr(files.os, target, die)
        try:
            write(path, 2)
        except Killed:
            pass
        except RuntimeError:  # torch's zip writer turns the death into its own error
            if not _BreakingStream.fired:
                raise
        else:  # the payload fit under the limit: nothing was killed, the new file is whole
            check(path, 2)
            return
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "the previous file changed or a temporary was left behind"
    check(path, 1)
    write(path, 2)
    check(path, 2)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writers_follow_the_umask_and_keep_a_644_file_644(writer, tmp_path):
    write, _, name = WRITERS[writer]
    path = tmp_path / name
    old = os.umask(0o022)
    try:
        write(path, 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        if writer == "model":
            assert stat.S_IMODE(metadata_path(path).stat().st_mode) == 0o644
        os.umask(0o077)
        path.chmod(0o644)
        write(path, 2)  # replacing keeps the file's bits, whatever the umask
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        other = tmp_path / f"new-{name}"
        write(other, 3)  # a new file follows the (strict) umask
        assert stat.S_IMODE(other.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_the_cache_cleans_stale_temporaries_in_its_model_folders(tmp_path):
    from napari_sam.inference.embeddings import EmbeddingStore

    folder = tmp_path / "cache" / "some-model"
    folder.mkdir(parents=True)
    stale, young = folder / ".entry.pt.0a1b.tmp", folder / ".entry.pt.2c3d.tmp"
    stale.write_bytes(b"half")
    young.write_bytes(b"half")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    EmbeddingStore(build_tiny(), cache_dir=tmp_path / "cache")
    assert not stale.exists() and young.exists()


_CHILD = """
import sys, numpy as np
from napari_sam.files import atomic_write_tiff
path = sys.argv[1]
data = np.random.default_rng(0).integers(0, 65535, (2000, 2500), dtype=np.uint16)
version = 0
while True:
    version += 1
    data[0, 0] = version
    atomic_write_tiff(path, data, compression=None)
    print(version, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.23])
def test_a_writer_killed_by_sigkill_leaves_a_whole_file(tmp_path, delay):
    path = tmp_path / "labels.tif"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "1"  # one whole version exists
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    data = tifffile.imread(path)  # whole: every pixel readable
    assert data.shape == (2000, 2500) and int(data[0, 0]) >= 1
    for leftover in tmp_path.glob(".*.tmp"):  # the kill may land inside a write: age it, then clean
        os.utime(leftover, (0, 0))
    clean_stale_temporaries(tmp_path)
    assert _leftovers(tmp_path) == []
    atomic_write_tiff(path, np.zeros((4, 4), np.uint16))  # the rerun
    assert tifffile.imread(path).shape == (4, 4)
