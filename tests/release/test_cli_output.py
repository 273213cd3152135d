"""Command-line output for logs: no carriage-return floods, --quiet, --version, one summary line."""

import io
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_sam
from napari_sam import console
from napari_sam.cli import main


@pytest.fixture(autouse=True)
def _loud():
    console.set_quiet(False)
    yield
    console.set_quiet(False)


def test_line_progress_writes_a_line_per_ten_percent_and_no_carriage_return():
    log = io.StringIO()
    bar = console.progress_bar(total=1000, desc="finetune", unit="step", file=log)
    assert isinstance(bar, console.LineProgress)
    for step in range(1000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines
    assert lines[0].startswith("finetune: 100/1000 steps (10%)")
    assert lines[-1].startswith("finetune: 1000/1000 steps (100%)") and "loss=0.0010" in lines[-1]


def test_line_progress_writes_a_line_after_every_s_without_a_percent_step():
    log = io.StringIO()
    bar = console.LineProgress(None, desc="embedding", unit="plane", file=log, every_s=0.0)
    bar.update(1)
    bar.update(1)
    bar.write("a message")
    bar.close()
    assert log.getvalue().splitlines() == ["embedding: 1 planes, 0 s", "embedding: 2 planes, 0 s", "a message"]


def test_resumed_progress_counts_from_its_initial_value():
    log = io.StringIO()
    with console.progress_bar(total=10, initial=5, unit="step", file=log) as bar:
        bar.update(1)
    assert log.getvalue().splitlines() == ["6/10 steps (60%), 0 s"]


def test_progress_bar_is_silent_when_quiet():
    log = io.StringIO()
    console.set_quiet(True)
    bar = console.progress_bar(total=3, file=log)
    bar.update(3)
    bar.close()
    assert log.getvalue() == ""


def test_version_flag_prints_the_distribution_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-sam {napari_sam.__version__} (napari-samscope)"


def test_segment_ends_with_one_summary_line(tmp_path, capsys):
    out = tmp_path / "labels.tif"
    assert main(["segment", "--sample", "nuclei", "--point", "145,161", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 1
    assert lines[-1].startswith(f"napari-sam segment: wrote {out}: 1 object on a 256x256 plane (")
    assert tifffile.imread(out).max() == 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_only_the_summary_line(tmp_path, capsys, where):
    out = tmp_path / "labels.tif"
    args = ["segment", "--sample", "nuclei", "--point", "145,161", "--out", str(out)]
    args = ["--quiet", *args] if where == "before" else [*args, "-q"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [captured.out.strip()]
    assert captured.out.startswith("napari-sam segment: wrote")
    assert captured.err == ""
    assert out.exists()


def test_a_failing_command_ends_with_its_error_not_a_summary(tmp_path, capsys):
    with pytest.raises(SystemExit, match="at least one prompt"):
        main(["segment", "--sample", "nuclei", "--out", str(tmp_path / "x.tif")])
    assert capsys.readouterr().out == ""


def _disc_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.uint16)
    for label, (r, c) in enumerate(rng.integers(16, 48, size=(2, 2)), start=1):
        labels[((rows - r) ** 2 + (cols - c) ** 2 < 64) & (labels == 0)] = label
    image = (labels > 0) * 180 + rng.integers(0, 40, size=(64, 64))
    return image.astype(np.uint8), labels


def test_finetune_into_a_log_file_writes_lines_not_carriage_returns(tmp_path, model_file):
    folder = tmp_path / "data"
    folder.mkdir()
    for seed in range(3):
        image, labels = _disc_pair(seed)
        tifffile.imwrite(folder / f"img{seed}_image.tif", image)
        tifffile.imwrite(folder / f"img{seed}_labels.tif", labels)
    out = tmp_path / "tuned.pt"
    log = tmp_path / "finetune.log"
    with open(log, "w") as stderr:  # not a TTY, as in a batch job
        done = subprocess.run(
            [sys.executable, "-m", "napari_sam.cli", "finetune", "--images", str(folder), "--base", model_file,
             "--epochs", "2", "--out", str(out), "--device", "cpu", "--recipe", "fast", "--rounds", "1"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300,
        )
    assert done.returncode == 0, log.read_text()
    progress = log.read_text()
    assert "\r" not in progress
    assert progress.count("finetune: ") <= 11, progress
    assert "steps (100%)" in progress
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"napari-sam finetune: saved {out}") and "steps (" in last


def test_line_progress_follows_a_download_as_pooch_drives_it():
    # pooch: total set after creation, 1 kB updates, then reset(), update(total), close().
    log = io.StringIO()
    bar = console.LineProgress(desc="downloading w.pt", unit="B", file=log)
    bar.total = 5_000_000
    for _ in range(5_000_000 // 1024):
        bar.update(1024)
    bar.reset()
    bar.update(5_000_000)
    bar.close()
    lines = log.getvalue().splitlines()
    assert 9 <= len(lines) <= 11, lines
    assert lines[0].startswith("downloading w.pt: 0.5/5.0 MB (10%)")
    assert lines[-1].startswith("downloading w.pt: 5.0/5.0 MB (100%)")


def test_fetch_into_a_log_uses_line_progress(monkeypatch, tmp_path):
    from napari_sam.checkpoints import download

    seen = {}

    class Stop(Exception):
        pass

    class Downloader:
        def __init__(self, url, progressbar, algorithm):
            seen["progressbar"] = progressbar

    def retrieve(*args, **kwargs):
        raise Stop  # nothing is downloaded

    monkeypatch.setattr(download, "_HashRecordingDownloader", Downloader)
    monkeypatch.setattr(download.pooch, "retrieve", retrieve)
    monkeypatch.setenv(download.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY
    with pytest.raises(Stop):
        download.fetch_weights("vit_t")
    assert isinstance(seen["progressbar"], console.LineProgress)
    console.set_quiet(True)
    with pytest.raises(Stop):
        download.fetch_weights("vit_t")
    assert seen["progressbar"] is False
