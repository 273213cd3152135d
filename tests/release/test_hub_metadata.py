"""What the napari hub and PyPI show: hub config, description, URLs, classifiers, licence, changelog."""

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "napari-samscope"

pytestmark = pytest.mark.skipif(not (ROOT / ".napari-hub").is_dir(), reason="not running from a source checkout")


def test_hub_config_is_public_with_summary_labels_and_links():
    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert config["visibility"] == "public"
    assert 20 < len(config["summary"]) <= 250
    assert config["labels"]["ontology"].startswith("EDAM-BIOIMAGING")
    assert "Image segmentation" in config["labels"]["terms"]
    assert {"Project Site", "Documentation", "Report Issues", "Source Code"} <= set(config["project_urls"])


def test_hub_description_names_the_distribution_and_the_conflict():
    text = (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()
    assert text.startswith(f"# {DISTRIBUTION}\n")
    assert "MIC-DKFZ" in text and "napari_sam" in text
    assert re.search(r"pip install \"torch==[\d.]+\" \"napari-samscope\[napari\]\"", text)


def test_project_urls_agree_with_the_hub_links():
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    hub = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())["project_urls"]
    assert urls["Source"] == hub["Source Code"] == hub["Project Site"]
    assert urls["Bug Tracker"] == hub["Report Issues"]


def test_distribution_metadata_is_what_pypi_and_the_hub_filter_on():
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: napari" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata["Requires-Python"] == ">=3.10"


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert "napari-samscope" in text
