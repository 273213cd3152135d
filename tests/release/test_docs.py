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
