"""Instance decoders from micro-sam checkpoints and decoder files, read with weights_only=True."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.automatic import InstanceDecoder, decoder_maps
from napari_sam.automatic.loading import has_decoder, load_decoder, read_decoder_state, save_decoder
from napari_sam.checkpoints import CheckpointError, load_model

import tiny


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(1)
    return InstanceDecoder(embed_dim=tiny.TINY["prompt_embed_dim"], initial_features=8).eval()


def test_a_micro_sam_checkpoint_loads_model_and_decoder_unchanged(tmp_path, tiny_model, decoder):
    path = tmp_path / "micro_sam_checkpoint.pt"
    torch.save({"model_state": tiny_model.state_dict(), "decoder_state": decoder.state_dict(),
                "optimizer_state": {"lr": 1e-5}, "epoch": 3}, path)
    assert has_decoder(path)
    model, loaded = load_model(path), load_decoder(path)
    assert loaded.conventions == "micro_sam"
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    image = np.random.default_rng(0).integers(0, 3000, (60, 80)).astype(np.uint16)
    np.testing.assert_array_equal(decoder_maps(model, loaded, image), decoder_maps(tiny_model, decoder, image))


def test_a_bare_decoder_file_with_encoder_keys_loads(tmp_path, decoder):
    path = tmp_path / "vit_t_lm_decoder.pt"
    torch.save({**decoder.state_dict(), "encoder.patch_embed.proj.weight": torch.zeros(2)}, path)
    assert set(read_decoder_state(path)) >= set(decoder.state_dict())
    assert load_decoder(path).initial_features == 8


def test_save_decoder_round_trips_its_conventions(tmp_path, decoder):
    decoder.conventions = "napari_sam"
    try:
        path = save_decoder(decoder, tmp_path / "mine.pt")
    finally:
        decoder.conventions = "micro_sam"
    assert load_decoder(path).conventions == "napari_sam"


def test_a_checkpoint_without_a_decoder_says_to_use_amg(tmp_path, tiny_model):
    path = tmp_path / "sam_only.pt"
    torch.save(tiny_model.state_dict(), path)
    assert not has_decoder(path)
    with pytest.raises(CheckpointError, match="amg"):
        load_decoder(path)


def test_a_decoder_state_that_does_not_fit_is_refused_with_the_keys(tmp_path, decoder):
    state = decoder.state_dict()
    del state["deconv2.block.2.weight"]
    torch.save({"decoder_state": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="deconv2.block.2.weight"):
        load_decoder(tmp_path / "broken.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"decoder_state": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused|Refused"):
        load_decoder(path)
    assert "never run" not in capsys.readouterr().out
