"""The named models: where each file comes from, its sha256, and where it lives here.

The sha256 values and where they were confirmed are listed in docs/models.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pooch

__all__ = ["BUNDLED_DIR", "CACHE_ENV_VAR", "MODELS", "ModelSpec", "bundled_path", "cache_dir", "model_spec"]

CACHE_ENV_VAR = "NAPARI_SAM_CACHE_DIR"

#: The folder of the models shipped inside the package.
BUNDLED_DIR = Path(__file__).parent.parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """One named model.

    Attributes
    ----------
    name : str
        The registry name, e.g. ``"vit_b"``.
    model_type : str or None
        The architecture (a key of ``napari_sam.model.MODEL_CONFIGS``), or None when the
        file's sidecar metadata says it (the bundled default model).
    filename : str
        File name in the cache (or in the package, for bundled models).
    url : str or None
        Where to download it from; None for files shipped inside the package.
    sha256 : str or None
        Expected sha256 of the file, lowercase hex; None for bundled files.
    size_bytes : int or None
        Expected size, for messages only.
    description : str
    """

    name: str
    model_type: str | None
    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    description: str

    @property
    def bundled(self) -> bool:
        return self.url is None


_SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MOBILE_SAM_URL = "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="default",
            model_type=None,
            filename="default.pt",
            url=None,
            sha256=None,
            size_bytes=None,
            description="Compact model trained by this project, shipped inside the package.",
        ),
        ModelSpec(
            name="vit_b",
            model_type="vit_b",
            filename="sam_vit_b_01ec64.pth",
            url=_SAM_BASE_URL + "sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
            description="Segment Anything ViT-B (Meta AI, Apache-2.0).",
        ),
        ModelSpec(
            name="vit_l",
            model_type="vit_l",
            filename="sam_vit_l_0b3195.pth",
            url=_SAM_BASE_URL + "sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_bytes=1_249_524_607,
            description="Segment Anything ViT-L (Meta AI, Apache-2.0).",
        ),
        ModelSpec(
            name="vit_h",
            model_type="vit_h",
            filename="sam_vit_h_4b8939.pth",
            url=_SAM_BASE_URL + "sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2_564_550_879,
            description="Segment Anything ViT-H (Meta AI, Apache-2.0).",
        ),
        ModelSpec(
            name="vit_t",
            model_type="vit_t",
            filename="mobile_sam.pt",
            url=_MOBILE_SAM_URL,
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size_bytes=40_728_226,
            description="MobileSAM: TinyViT encoder distilled from SAM ViT-H (Apache-2.0).",
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a named model; ValueError listing the names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; named models are {sorted(MODELS)}") from None


def cache_dir() -> Path:
    """The folder downloaded weights live in.

    ``$NAPARI_SAM_CACHE_DIR`` when set, else the user cache folder of the operating system
    (``~/.cache/napari-sam`` on Linux, ``~/Library/Caches/napari-sam`` on macOS,
    ``%LOCALAPPDATA%\\napari-sam\\napari-sam\\Cache`` on Windows). Not created here.
    """
    override = os.environ.get(CACHE_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(pooch.os_cache("napari-sam"))


def bundled_path(model: ModelSpec) -> Path:
    """The file of a model shipped inside the package.

    Raises
    ------
    FileNotFoundError
        When this installation does not have it; the message names the alternatives.
    """
    path = BUNDLED_DIR / model.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"The bundled model {model.name!r} is not part of this installation: {path} does "
            "not exist. Reinstall napari-sam from a release that ships it, or use another "
            f"model, e.g. load_model('vit_b') (named models: {sorted(MODELS)}), or a local "
            "checkpoint file with load_model('/path/to/file.pt')."
        )
    return path
