"""Write a model as a BioImage.IO model package (a zip with ``rdf.yaml``, format 0.5).

The package holds the weights (a plain state dict), a test image with a point prompt and
the outputs this model gives for them, a cover picture, a README with a validation
section, a conda environment and the citations (SAM, MobileSAM where it applies, this
project). Its architecture is :class:`~napari_sam.export.bioimageio_model.BioimageioSam`,
so a consumer needs ``napari-samscope`` installed (the environment file says so).

Writing needs no BioImage.IO library; ``bioimageio.core`` validates the result
(``bioimageio test PACKAGE.zip``; the test suite does it offline).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..files import atomic_write
from .bioimageio_model import CANDIDATES, BioimageioSam

FORMAT_VERSION = "0.5.4"
DISTRIBUTION = "napari-samscope"
PROJECT_URL = "https://github.com/napari-samscope/napari-samscope"
IMPORT_FROM = "napari_sam.export.bioimageio_model"
#: The sample image and the click the README's quick start uses (row, col).
SAMPLE_POINT = (145.0, 161.0)

CITE_SAM = {
    "text": "Kirillov, A. et al. Segment Anything. ICCV 2023.",
    "doi": "10.48550/arXiv.2304.02643",
}
CITE_MOBILE_SAM = {
    "text": "Zhang, C. et al. Faster Segment Anything: Towards Lightweight SAM for Mobile Applications. 2023.",
    "doi": "10.48550/arXiv.2306.14289",
}
CITE_PROJECT = {
    "text": "napari-samscope: Segment Anything for scientific and microscopy images, in napari and headless.",
    "url": PROJECT_URL,
}

# Weights and their licence by lineage: the official checkpoints are Apache-2.0 (SAM,
# MobileSAM); the bundled default model was trained from scratch by this project.
_OFFICIAL = {"vit_b", "vit_l", "vit_h", "vit_t"}
_PROJECT = {"default", "default-broad"}


def export_bioimageio(
    model: Any,
    out: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-samscope contributors",),
    license: str | None = None,
    image: np.ndarray | None = None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a BioImage.IO model package ``out`` (a ``.zip``).

    Parameters
    ----------
    model : Sam, str or path
        A loaded model, a model name (``"default"``, ``"vit_b"``...) or a checkpoint file.
    out : str or path
        The package file to write; its folder must exist.
    name, description : str, optional
        Shown by model zoos. Default: from the model's metadata. The name may hold only
        letters, digits, spaces and ``_+-()``, 5 to 128 characters.
    authors : sequence of str
        The people who trained the weights.
    license : str, optional
        SPDX id of the weights' licence. Default: Apache-2.0 for the official SAM and
        MobileSAM checkpoints and models fine-tuned from them, BSD-3-Clause for this
        project's default model and its fine-tunes; other models need it given.
    image : (H, W) or (H, W, 3) array, optional
        The test image (any dtype). Default: the bundled sample nuclei image.
    points : (N, 2) of (row, col), optional
        The test prompt on ``image``; needed with ``image``. Default: one click on a
        nucleus of the sample image.
    point_labels : (N,) of 1 / 0, optional
        Default: all positive.
    overwrite : bool
        Replace ``out`` if it exists.

    Returns
    -------
    The path of the package.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    ValueError
        An image without points, a name with characters model zoos refuse, or an unknown
        lineage without ``license``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if out.suffix.lower() != ".zip":
        raise ValueError(f"a BioImage.IO package is a .zip file, got {out.name!r}")
    if image is not None and points is None:
        raise ValueError("give points=[(row, col), ...] on your test image (the prompt the test runs)")
    if isinstance(model, (str, Path)):
        from .. import load_model

        model = load_model(model, device="cpu")
    lineage = _lineage(model)
    license = license or _license(lineage)
    name = name or _default_name(model)
    _check_name(name)

    wrapper = BioimageioSam.wrapping(model)
    inputs = _test_inputs(image, points, point_labels)
    with torch.inference_mode():
        masks, scores = wrapper(*(torch.from_numpy(inputs[key]) for key in ("image", "points", "point_labels")))
    outputs = {"masks": masks.cpu().numpy(), "scores": scores.cpu().numpy()}

    with tempfile.TemporaryDirectory(prefix="napari-sam-export-") as folder:
        folder = Path(folder)
        torch.save({f"sam.{key}": value.detach().cpu() for key, value in model.state_dict().items()},
                   folder / "weights.pt")
        for key, array in {**inputs, **outputs}.items():
            np.save(folder / f"{key}.npy", array)
        _write_cover(folder / "cover.png", inputs, outputs)
        _write_sample(folder / "sample_image.png", inputs)
        (folder / "README.md").write_text(_readme(name, model, lineage, license), encoding="utf-8")
        (folder / "environment.yaml").write_text(_environment(), encoding="utf-8")
        rdf = _rdf(model, name, description, authors, license, lineage, inputs, folder)
        (folder / "rdf.yaml").write_text(_yaml(rdf), encoding="utf-8")

        def write(stream) -> None:
            with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as package:
                for path in sorted(folder.iterdir()):
                    package.write(path, path.name)

        return atomic_write(out, write)


def _lineage(model) -> set[str]:
    """Names the model descends from: its own and its base model's (fine-tunes)."""
    metadata = dict(getattr(model, "metadata", {}) or {})
    names = {str(metadata.get(key, "")) for key in ("name", "base_model", "model_type")}
    names.add(str(getattr(model, "config", {}).get("name", "")))
    # "custom" is what build_sam calls any architecture given as a dict: it names no lineage.
    return {Path(n).stem if n.endswith((".pt", ".pth")) else n for n in names if n and n != "custom"}


