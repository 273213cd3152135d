"""BioImage.IO export: a package that the spec validates and that reproduces its own test outputs."""

import importlib
import zipfile

import numpy as np
import pytest
import torch
import yaml

import napari_sam
from napari_sam.cli import main
from napari_sam.export import export_model
from napari_sam.export.bioimageio import CITE_MOBILE_SAM, CITE_SAM
from napari_sam.export.bioimageio_model import BioimageioSam


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The bundled default model exported through the command line, as users do it."""
    out = tmp_path_factory.mktemp("bioimageio") / "default.zip"
    assert main(["export", "default", "--format", "bioimageio", "--out", str(out)]) == 0
    return out


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def _tensor(package, name: str) -> np.ndarray:
    import io

    with zipfile.ZipFile(package) as archive:
        return np.load(io.BytesIO(archive.read(name)))


def test_package_holds_weights_rdf_tests_cover_and_docs(package):
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"rdf.yaml", "weights.pt", "cover.png", "README.md", "environment.yaml", "image.npy", "points.npy",
            "point_labels.npy", "masks.npy", "scores.npy"} <= names
    rdf = _rdf(package)
    assert rdf["type"] == "model" and rdf["license"] == "BSD-3-Clause"
    assert CITE_SAM in rdf["cite"] and CITE_MOBILE_SAM not in rdf["cite"]
    assert any("napari-samscope" in entry["text"] for entry in rdf["cite"])
    axes = {t["id"]: [a.get("id", a["type"]) for a in t["axes"]] for t in rdf["inputs"] + rdf["outputs"]}
    assert axes == {
        "image": ["batch", "channel", "y", "x"],
        "points": ["batch", "point", "channel"],
        "point_labels": ["batch", "point"],
        "masks": ["batch", "channel", "y", "x"],
        "scores": ["batch", "channel"],
    }
    architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (architecture["import_from"], architecture["callable"]) == (
        "napari_sam.export.bioimageio_model", "BioimageioSam")


def test_bioimageio_spec_validates_the_package_offline(package):
    spec = pytest.importorskip("bioimageio.spec")
    # perform_io_checks: every file in the package is opened and its sha256 checked.
    description = spec.load_description(package, perform_io_checks=True)
    summary = description.validation_summary
    assert summary.status in ("valid-format", "passed"), summary.format()
    assert description.name == "napari-samscope default"


def test_the_described_architecture_reproduces_the_test_outputs(package):
    rdf = _rdf(package)
    weights = rdf["weights"]["pytorch_state_dict"]
    architecture = weights["architecture"]
    module = getattr(importlib.import_module(architecture["import_from"]), architecture["callable"])
    model = module(**architecture["kwargs"]).eval()
    with zipfile.ZipFile(package) as archive, archive.open("weights.pt") as stream:
        import io

        state = torch.load(io.BytesIO(stream.read()), weights_only=True)
    model.load_state_dict(state, strict=True)
    inputs = [torch.from_numpy(_tensor(package, f"{t['id']}.npy")) for t in rdf["inputs"]]
    with torch.no_grad():
        masks, scores = model(*inputs)
    np.testing.assert_array_equal(masks.numpy(), _tensor(package, "masks.npy"))
    np.testing.assert_allclose(scores.numpy(), _tensor(package, "scores.npy"), rtol=1e-5, atol=1e-6)
    assert masks.shape == (1, 3, 256, 256) and masks[0, 0].sum() > 100  # one nucleus, best first


@pytest.mark.slow
def test_bioimageio_core_runs_the_package_tests(package):
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package)
    assert summary.status == "passed", summary.format()


def test_the_package_gives_the_plugins_masks(package):
    model = napari_sam.load_model("default")
    image = _tensor(package, "image.npy")[0].transpose(1, 2, 0)
    predictor = napari_sam.Predictor(model)
    predictor.set_image(image)
    candidates = predictor.predict(points=_tensor(package, "points.npy")[0], multimask=True)
    np.testing.assert_array_equal(_tensor(package, "masks.npy")[0].astype(bool), candidates.masks)


def test_prompts_off_the_image_give_empty_candidates(tiny_model):
    wrapper = BioimageioSam.wrapping(tiny_model).eval()
    image = torch.rand(1, 3, 20, 24) * 255
    masks, scores = wrapper(image, torch.tensor([[[40.0, 5.0]]]), torch.tensor([[1]]))
    assert masks.shape == (1, 3, 20, 24) and masks.sum() == 0 and scores.sum() == 0


def test_a_fine_tuned_model_keeps_its_lineage_licence_and_name(tmp_path, tiny_model):
    tiny_model.metadata = {"base_model": "vit_t", "trained": "decoder"}
    try:
        out = export_model(tiny_model, tmp_path / "tuned.zip", image=np.zeros((40, 50), np.uint16),
                           points=[(20, 25)])
    finally:
        tiny_model.metadata = {}
    rdf = _rdf(out)
    assert rdf["license"] == "Apache-2.0"
    assert CITE_SAM in rdf["cite"] and CITE_MOBILE_SAM in rdf["cite"]
    assert rdf["name"] == "napari-samscope vit_t fine-tuned"
    assert _tensor(out, "image.npy").shape == (1, 3, 40, 50)


def test_unknown_lineage_needs_a_licence_and_nothing_is_written(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="license"):
        export_model(tiny_model, tmp_path / "x.zip")
    out = export_model(tiny_model, tmp_path / "x.zip", license="MIT", name="my nuclei model")
    assert _rdf(out)["license"] == "MIT"
    with pytest.raises(FileExistsError):
        export_model(tiny_model, out, license="MIT")
    with pytest.raises(ValueError, match="letters"):
        export_model(tiny_model, tmp_path / "y.zip", license="MIT", name="bad/name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip"]


def test_export_command_needs_points_with_its_own_image(tmp_path):
    with pytest.raises(SystemExit, match="--point"):
        main(["export", "default", "--out", str(tmp_path / "x.zip"), "--image", str(tmp_path / "img.tif")])
