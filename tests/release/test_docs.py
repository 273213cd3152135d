"""The documentation site builds strictly: a broken link or an unreadable docstring fails it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (ROOT / "mkdocs.yml").is_file(), reason="not running from a source checkout")


def test_mkdocs_builds_strictly_with_the_api_reference(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("load_model", "Predictor", "set_image", "export_bioimageio", "progress_bar"):
        assert name in api, name
    assert (site / "images" / "widget.png").is_file()
    assert (site / "usage" / "index.html").is_file()


def test_figures_script_renders_every_figure(tmp_path):
    pytest.importorskip("matplotlib")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_figures.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    names = {"loop.png", "quality.png", "speed.png", "finetune_curves.png"}
    if (ROOT.parent / "shared" / "eval").is_dir():  # the labelled evaluation images
        names.add("modalities.png")
    assert {p.name for p in tmp_path.iterdir()} == names
    from PIL import Image

    for name in names:
        width, height = Image.open(tmp_path / name).size
        assert width > 400 and height > 200, name
    # The committed pictures are the script's (same names; the docs pages show them).
    assert names <= {p.name for p in (ROOT / "docs" / "images").iterdir()}