def _license(lineage: set[str]) -> str:
    if lineage & _OFFICIAL:
        return "Apache-2.0"
    if lineage & _PROJECT:
        return "BSD-3-Clause"
    raise ValueError(
        f"cannot tell the licence of weights descending from {sorted(lineage) or 'an unnamed model'}; "
        "pass license='SPDX-ID' (--license)"
    )


def _default_name(model) -> str:
    metadata = dict(getattr(model, "metadata", {}) or {})
    base = metadata.get("base_model")
    own = metadata.get("name") or getattr(model, "config", {}).get("name") or "custom"
    if base:
        return f"napari-samscope {Path(str(base)).stem} fine-tuned"
    return f"napari-samscope {own}"


def _check_name(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    if not 5 <= len(name) <= 128 or set(name) - allowed:
        raise ValueError(
            f"package name {name!r} must be 5 to 128 letters, digits, spaces or _+-() (BioImage.IO's rule)"
        )


def _test_inputs(image, points, point_labels) -> dict[str, np.ndarray]:
    if image is None:
        from ..synthetic import sample_nuclei

        image, points = sample_nuclei().image, [SAMPLE_POINT]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"test image must be (H, W) or (H, W, 3), got {image.shape}")
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    labels = np.ones(len(points), np.int64) if point_labels is None else np.asarray(point_labels, np.int64)
    if labels.shape != (len(points),):
        raise ValueError(f"point_labels must have one label per point ({len(points)}), got {labels.shape}")
    return {
        "image": np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32),
        "points": points[None],
        "point_labels": labels[None],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file(folder: Path, filename: str) -> dict[str, str]:
    return {"source": filename, "sha256": _sha256(folder / filename)}


