"""The named models: where each file comes from, its hash, and where it lives here.

Two kinds of files are named: models (:data:`MODELS`, loadable with ``load_model``) and
instance decoders (:data:`DECODERS`, paired with a model through :attr:`ModelSpec.decoder`).
The hash values and where they were confirmed are listed in docs/models.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pooch

__all__ = [
    "BUNDLED_DIR", "CACHE_ENV_VAR", "DECODERS", "MODELS", "ModelSpec", "bundled_path", "cache_dir", "file_spec",
    "model_spec",
]

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
        The architecture (a key of ``napari_sam.model.MODEL_CONFIGS``, or of
        ``napari_sam.model.sam2.SAM2_CONFIGS`` for SAM 2.1), or None when the file's
        sidecar metadata says it (the bundled default model).
    filename : str
        File name in the cache (or in the package, for bundled models).
    url : str or None
        Where to download it from; None for files shipped inside the package.
    sha256 : str or None
        Expected sha256 of the file, lowercase hex; None for bundled files and for files
        whose publisher gives another hash (``xxh128``).
    size_bytes : int or None
        Expected size, for messages only.
    description : str
    xxh128 : str or None
        Expected xxh128 of the file, lowercase hex (32 digits): the hash micro-sam's registry
        publishes; checked when ``sha256`` is None.
    decoder : str or None
        The key of :data:`DECODERS` holding this model's instance decoder (AIS), if any.
    source : str
        Where the URL and hash were read (package, version, file and lines).
    """

    name: str
    model_type: str | None
    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    description: str
    xxh128: str | None = None
    decoder: str | None = None
    source: str = ""

    @property
    def bundled(self) -> bool:
        return self.url is None

    @property
    def hash_algorithm(self) -> str | None:
        """``"sha256"`` or ``"xxh128"``: the hash the download is checked with (None when bundled)."""
        if self.sha256 is not None:
            return "sha256"
        return "xxh128" if self.xxh128 is not None else None

    @property
    def expected_hash(self) -> str | None:
        """The expected hash in :attr:`hash_algorithm`, lowercase hex."""
        return self.sha256 if self.sha256 is not None else self.xxh128


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
            decoder="default_decoder",
        ),
        ModelSpec(
            name="default-broad",
            model_type=None,
            filename="default_broad.pt",
            url=None,
            sha256=None,
            size_bytes=None,
            description="The default model after a fine-tune on every modality (phase contrast, DIC, brightfield, "
            "H&E, IHC besides fluorescence), shipped inside the package; see docs/models.md.",
            decoder="default_broad_decoder",
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

# micro-sam's microscopy models (Archit et al., Nature Methods 2025; CC-BY-4.0 on BioImage.IO).
# URLs and xxh128 hashes as micro-sam 1.8.14 publishes them in micro_sam/util.py, function
# models(): hashes in `encoder_registry` / `decoder_registry`, URLs in `encoder_urls` /
# `decoder_urls`; the numbers below are that file's line numbers. The model files load as
# any micro-sam checkpoint (a state dict, or one under `model_state`); the decoder files are
# the decoder's state dict, which micro-sam adds as `decoder_state` (automatic/loading.py).
# No file was downloaded here (no network): the formats follow micro-sam's reader.
_BIOIMAGE_IO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_MICRO_SAM = (
    # name, BioImage.IO id/version, xxh128 of the model, hash line, URL line,
    #   xxh128 of its decoder, hash line, URL line
    ("vit_l_lm", "idealistic-rat/1.2", "017f20677997d628426dec80a8018f9d", 112, 150,
     "2faeafa03819dfe03e7c46a44aaac64a", 129, 163),
    ("vit_b_lm", "diplomatic-bug/1.2", "fe9252a29f3f4ea53c15a06de471e186", 113, 151,
     "708b15ac620e235f90bb38612c4929ba", 130, 164),
    ("vit_t_lm", "faithful-chicken/1.1", "72ec5074774761a6e5c05a08942f981e", 114, 152,
     "3e914a5f397b0312cdd36813031f8823", 131, 165),
    ("vit_l_em_organelles", "humorous-crab/1.2", "810b084b6e51acdbf760a993d8619f2d", 116, 153,
     "334877640bfdaaabce533e3252a17294", 133, 166),
    ("vit_b_em_organelles", "noisy-ox/1.2", "f3bf2ed83d691456bae2c3f9a05fb438", 117, 154,
     "bb6398956a6b0132c26b631c14f95ce2", 134, 167),
    ("vit_t_em_organelles", "greedy-whale/1", "253474720c497cce605e57c9b1d18fd9", 118, 155,
     "8f897c7bb93174a4d1638827c4dd6f44", 135, 168),
)
_MICRO_SAM_SOURCE = "micro_sam 1.8.14, micro_sam/util.py, hash line {}, URL line {}"
_DOMAINS = {"lm": "light microscopy (cells and nuclei)", "em_organelles": "electron microscopy (organelles)"}

#: Instance decoders (micro-sam's AIS decoder), paired with a model by ``ModelSpec.decoder``.
DECODERS: dict[str, ModelSpec] = {
    "default_decoder": ModelSpec(
        name="default_decoder", model_type=None, filename="default_decoder.pt", url=None, sha256=None,
        size_bytes=None, description="Instance decoder of the default model, shipped inside the package "
        "when this installation has one.",
    ),
    "default_broad_decoder": ModelSpec(
        name="default_broad_decoder", model_type=None, filename="default_broad_decoder.pt", url=None, sha256=None,
        size_bytes=None, description="Instance decoder of default-broad, shipped inside the package "
        "when this installation has one.",
    ),
}

_TITLES = {"vit_t": "ViT-T (MobileSAM)", "vit_b": "ViT-B", "vit_l": "ViT-L"}


def _add_micro_sam_models() -> None:
    for name, record, model_hash, model_hash_line, model_url_line, decoder_hash, decoder_hash_line, \
            decoder_url_line in _MICRO_SAM:
        model_type, domain = name[:5], _DOMAINS[name[6:]]
        DECODERS[name + "_decoder"] = ModelSpec(
            name=name + "_decoder", model_type=None, filename=f"{name}_decoder.pt",
            url=f"{_BIOIMAGE_IO}{record}/files/{model_type}_decoder.pt", sha256=None, size_bytes=None,
            description=f"micro-sam's instance decoder for {name}.", xxh128=decoder_hash,
            source=_MICRO_SAM_SOURCE.format(decoder_hash_line, decoder_url_line),
        )
        MODELS[name] = ModelSpec(
            name=name, model_type=model_type, filename=f"{name}.pt",
            url=f"{_BIOIMAGE_IO}{record}/files/{model_type}.pt", sha256=None, size_bytes=None,
            description=f"micro-sam {_TITLES[model_type]} for {domain}, with its instance decoder "
                        f"(BioImage.IO {record}).",
            xxh128=model_hash, decoder=name + "_decoder",
            source=_MICRO_SAM_SOURCE.format(model_hash_line, model_url_line),
        )


_add_micro_sam_models()

# SAM 2.1 (Meta AI, Apache-2.0): URLs as Meta's sam2 repository gives them (README.md and
# checkpoints/download_ckpts.sh at commit 2b90b9f, the 092824 release). Meta publishes no
# hash; the sha256 values are those micro-sam verifies these URLs with (pooch known_hash,
# micro_sam/v2/util.py, HASHES["sam2.1"]), and the same values with these byte sizes are
# checked by several independent download scripts (docs/models.md, "Where the hashes come from").
_SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SAM2_SOURCE = ("URL: facebookresearch/sam2 README.md / checkpoints/download_ckpts.sh (092824 release); "
                "sha256: micro-sam micro_sam/v2/util.py HASHES['sam2.1'], matched by independent download scripts")
for _name, _title, _sha256, _size in (
    ("sam2.1_hiera_tiny", "Hiera-T", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466),
    ("sam2.1_hiera_small", "Hiera-S", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
     184_416_285),
    ("sam2.1_hiera_base_plus", "Hiera-B+", "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
     323_606_802),
    ("sam2.1_hiera_large", "Hiera-L", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
     898_083_611),
):
    MODELS[_name] = ModelSpec(
        name=_name, model_type=_name, filename=f"{_name}.pt", url=f"{_SAM2_BASE_URL}{_name}.pt", sha256=_sha256,
        size_bytes=_size, description=f"SAM 2.1 {_title} (Meta AI, Apache-2.0): Hiera encoder; propagation "
        "through z / t follows objects with its memory.", source=_SAM2_SOURCE,
    )


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a named model; ValueError listing the names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; named models are {sorted(MODELS)}") from None


def file_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a named model or instance decoder; ValueError otherwise."""
    if name in DECODERS:
        return DECODERS[name]
    try:
        return model_spec(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}; named models are {sorted(MODELS)}, "
                         f"named decoders {sorted(DECODERS)}") from None


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
