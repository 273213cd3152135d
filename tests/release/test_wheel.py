"""The wheel as users get it: built from the sdist, accepted by twine, installed into a clean venv.

The clean venv reuses this environment's dependencies (torch is large) through a folder of
links that leaves out this project's own editable install, so what runs is the wheel alone.
"""

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "napari-samscope"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="builds from a git checkout (setuptools-scm)"),
]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # Default `python -m build`: the sdist, then the wheel built from the unpacked sdist.
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (path,) = dist.glob("napari_samscope-*-py3-none-any.whl")
    return path


def test_build_makes_one_sdist_and_one_wheel_that_twine_accepts(dist):
    pytest.importorskip("twine")
    assert len(list(dist.glob("napari_samscope-*.tar.gz"))) == 1
    assert len(list(dist.glob("napari_samscope-*.whl"))) == 1
    _run([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())])


def test_wheel_holds_the_manifest_weights_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (info,) = {name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA")}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        manifest = archive.read("napari_sam/napari.yaml").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert {"napari_sam/weights/default.pt", "napari_sam/weights/default.json",
            "napari_sam/export/bioimageio_model.py"} <= names
    assert manifest == (ROOT / "napari.yaml").read_text()  # the file, not a dangling link
    assert "napari-samscope = napari_sam:napari.yaml" in entry_points
    assert "napari-sam = napari_sam.cli:main" in entry_points
    assert f"Name: {DISTRIBUTION}" in metadata
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in names)


def _clean_venv(path: Path) -> Path:
    """A venv whose only napari_sam is the one installed into it; other packages are linked."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = Path(_run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    links = path / "dependencies"
    links.mkdir()
    own = ("napari_sam", "napari_samscope", "__editable__", "napari-sam")
    for entry in ours.iterdir():
        if not entry.name.startswith(own) and not entry.name.endswith(".pth"):
            (links / entry.name).symlink_to(entry)
    (site / "dependencies.pth").write_text(f"{links}\n")
    return python


def test_clean_venv_installs_the_wheel_and_runs_the_main_job(wheel, tmp_path):
    if os.name == "nt":
        pytest.skip("the linked-dependencies venv uses symlinks")
    python = _clean_venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    bin_dir = python.parent

    where = _run([python, "-c", "import napari_sam, json; print(json.dumps([napari_sam.__file__, "
                  "napari_sam.__version__]))"], cwd=tmp_path).stdout
    module, version = json.loads(where)
    assert Path(module).is_relative_to(tmp_path / "venv"), module  # the wheel's, not the checkout's
    assert wheel.name.startswith(f"napari_samscope-{version}-")
    assert _run([bin_dir / "napari-sam", "--version"]).stdout.strip() == f"napari-sam {version} (napari-samscope)"

    discovered = _run([python, "-c", (
        "import json, npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "m = pm.get_manifest('napari-samscope')\n"
        "print(json.dumps({'widgets': [w.display_name for w in m.contributions.widgets],\n"
        "                  'samples': [s.key for s in m.contributions.sample_data],\n"
        "                  'readers': [r.command for r in m.contributions.readers]}))\n"
    )], cwd=tmp_path).stdout
    contributions = json.loads(discovered.strip().splitlines()[-1])
    assert contributions["widgets"] == ["Annotate (Segment Anything)", "Fine-tune (Segment Anything)"]
    assert contributions["samples"] == ["nuclei", "nuclei_stack"]
    assert contributions["readers"] == ["napari-samscope.get_reader"]
    _run([python, "-m", "npe2", "validate", DISTRIBUTION], cwd=tmp_path)

    # The README's main job, from the alias command as well.
    for command in ("napari-sam", DISTRIBUTION):
        out = tmp_path / f"{command}.tif"
        done = _run([bin_dir / command, "segment", "--sample", "nuclei", "--point", "145,161", "--out", out],
                    cwd=tmp_path)
        assert done.stdout.strip().splitlines()[-1].startswith(f"napari-sam segment: wrote {out}: 1 object")
        import tifffile

        labels = tifffile.imread(out)
        assert labels.shape == (256, 256) and labels[145, 161] == 1 and 100 < (labels == 1).sum() < 5000
