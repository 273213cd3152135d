"""A named model with a paired decoder (micro-sam's ``vit_b_lm`` + ``vit_b_lm_decoder``) runs AIS
by default: both files downloaded (from 127.0.0.1 here), xxh128-checked, and loaded together."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import xxhash

from local_http import serve
from napari_sam.automatic import AutomaticSegmenter, InstanceDecoder
from napari_sam.checkpoints import CACHE_ENV_VAR, ModelSpec, registry
from napari_sam.cli import main

import tiny
from stand_ins import discs


@pytest.fixture
def named_pair(tmp_path, monkeypatch, tiny_model):
    """"tiny_lm" (the tiny random model) paired with "tiny_lm_decoder", served on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    torch.manual_seed(2)
    decoder = InstanceDecoder(embed_dim=tiny.TINY["prompt_embed_dim"], initial_features=8)
    torch.save(tiny_model.state_dict(), folder / "vit_x.pt")
    torch.save(decoder.state_dict(), folder / "vit_x_decoder.pt")  # micro-sam's layout: the bare state dict
    digest = {name: xxhash.xxh128((folder / name).read_bytes()).hexdigest()
              for name in ("vit_x.pt", "vit_x_decoder.pt")}
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve(folder) as base_url:
        monkeypatch.setitem(registry.DECODERS, "tiny_lm_decoder", ModelSpec(
            name="tiny_lm_decoder", model_type=None, filename="tiny_lm_decoder.pt", url=base_url + "vit_x_decoder.pt",
            sha256=None, size_bytes=None, description="test decoder", xxh128=digest["vit_x_decoder.pt"]))
        monkeypatch.setitem(registry.MODELS, "tiny_lm", ModelSpec(
            name="tiny_lm", model_type=None, filename="tiny_lm.pt", url=base_url + "vit_x.pt", sha256=None,
            size_bytes=None, description="test model", xxh128=digest["vit_x.pt"], decoder="tiny_lm_decoder"))
        yield decoder


def test_a_named_model_loads_its_decoder_pair_and_runs_ais(tmp_path, named_pair):
    segmenter = AutomaticSegmenter.load("tiny_lm", device="cpu")

    assert segmenter.mode == "ais" and segmenter.conventions == "micro_sam"
    for key, value in named_pair.state_dict().items():
        torch.testing.assert_close(segmenter.decoder.state_dict()[key], value, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny_lm.pt", "tiny_lm_decoder.pt"]
    assert AutomaticSegmenter.load("tiny_lm", device="cpu", mode="amg").decoder is None


def test_segment_all_with_a_named_model_writes_ais_labels(tmp_path, named_pair):
    image = tmp_path / "plane.tif"
    tifffile.imwrite(image, discs((50, 60), [(15, 15), (35, 40)], 6)[0])
    out = tmp_path / "labels.tif"

    assert main(["segment-all", str(image), "--out", str(out), "--model", "tiny_lm", "--device", "cpu"]) == 0

    labels = tifffile.imread(out)
    expected = AutomaticSegmenter.load("tiny_lm", device="cpu").segment(tifffile.imread(image))
    assert labels.shape == (50, 60) and labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected)


def test_fetch_downloads_a_named_model_and_its_decoder(tmp_path, named_pair, capsys):
    assert main(["fetch", "tiny_lm"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(tmp_path / "cache" / "tiny_lm.pt"), str(tmp_path / "cache" / "tiny_lm_decoder.pt")]