def _rdf(model, name, description, authors, license, lineage, inputs, folder: Path) -> dict[str, Any]:
    from .. import __version__

    metadata = dict(getattr(model, "metadata", {}) or {})
    height, width = inputs["image"].shape[-2:]
    space = {"type": "space", "unit": None}
    cite = [CITE_SAM] + ([CITE_MOBILE_SAM] if "vit_t" in lineage else []) + [CITE_PROJECT]
    description = description or str(
        metadata.get("description") or "Segment Anything for microscopy: one object per point prompt"
    )
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description[:1024],
        "authors": [{"name": author} for author in authors],
        "cite": cite,
        "license": license,
        "git_repo": PROJECT_URL,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["segment-anything", "interactive-segmentation", "instance-segmentation", "microscopy",
                 "2d", "pytorch", "napari"],
        "version": "1",
        "inputs": [
            {
                "id": "image",
                "description": "RGB plane, any range (normalised inside as the plugin does); grayscale: repeat it",
                "axes": [
                    {"type": "batch", "size": 1},
                    {"type": "channel", "channel_names": ["red", "green", "blue"]},
                    {**space, "id": "y", "size": {"min": 16, "step": 1}},
                    {**space, "id": "x", "size": {"min": 16, "step": 1}},
                ],
                "test_tensor": _file(folder, "image.npy"),
                "sample_tensor": _file(folder, "sample_image.png"),
                "data": {"type": "float32"},
            },
            {
                "id": "points",
                "description": "point prompts, (row, col) in image pixels",
                "axes": [
                    {"type": "batch", "size": 1},
                    {"type": "index", "id": "point", "size": {"min": 1, "step": 1}},
                    {"type": "channel", "channel_names": ["row", "col"]},
                ],
                "test_tensor": _file(folder, "points.npy"),
                "data": {"type": "float32"},
            },
            {
                "id": "point_labels",
                "description": "1 for a positive point (on the object), 0 for a negative one",
                "axes": [
                    {"type": "batch", "size": 1},
                    {"type": "index", "id": "point", "size": {"tensor_id": "points", "axis_id": "point"}},
                ],
                "test_tensor": _file(folder, "point_labels.npy"),
                "data": {"type": "int64"},
            },
        ],
        "outputs": [
            {
                "id": "masks",
                "description": f"{CANDIDATES} candidate masks (1 inside), best predicted IoU first",
                "axes": [
                    {"type": "batch", "size": 1},
                    {"type": "channel", "channel_names": [f"candidate{i}" for i in range(1, CANDIDATES + 1)]},
                    {**space, "id": "y", "size": {"tensor_id": "image", "axis_id": "y"}},
                    {**space, "id": "x", "size": {"tensor_id": "image", "axis_id": "x"}},
                ],
                "test_tensor": _file(folder, "masks.npy"),
                "data": {"type": "uint8", "values": [0, 1]},
            },
            {
                "id": "scores",
                "description": "predicted IoU of each candidate mask",
                "axes": [
                    {"type": "batch", "size": 1},
                    {"type": "channel", "channel_names": [f"candidate{i}" for i in range(1, CANDIDATES + 1)]},
                ],
                "test_tensor": _file(folder, "scores.npy"),
                "data": {"type": "float32"},
            },
        ],
        "weights": {
            "pytorch_state_dict": {
                **_file(folder, "weights.pt"),
                "architecture": {
                    "callable": "BioimageioSam",
                    "import_from": IMPORT_FROM,
                    "kwargs": {"config": _plain(dict(model.config))},
                },
                "pytorch_version": torch.__version__.split("+")[0],
                "dependencies": _file(folder, "environment.yaml"),
            }
        },
        "config": {
            "napari-samscope": {
                "version": __version__,
                "model": _plain({k: v for k, v in metadata.items() if k not in ("checkpoint", "config")}),
                "test_image_size": [int(height), int(width)],
            }
        },
    }


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy: tuples to lists, numpy scalars to Python numbers, paths to str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _environment() -> str:
    from .. import __version__

    # A released version pins itself; a development build names the distribution only.
    pin = f"=={__version__}" if "dev" not in __version__ and "+" not in __version__ else ""
    return (
        f"name: {DISTRIBUTION}\n"
        "channels:\n  - conda-forge\n"
        "dependencies:\n"
        "  - python>=3.10\n"
        "  - pytorch>=2.1\n"
        "  - pip\n"
        "  - pip:\n"
        f"      - {DISTRIBUTION}{pin}\n"
    )


