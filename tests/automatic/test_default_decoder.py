"""The bundled default model with its shipped instance decoder (weights/default_decoder.pt): found
without options, tuned, small, and good enough on a real crop it never saw.

The crop is tests/data/bbbc007_crop_image.tif (300 x 300 of BBBC007 17P1_POS0007, 57 labelled
nuclei; see tests/data/README.md): neither training (generated images) nor tuning (generated
planes) used it. The floors are the measured scores minus a margin (docs/models.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam.automatic import AutomaticSegmenter
from napari_sam.automatic.loading import read_decoder_info
from napari_sam.automatic.scoring import counts
from napari_sam.checkpoints.download import sha256_of

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "src" / "napari_sam" / "weights"
DECODER = WEIGHTS / "default_decoder.pt"
DATA = ROOT / "tests" / "data"

# Measured with the shipped files: F1@0.5 0.908, mean AP 0.509 (57 nuclei; docs/models.md); floors 0.05 below.
F1_FLOOR = 0.86
MAP_FLOOR = 0.46


@pytest.fixture(scope="module")
def segmenter():
    return AutomaticSegmenter.load("default", device="cpu")


def test_the_shipped_decoder_belongs_to_the_shipped_model_and_is_small():
    info = read_decoder_info(DECODER)
    assert info["encoder_sha256"] == sha256_of(WEIGHTS / "default.pt"), (
        "default.pt changed: retrain the decoder with `python -m napari_sam.automatic.training "
        "--model src/napari_sam/weights/default.pt --out src/napari_sam/weights/default_decoder.pt`")
    assert DECODER.stat().st_size < 1_000_000
    assert info["watershed"] is not None and info["training"]["command"].startswith("python -m")


def test_the_default_model_segments_with_its_decoder_and_tuned_options(segmenter):
    assert segmenter.mode == "ais"
    assert segmenter.watershed == segmenter.decoder.watershed_options
    assert segmenter.decoder.conventions == "napari_sam"  # the model's own normaliser, as its prompts


def test_a_real_crop_is_segmented_above_the_measured_floor(segmenter):
    image = tifffile.imread(DATA / "bbbc007_crop_image.tif")
    truth = tifffile.imread(DATA / "bbbc007_crop_labels.tif")
    labels = segmenter.segment(image)
    assert labels.shape == image.shape and labels.dtype == np.uint32
    score = counts(labels, truth)
    assert score.f1(0.5) >= F1_FLOOR, score
    assert score.mean_ap() >= MAP_FLOOR, score


def test_segment_all_without_options_writes_the_decoders_instances(tmp_path, segmenter):
    out = tmp_path / "labels.tif"
    done = subprocess.run([sys.executable, "-m", "napari_sam.cli", "segment-all", str(DATA / "bbbc007_crop_image.tif"),
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    expected = segmenter.segment(tifffile.imread(DATA / "bbbc007_crop_image.tif"))
    np.testing.assert_array_equal(tifffile.imread(out), expected)
