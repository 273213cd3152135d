"""``napari-sam segment-all``: the right shape, never overwriting without --overwrite."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.automatic import InstanceDecoder
from napari_sam.cli import main

import tiny
from stand_ins import discs

FAST = ["--mode", "amg"]


@pytest.fixture()
def stack(tmp_path):
    planes = np.stack([discs((50, 60), [(15, 15), (35, 40)], 6)[0]] * 2)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "ZYX"})
    return path


@pytest.fixture(autouse=True)
def few_points(monkeypatch):
    # 32 x 32 points per tile is the default; the tiny random model needs only a few to be tested.
    from napari_sam.automatic import amg

    original = amg.AmgOptions.__post_init__

    def fewer(self):
        object.__setattr__(self, "points_per_side", 4)
        original(self)

    monkeypatch.setattr(amg.AmgOptions, "__post_init__", fewer)


def test_one_plane_and_all_planes_give_labels_of_their_shape(tmp_path, stack, model_file):
    out = tmp_path / "plane.tif"
    assert main(["segment-all", str(stack), "--out", str(out), "--model", model_file, "--plane", "1", *FAST]) == 0
    assert tifffile.imread(out).shape == (50, 60)
    out = tmp_path / "all.tif"
    assert main(["segment-all", str(stack), "--out", str(out), "--model", model_file, "--all-planes", *FAST]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (2, 50, 60) and labels.dtype == np.uint32


def test_an_existing_file_is_never_overwritten_without_the_flag(tmp_path, stack, model_file):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["segment-all", str(stack), "--out", str(out), "--model", model_file, "--plane", "0", *FAST])
    assert out.read_bytes() == b"keep me"
    assert main(["segment-all", str(stack), "--out", str(out), "--model", model_file, "--plane", "0", "--overwrite",
                 *FAST]) == 0
    assert tifffile.imread(out).shape == (50, 60)


def test_a_stack_needs_a_plane_or_all_planes(tmp_path, stack, model_file):
    with pytest.raises(SystemExit, match="--all-planes"):
        main(["segment-all", str(stack), "--out", str(tmp_path / "x.tif"), "--model", model_file, *FAST])


def test_a_micro_sam_checkpoint_runs_ais_by_default(tmp_path, stack, tiny_model):
    decoder = InstanceDecoder(embed_dim=tiny.TINY["prompt_embed_dim"], initial_features=8)
    checkpoint = tmp_path / "micro.pt"
    torch.save({"model_state": tiny_model.state_dict(), "decoder_state": decoder.state_dict()}, checkpoint)
    out = tmp_path / "ais.tif"
    assert main(["segment-all", str(stack), "--out", str(out), "--model", str(checkpoint), "--plane", "0"]) == 0
    assert tifffile.imread(out).shape == (50, 60)
