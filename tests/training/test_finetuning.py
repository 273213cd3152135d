"""finetune() and `napari-sam finetune`: data in, a model and its state out."""

from __future__ import annotations

import argparse

import pytest
from training_samples import disc_image, tiny_sam

from napari_sam.training import TrainConfig, finetune, load_train_state, state_path_for


def _write_tif(path, array):
    import tifffile

    tifffile.imwrite(path, array, photometric="minisblack")


def test_finetune_on_a_large_plane_trains_on_crops(tmp_path):
    image, labels = disc_image(0, size=160, count=6)
    config = TrainConfig.from_options(epochs=1, rounds=1, objects_per_step=2, val_max_objects=2)
    result = finetune(image, labels, base=tiny_sam(), out=tmp_path / "m.pt", config=config)
    from napari_sam.checkpoints import load_model

    assert "crops of 64 px" in load_model(tmp_path / "m.pt", device="cpu").metadata["data"]
    shrunk = finetune(image, labels, base=tiny_sam(), config=config, tile_large_planes=False)
    assert result.total_steps > shrunk.total_steps  # crops overlap: more objects per epoch


def test_finetune_on_the_synthetic_stream_sees_fresh_images_every_step():
    result = finetune("synthetic", base=tiny_sam(), epochs=1, rounds=2, synthetic_shape=(96, 96),
                      synthetic_steps_per_epoch=2, synthetic_val_images=1, device="cpu")
    assert result.step == 2 and len(result.history["val"]) == 1


def test_unknown_options_are_refused_before_any_work():
    with pytest.raises(TypeError, match=r"unknown training options: \['learning_rate'\]"):
        finetune("synthetic", base=tiny_sam(), learning_rate=1e-3)


@pytest.fixture()
def disc_folder(tmp_path):
    """``(base model file, folder of two disc images with labels)``."""
    from napari_sam.checkpoints import save_model

    base = save_model(tiny_sam(), tmp_path / "base.pt")
    folder = tmp_path / "data"
    folder.mkdir()
    for s in range(2):
        image, labels = disc_image(s)
        _write_tif(folder / f"img{s}_image.tif", image)
        _write_tif(folder / f"img{s}_labels.tif", labels)
    return base, folder


def _run_finetune(*argv):
    from napari_sam.training.cli import add_parser

    parser = argparse.ArgumentParser(prog="napari-sam")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["finetune", *map(str, argv)])
    return args.func(args)


def test_cli_finetune_runs_and_writes_a_model(tmp_path, disc_folder, capsys):
    base, folder = disc_folder
    out = tmp_path / "tuned.pt"
    assert _run_finetune("--images", folder, "--base", base, "--epochs", "1", "--out", out, "--device", "cpu",
                         "--seed", "1", "--recipe", "fast", "--focal-weight", "0.5", "--rounds", "2") == 0
    assert out.exists() and state_path_for(out).exists()
    assert "saved" in capsys.readouterr().out
    config = load_train_state(state_path_for(out))["config"]
    # The recipe's settings, the flags given overriding it.
    assert (config["lr"], config["loss_resolution"]) == (1e-3, "input")
    assert (config["focal_weight"], config["rounds"]) == (0.5, 2)


def test_cli_finetune_that_diverges_says_so_in_one_line_and_fails(tmp_path, disc_folder, capsys):
    base, folder = disc_folder
    out = tmp_path / "tuned.pt"
    assert _run_finetune("--images", folder, "--base", base, "--epochs", "3", "--out", out, "--device", "cpu",
                         "--lr", "1e8", "--rounds", "2") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("napari-sam finetune: error: training diverged at step ")
    assert not out.exists()


def _finetune_cli(*argv):
    return _run_finetune("--synthetic", "--epochs", "1", "--device", "cpu", *argv)


def test_cli_finetune_never_replaces_a_model_or_a_run_unasked(tmp_path, capsys):
    from napari_sam.checkpoints import metadata_path, save_model

    base = save_model(tiny_sam(), tmp_path / "base.pt")
    before = base.read_bytes()
    # --out over the base model, even with --overwrite
    assert _finetune_cli("--base", base, "--out", base, "--overwrite") == 2
    assert "--base" in capsys.readouterr().err and base.read_bytes() == before
    # an existing model
    other = save_model(tiny_sam(), tmp_path / "other.pt")
    kept = other.read_bytes(), metadata_path(other).read_text()
    assert _finetune_cli("--base", base, "--out", other) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (other.read_bytes(), metadata_path(other).read_text()) == kept
    # an interrupted run's state when --resume was forgotten
    out = tmp_path / "new.pt"
    state_path_for(out).write_bytes(b"state of an unfinished run")
    assert _finetune_cli("--base", base, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err and state_path_for(out).read_bytes() == b"state of an unfinished run"


def test_cli_finetune_fails_before_training_on_a_bad_out(tmp_path, capsys):
    assert _finetune_cli("--out", tmp_path / "missing" / "m.pt") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _finetune_cli("--out", tmp_path / "m.json") == 2
    assert "model file" in capsys.readouterr().err
    assert _finetune_cli("--out", tmp_path) == 2
    assert "folder" in capsys.readouterr().err
