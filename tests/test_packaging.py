"""The installed distribution is what napari and users see: manifest, pins, headless core."""

import importlib.metadata
import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The PyPI name `napari-sam` is another project's (MIC-DKFZ); ours is napari-samscope.
DISTRIBUTION = "napari-samscope"


def _manifest_entry_point() -> importlib.metadata.EntryPoint:
    eps = importlib.metadata.entry_points(group="napari.manifest")
    matches = [ep for ep in eps if ep.value == "napari_sam:napari.yaml"]
    assert len(matches) == 1, f"expected one napari_sam manifest entry point, got {matches}"
    assert matches[0].name == DISTRIBUTION
    return matches[0]


def test_manifest_entry_point_names_a_file_inside_the_package():
    module, _, filename = _manifest_entry_point().value.partition(":")
    assert (module, filename) == ("napari_sam", "napari.yaml")
    assert importlib.resources.files(module).joinpath(filename).is_file()


def test_npe2_loads_the_installed_manifest():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution(DISTRIBUTION)
    assert manifest.name == DISTRIBUTION
    assert manifest.package_metadata.version == importlib.metadata.version(DISTRIBUTION)
    # npe2 requires every contribution id to start with the plugin name.
    assert all(c.id.startswith(f"{DISTRIBUTION}.") for c in manifest.contributions.commands)


def test_package_version_is_the_distribution_version():
    import napari_sam

    assert napari_sam.__version__ == importlib.metadata.version(DISTRIBUTION)


def test_both_commands_are_installed():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("napari-sam") == "napari_sam.cli:main"
    assert scripts.get(DISTRIBUTION) == "napari_sam.cli:main"


def test_package_manifest_is_the_repository_manifest():
    # src/napari_sam/napari.yaml is a symlink to ./napari.yaml; an editor that saves by
    # rename would replace the link with a copy that then drifts.
    root = REPO_ROOT / "napari.yaml"
    packaged = REPO_ROOT / "src" / "napari_sam" / "napari.yaml"
    if not root.is_file():
        pytest.skip("not running from a source checkout")
    assert packaged.is_symlink(), f"{packaged} must stay a symlink to ../../napari.yaml"
    assert packaged.resolve() == root.resolve()


def test_install_commands_pin_the_same_torch():
    files = ["README.md", "scripts/test.sh", "tox.ini"]
    if not all((REPO_ROOT / f).is_file() for f in files):
        pytest.skip("not running from a source checkout")
    pins = {f: set(re.findall(r"torch==[0-9][\w.+]*", (REPO_ROOT / f).read_text())) for f in files}
    assert all(pins.values()), f"every install command names a torch pin: {pins}"
    assert len(set().union(*pins.values())) == 1, f"torch pins disagree: {pins}"


def test_core_imports_without_napari_or_qt():
    code = (
        "import sys, napari_sam\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt'})\n"
        "assert not gui, gui\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
