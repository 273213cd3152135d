"""The Python API (AutomaticSegmenter) and stacks plane by plane as dask tasks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.automatic import AmgOptions, InstanceDecoder
from napari_sam.automatic.loading import save_decoder
from napari_sam.automatic.segment import AutomaticSegmenter, SegmentAllJob, plane_tasks, segment_stack

import tiny
from stand_ins import DistanceDecoder, ThresholdModel, discs
from test_ais import EXACT, assert_same_instances

QUICK_AMG = AmgOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_mode_defaults_to_ais_with_a_decoder_and_amg_without():
    model = ThresholdModel(64)
    image, truth = discs((100, 90), [(20, 20), (60, 60), (80, 25)], 6)
    ais = AutomaticSegmenter(model, DistanceDecoder(), watershed=EXACT)
    amg = AutomaticSegmenter(model, amg=AmgOptions(points_per_side=16))
    assert (ais.mode, amg.mode) == ("ais", "amg")
    assert_same_instances(ais.segment(image), truth)
    assert_same_instances(amg.segment(image), truth)


def test_ais_without_a_decoder_is_refused_and_says_amg_works():
    with pytest.raises(ValueError, match="amg"):
        AutomaticSegmenter(ThresholdModel(64), mode="ais")
    with pytest.raises(ValueError, match="mode"):
        AutomaticSegmenter(ThresholdModel(64), mode="everything")


def test_load_finds_the_decoder_in_a_micro_sam_checkpoint(tmp_path, tiny_model):
    decoder = InstanceDecoder(embed_dim=tiny.TINY["prompt_embed_dim"], initial_features=8)
    path = tmp_path / "micro.pt"
    torch.save({"model_state": tiny_model.state_dict(), "decoder_state": decoder.state_dict()}, path)
    segmenter = AutomaticSegmenter.load(path)
    assert segmenter.mode == "ais" and segmenter.conventions == "micro_sam"
    assert AutomaticSegmenter.load(path, mode="amg").decoder is None
    labels = segmenter.segment(np.random.default_rng(0).integers(0, 999, (70, 50)).astype(np.uint16))
    assert labels.shape == (70, 50) and labels.dtype == np.uint32


def test_load_takes_a_separate_decoder_file(tmp_path, model_file):
    decoder = InstanceDecoder(embed_dim=tiny.TINY["prompt_embed_dim"], initial_features=8, conventions="napari_sam")
    path = save_decoder(decoder, tmp_path / "decoder.pt")
    assert AutomaticSegmenter.load(model_file).mode == "amg"
    segmenter = AutomaticSegmenter.load(model_file, path)
    assert segmenter.mode == "ais" and segmenter.conventions == "napari_sam"


def test_embeddings_come_from_the_cache_when_present(tmp_path, tiny_model, monkeypatch):
    image = np.random.default_rng(1).integers(0, 4000, (150, 140)).astype(np.uint16)
    first = AutomaticSegmenter(tiny_model, amg=QUICK_AMG, cache_dir=tmp_path).segment(image)
    assert any(tmp_path.rglob("*.pt"))

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the cache holds every tile")

    monkeypatch.setattr(tiny_model, "encode", no_encoder)
    np.testing.assert_array_equal(AutomaticSegmenter(tiny_model, amg=QUICK_AMG, cache_dir=tmp_path).segment(image),
                                  first)


@pytest.fixture()
def stack_file(tmp_path):
    planes = [discs((60, 70), [(15 + 5 * k, 20), (40, 45)], 6)[0] for k in range(3)]
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack(planes), imagej=True, metadata={"axes": "ZYX"})
    return path


def test_a_stack_is_segmented_plane_by_plane(stack_file, model_file):
    job = SegmentAllJob(str(stack_file), model=model_file, mode="amg", amg=QUICK_AMG)
    labels = segment_stack(job, progress=False)
    assert labels.shape == (3, 60, 70) and labels.dtype == np.uint32
    import dask

    again = dask.compute(*plane_tasks(job, [(1,)]), scheduler="sync")
    np.testing.assert_array_equal(again[0], labels[1])
