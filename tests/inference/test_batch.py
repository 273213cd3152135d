"""Batch precomputation: `napari-sam embed`, resume, dask tasks, and the API reading the same cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.inference.batch import EmbedJob, embed_plane, embed_stack, plane_tasks
from napari_sam.inference.embeddings import EmbeddingStore
from napari_sam.io import open_stack
from napari_sam.model import build_sam
from napari_sam.checkpoints import load_model, save_model
from napari_sam.inference.predictor import Predictor
from napari_sam.inference.tiling import TiledPredictor
from tiny import TINY



@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_model(build_sam(TINY), tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture
def stack_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 3000, (4, 200, 150)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    return str(path)


def job_for(stack_file, model_file, cache, **kw):
    return EmbedJob(path=stack_file, model=model_file, cache_dir=str(cache), tile_size=128, halo=16, device="cpu",
                    **kw)


def entries(cache):
    return sorted(cache.rglob("*.pt"))


def test_embed_stack_fills_the_cache_that_the_api_reads(stack_file, model_file, tmp_path):
    cache = tmp_path / "cache"
    reports = embed_stack(job_for(stack_file, model_file, cache), progress=False)
    assert [r.index for r in reports] == [(0,), (1,), (2,), (3,)]
    assert all(r.computed == r.tiles == 4 for r in reports)  # 200 x 150 -> 2 x 2 tiles of 128
    assert len(entries(cache)) == 16

    predictor = Predictor(load_model(model_file, device="cpu"))
    store = EmbeddingStore(predictor.model, predictor.normalization, cache_dir=cache)
    tiled = TiledPredictor(predictor, store, tile_size=128, halo=16)
    with open_stack(stack_file) as stack:
        tiled.set_plane(stack.plane(2))
    candidates = tiled.predict(points=[(100, 75)])
    assert candidates.masks.shape == (3, 200, 150)
    assert tiled.store.encoder_calls == 0 and tiled.store.disk_hits == 1


def test_an_interrupted_run_resumes_and_redoes_only_what_is_missing_or_broken(stack_file, model_file, tmp_path):
    cache = tmp_path / "cache"
    job = job_for(stack_file, model_file, cache)

    class Killed(Exception):
        pass

    def kill_after_two(report):
        if len(done) == 1:
            raise Killed
        done.append(report)

    done: list = []
    with pytest.raises(Killed):
        embed_stack(job, progress=False, on_plane=kill_after_two)
    assert len(entries(cache)) == 8  # two planes finished
    # a process killed while writing leaves a temporary file and maybe a truncated entry
    broken = entries(cache)[0]
    broken.write_bytes(broken.read_bytes()[:100])
    (broken.parent / f".{broken.name}.abc.tmp").write_bytes(b"partial")

    reports = embed_stack(job, progress=False)
    assert sum(r.computed for r in reports) == 8 + 1  # planes 2, 3 and the truncated entry
    assert sum(r.computed for r in embed_stack(job, progress=False)) == 0


def test_cli_embed_precomputes_every_plane(stack_file, model_file, tmp_path, capsys):
    from napari_sam.inference.batch import add_embed_parser
    import argparse

    parser = argparse.ArgumentParser()
    add_embed_parser(parser.add_subparsers())
    cache = tmp_path / "cache"
    args = parser.parse_args(["embed", stack_file, "--model", model_file, "--cache", str(cache),
                              "--tile", "128", "--halo", "16", "--device", "cpu", "--planes", "1:3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 planes, 8 embeddings: 8 computed" in out
    assert len(entries(cache)) == 8


def test_planes_run_as_dask_delayed_tasks(stack_file, model_file, tmp_path):
    import dask

    cache = tmp_path / "cache"
    job = job_for(stack_file, model_file, cache)
    reports = dask.compute(*plane_tasks(job), scheduler="threads", num_workers=2)
    assert sorted(r.index for r in reports) == [(0,), (1,), (2,), (3,)]
    assert len(entries(cache)) == 16


@pytest.mark.slow
def test_planes_run_on_a_local_dask_cluster(stack_file, model_file, tmp_path):
    from dask.distributed import Client, LocalCluster

    cache = tmp_path / "cache"
    job = job_for(stack_file, model_file, cache)
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        reports = embed_stack(job, client=client, progress=False)
        again = client.map(embed_plane, [job] * 4, [0, 1, 2, 3], pure=False)
        assert sum(f.result().computed for f in again) == 0
    assert sorted(r.index for r in reports) == [(0,), (1,), (2,), (3,)]
    assert sum(r.computed for r in reports) == 16 and len(entries(cache)) == 16


def test_a_plane_no_larger_than_a_tile_is_cached_like_a_whole_plane(model_file, tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (3, 100, 90)).astype(np.uint8)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TYX"})
    cache = tmp_path / "cache"
    embed_stack(job_for(str(path), model_file, cache), progress=False)
    predictor = Predictor(load_model(model_file, device="cpu"))
    store = EmbeddingStore(predictor.model, predictor.normalization, cache_dir=cache)
    assert store.lookup(data[1]) is not None  # what the widget's plain store.get(plane) reads


def test_cli_embed_refuses_a_cache_it_cannot_write_and_planes_that_do_not_exist(stack_file, model_file, tmp_path):
    from napari_sam.cli import main

    a_file = tmp_path / "not_a_folder"
    a_file.write_bytes(b"x")
    base = ["embed", stack_file, "--model", model_file, "--device", "cpu"]
    assert main(base + ["--cache", str(a_file)]) == 1
    assert a_file.read_bytes() == b"x"
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if not os.access(read_only, os.W_OK):  # root ignores permission bits
            assert main(base + ["--cache", str(read_only)]) == 1
    finally:
        read_only.chmod(0o700)
    assert main(base + ["--cache", str(tmp_path / "cache"), "--planes", "50:60"]) == 1
    assert not list((tmp_path / "cache").rglob("*.pt"))