def _readme(name: str, model, lineage: set[str], license: str) -> str:
    metadata = dict(getattr(model, "metadata", {}) or {})
    lines = [
        f"# {name}",
        "",
        "Segment Anything (SAM) for microscopy, exported by napari-samscope "
        f"([{PROJECT_URL}]({PROJECT_URL})). One call segments one object: give the image and one or "
        "more point prompts; get three candidate masks, best first, and their predicted IoU.",
        "",
        "## Inputs and outputs",
        "",
        "- `image` (1, 3, H, W) float32: RGB of any range, normalised inside exactly as the napari "
        "plugin does (uint8 unchanged; other data from the 0.5 / 99.5 percentiles to 0..255). "
        "Repeat a grayscale plane into the three channels.",
        "- `points` (1, N, 2) float32: (row, col) in image pixels; `point_labels` (1, N) int64: "
        "1 on the object, 0 off it.",
        f"- `masks` (1, {CANDIDATES}, H, W) uint8 (1 inside) and `scores` (1, {CANDIDATES}) float32.",
        "",
        "The architecture is `BioimageioSam` from `napari_sam.export.bioimageio_model`: "
        "`pip install napari-samscope` (see `environment.yaml`).",
        "",
        "## Model",
        "",
        f"Lineage: {', '.join(sorted(lineage)) or 'unknown'}; weights licence: {license}.",
    ]
    for key in ("description", "base_model", "trained", "metrics", "date"):
        if metadata.get(key) not in (None, ""):
            lines.append(f"- {key}: {_plain(metadata[key])}")
    lines += [
        "",
        "## Validation",
        "",
        "The test tensors are the bundled sample image (or the exporter's own image) with one "
        "click; `bioimageio test` re-runs the model on them and compares its masks and scores "
        "with the stored ones. Quality on real data: napari-samscope's docs/benchmarks.md "
        "(mean IoU per image source and prompt type).",
        "",
    ]
    return "\n".join(lines)


def _write_sample(path: Path, inputs: dict[str, np.ndarray]) -> None:
    """The test image as a PNG (the sample model zoos show; readable by imageio)."""
    from PIL import Image

    from ..imaging import to_rgb_uint8

    Image.fromarray(to_rgb_uint8(inputs["image"][0].transpose(1, 2, 0))).save(path, format="PNG")


def _write_cover(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """A 2:1 picture: the test image, and the same with the best mask and the clicks on it."""
    from PIL import Image, ImageDraw

    from ..imaging import to_rgb_uint8

    rgb = to_rgb_uint8(inputs["image"][0].transpose(1, 2, 0))
    overlay = rgb.astype(np.float32)
    best = outputs["masks"][0, 0].astype(bool)
    overlay[best] = 0.55 * overlay[best] + 0.45 * np.array([255, 0, 200], np.float32)
    height, width = rgb.shape[:2]
    side = max(height, width)  # each half square, so the cover is 2:1 as model zoos ask
    top, left = (side - height) // 2, (side - width) // 2
    cover = Image.new("RGB", (2 * side, side))
    cover.paste(Image.fromarray(rgb), (left, top))
    right = Image.fromarray(overlay.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(right)
    radius = max(2, min(height, width) // 64)
    for (row, col), label in zip(inputs["points"][0], inputs["point_labels"][0]):
        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse((col - radius, row - radius, col + radius, row + radius), fill=colour, outline=(0, 0, 0))
    cover.paste(right, (side + left, top))
    longest = max(cover.size)
    if longest > 1024:  # model zoos ask for covers under 500 kB
        cover = cover.resize((cover.width * 1024 // longest, cover.height * 1024 // longest))
    buffer = io.BytesIO()
    cover.save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())

