"""Named models, checkpoint files, download with sha256 checks, loading and saving.

The one checkpoint loader of napari-sam::

    from napari_sam.models import load_model
    sam = load_model("vit_b")                 # downloaded once into the cache, verified
    sam = load_model("/data/finetuned.pt")    # official, MobileSAM or micro-sam files
    save_model(sam, "/data/mine.pt", metadata={"trained_on": "nuclei"})

Files are read with ``torch.load(weights_only=True)`` only: a checkpoint is data, and a
pickle that would run code is refused, never executed. Everything that goes wrong with
a file raises :class:`CheckpointError` with a message naming the file and saying what to
do; a download that cannot reach its server raises :class:`DownloadError` with the exact
URL and the path to put a manually downloaded copy at.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pooch
import torch

from .device import select_device

if TYPE_CHECKING:
    from .model import Sam

__all__ = [
    "CACHE_ENV_VAR",
    "MODELS",
    "Architecture",
    "CheckpointError",
    "DownloadError",
    "ModelSpec",
    "cache_dir",
    "detect_architecture",
    "fetch_weights",
    "load_model",
    "metadata_path",
    "read_state_dict",
    "save_model",
]

CACHE_ENV_VAR = "NAPARI_SAM_CACHE_DIR"

# Written into every sidecar JSON by save_model, so a file can say what wrote it.
METADATA_FORMAT = "napari-sam-checkpoint"
METADATA_VERSION = 1

# Leading key prefixes other tools add: micro-sam / torch_em wrap SAM as `sam.`,
# DistributedDataParallel adds `module.`, torch.compile adds `_orig_mod.`.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "sam.")

# Top-level entries whose value is the model's state dict in training checkpoints
# (micro-sam / torch_em use "model_state"; PyTorch Lightning and others "state_dict").
_STATE_DICT_ENTRIES = ("model_state", "state_dict", "model")

# The state-dict prefixes of the three parts of a Sam.
_SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")

_LIST_LIMIT = 10  # how many keys an error message lists per category


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unsafe, corrupt, or the wrong architecture."""


class DownloadError(OSError):
    """Weights that could not be downloaded (offline, server unreachable, HTTP error)."""


# --------------------------------------------------------------------------------------
# The registry of named models
# --------------------------------------------------------------------------------------


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

# The sha256 values and where they were confirmed are listed in docs/models.md.
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

_BUNDLED_DIR = Path(__file__).parent / "weights"


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; named models are {sorted(MODELS)}") from None


# --------------------------------------------------------------------------------------
# Cache and download
# --------------------------------------------------------------------------------------


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


def fetch_weights(name: str, *, progressbar: bool | None = None) -> Path:
    """The local path of a named model's weights, downloading them on first use.

    Downloads go through pooch, which writes to a temporary file in the cache folder,
    checks its sha256, and only then renames it to its final name (a rename within one
    folder is atomic): an interrupted or corrupted download never leaves a partial file
    under the final name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    progressbar : bool, optional
        Show a tqdm progress bar; default: when tqdm is installed.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    FileNotFoundError
        For a bundled model whose file is not in this installation.
    CheckpointError
        When the downloaded file's sha256 is not the expected one (nothing is kept).
    DownloadError
        When the server cannot be reached; the message says which file to download from
        which URL, and the full path to put it at.
    """
    spec = _spec(name)
    if spec.bundled:
        return _bundled_path(spec)

    folder = cache_dir()
    target = folder / spec.filename
    stale_hash = None
    if target.is_file():
        actual = _sha256(target)
        if actual == spec.sha256:
            return target
        stale_hash = actual  # pooch replaces a file with the wrong content by a new download

    if progressbar is None:
        progressbar = _tqdm_available()
    downloader = _HashRecordingDownloader(spec.url, progressbar)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(
            spec.url,
            known_hash=f"sha256:{spec.sha256}",
            fname=spec.filename,
            path=folder,
            downloader=downloader,
        )
    except Exception as err:
        # requests' errors come first: some of them (InvalidURL) are ValueErrors too.
        if _is_download_failure(err):
            raise DownloadError(_manual_download_message(spec, target, err, stale_hash)) from err
        if not (isinstance(err, ValueError) and downloader.sha256 is not None):
            raise
        # A ValueError after a complete download is pooch's hash check.
        raise CheckpointError(
            f"The download of {spec.filename} (model {name!r}) from {spec.url} has the wrong "
            f"content: sha256 expected {spec.sha256}, got {downloader.sha256}. "
            f"The download was deleted and nothing was written to {target}. The server may "
            "have served an error page or a changed file; try again later, or download the "
            "file yourself, check its sha256, and put it at that path."
        ) from err
    _VERIFIED[_file_identity(target)] = spec.sha256
    return target


def _bundled_path(spec: ModelSpec) -> Path:
    path = _BUNDLED_DIR / spec.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"The bundled model {spec.name!r} is not part of this installation: {path} does "
            "not exist. Reinstall napari-sam from a release that ships it, or use another "
            f"model, e.g. load_model('vit_b') (named models: {sorted(MODELS)}), or a local "
            "checkpoint file with load_model('/path/to/file.pt')."
        )
    return path


def _manual_download_message(
    spec: ModelSpec, target: Path, err: BaseException, stale_hash: str | None
) -> str:
    stale = ""
    if stale_hash is not None:
        stale = (
            f" The file already at {target} has sha256 {stale_hash}, not the expected one; "
            "replace it."
        )
    size = f" ({spec.size_bytes / 1e6:.0f} MB)" if spec.size_bytes else ""
    return (
        f"Could not download the weights of model {spec.name!r}: {type(err).__name__}: {err}."
        f"{stale}\nTo use this model without network access, download\n"
        f"    {spec.url}\n"
        f"on a machine that has access{size}, check that its sha256 is\n"
        f"    {spec.sha256}\n"
        f"and put it at\n"
        f"    {target}\n"
        f"(set {CACHE_ENV_VAR} to use another folder). A local copy anywhere also works: "
        f"load_model('/path/to/{spec.filename}')."
    )


def _is_download_failure(err: BaseException) -> bool:
    """Connection refused, DNS, timeouts, HTTP errors, a cache folder that cannot be written."""
    try:
        import requests
    except ImportError:  # pragma: no cover - pooch depends on requests
        return isinstance(err, OSError)
    return isinstance(err, (requests.exceptions.RequestException, OSError))


def _tqdm_available() -> bool:
    return importlib.util.find_spec("tqdm") is not None


class _HashRecordingDownloader:
    """pooch's own downloader for the URL, remembering the sha256 of what it fetched.

    pooch deletes a download whose hash does not match; recording the hash first lets the
    error say what actually arrived.
    """

    def __init__(self, url: str, progressbar: bool) -> None:
        self._download = pooch.downloaders.choose_downloader(url, progressbar=progressbar)
        self.sha256: str | None = None

    def __call__(self, url: str, output_file: str, pooch_instance: Any, **kwargs: Any) -> Any:
        result = self._download(url, output_file, pooch_instance, **kwargs)
        if isinstance(output_file, (str, os.PathLike)) and os.path.isfile(output_file):
            self.sha256 = _sha256(Path(output_file), remember=False)
        return result


# In-process memo of verified files, keyed by (path, size, mtime), so loading a large model
# twice does not hash 2.5 GB twice.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _file_identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _sha256(path: Path, *, remember: bool = True) -> str:
    key = _file_identity(path)
    if remember and key in _VERIFIED:
        return _VERIFIED[key]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    result = digest.hexdigest()
    if remember:
        _VERIFIED[key] = result
    return result


# --------------------------------------------------------------------------------------
# Reading checkpoint files
# --------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain SAM state dict (on the CPU).

    Accepts plain state dicts (the official and MobileSAM files), training checkpoints
    that wrap the weights in ``model_state`` / ``state_dict`` next to other entries
    (micro-sam / torch_em: ``optimizer_state``, ``decoder_state``, ``config``, ...; these
    are ignored), and keys prefixed by ``sam.``, ``module.`` or ``_orig_mod.`` (stripped).

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    CheckpointError
        When the file would run code when unpickled (refused, never executed), is
        truncated or not a PyTorch file, or does not hold a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    loaded = _torch_load(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)."
        )
    state = _unwrap(loaded, path)
    return _strip_prefixes(state, path)


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # Plain pickles (not torch.save zip files) trigger a protocol warning; the
            # outcome is reported below either way.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise CheckpointError(
                f"Refused to load {path}: it contains a Python object ({blocked.group(1)}) "
                "besides tensors and plain containers, and unpickling it could run arbitrary "
                "code. napari-sam only reads weights (torch.load with weights_only=True). If "
                "this is a training checkpoint from a source you trust, re-save just its "
                "weights (e.g. its 'model_state' entry) with torch.save and load that file."
            ) from None
        raise CheckpointError(
            f"Cannot read {path}: it is not a PyTorch checkpoint, or uses pickle features "
            "that are refused because they could run code."
        ) from None
    except OSError:  # permissions and the like: about the file system, not the content
        raise
    except Exception as err:  # a damaged file can fail inside torch or pickle in many ways
        size = path.stat().st_size
        raise CheckpointError(
            f"Cannot read {path} ({size} bytes): the file is truncated, corrupt, or not a "
            f"PyTorch checkpoint ({type(err).__name__}: {_first_line(err)}). If it was "
            "downloaded, download it again."
        ) from None


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    text = str(err).strip()
    if not text:
        return "no details"
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def _unwrap(loaded: Mapping, path: Path) -> Mapping:
    if any(isinstance(value, torch.Tensor) for value in loaded.values()):
        return loaded
    for entry in _STATE_DICT_ENTRIES:
        value = loaded.get(entry)
        if isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values()):
            return value
    entries = ", ".join(repr(k) for k in list(loaded)[:_LIST_LIMIT])
    raise CheckpointError(
        f"{path} does not hold model weights: no tensors at its top level and no "
        f"{' / '.join(repr(e) for e in _STATE_DICT_ENTRIES)} entry with tensors "
        f"(top-level entries: {entries or 'none'})."
    )


def _strip_prefixes(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, value in state.items():
        if not isinstance(key, str):
            not_tensors.append(repr(key))
            continue
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    stripped = True
        if not isinstance(value, torch.Tensor):
            not_tensors.append(key)
            continue
        if name in result:
            raise CheckpointError(
                f"{path} holds the parameter {name!r} twice (with and without a "
                f"{'/'.join(_WRAPPER_PREFIXES)} prefix); it is not one model's state dict."
            )
        result[name] = value
    if not_tensors:
        raise CheckpointError(
            f"{path} is not a mapping of tensors: {len(not_tensors)} entries are not tensors, "
            f"e.g. {', '.join(not_tensors[:_LIST_LIMIT])}."
        )
    return result


def metadata_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_model` writes the sidecar JSON of ``path``: ``<stem>.json``."""
    return Path(path).with_suffix(".json")


def _read_metadata(path: Path) -> tuple[dict[str, Any], Path | None]:
    """The sidecar JSON of a checkpoint (``<file>.json`` or ``<stem>.json``), or {}."""
    for candidate in (Path(f"{path}.json"), metadata_path(path)):
        if candidate != path and candidate.is_file():
            try:
                metadata = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(
                    f"The metadata file {candidate} of {path} is not valid JSON: {err}."
                ) from None
            if not isinstance(metadata, dict):
                raise CheckpointError(
                    f"The metadata file {candidate} of {path} must hold a JSON object, not "
                    f"{type(metadata).__name__}."
                )
            return metadata, candidate
    return {}, None


# --------------------------------------------------------------------------------------
# Architecture detection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """What to build for a state dict.

    Attributes
    ----------
    model_type : str
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``, or ``"custom"``.
    config : dict
        The ``build_sam`` config, complete (decoder widths included):
        ``{"encoder": "vit", "img_size": ..., "prompt_embed_dim": 256, ...}`` or
        ``{"encoder": "tiny_vit", "img_size": 1024, ...}``.
    """

    model_type: str
    config: dict[str, Any]

    def build_argument(self) -> str | dict[str, Any]:
        return self.config if self.model_type == "custom" else self.model_type

    def describe(self) -> str:
        if self.model_type != "custom":
            return self.model_type
        details = ", ".join(f"{k}={v}" for k, v in self.config.items() if k not in ("encoder", "name"))
        return f"custom {self.config.get('encoder', '?')} ({details})"


def _named_configs() -> dict[str, dict[str, Any]]:
    """MODEL_CONFIGS, each completed with the decoder widths build_sam defaults to."""
    from .model.build import MODEL_CONFIGS

    return {name: _normalized(config) for name, config in MODEL_CONFIGS.items()}


def _normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """A build_sam config in one canonical form, so that equal architectures compare equal."""
    from .model.build import DECODER_DEFAULTS

    result = {**DECODER_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}
    if "global_attn_indexes" in result:
        result["global_attn_indexes"] = [int(i) for i in result["global_attn_indexes"]]
    if "stem_channels" in result:
        # No stem is the official linear patch embedding, the same architecture as no key.
        stem = [int(width) for width in result.pop("stem_channels")]
        if stem:
            result["stem_channels"] = stem
    return result


def _architecture_from_config(config: Mapping[str, Any]) -> Architecture:
    config = _normalized(config)
    for name, named in _named_configs().items():
        if _same_config(config, named):
            return Architecture(name, named)
    return Architecture("custom", config)


def _same_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("encoder") != b.get("encoder") or set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
            if list(x) != list(y):
                return False
        elif x != y:
            return False
    return True


def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> Architecture:
    """Infer the architecture of a SAM state dict from its keys and tensor shapes.

    MobileSAM's TinyViT encoder is recognised by its keys; a ViT encoder's hyper-parameters
    are read off its tensors: patch size from the patch-embedding kernel, input size from
    the position-embedding grid, depth from the block count, head count from the relative
    position tables' head width, window size and global blocks from those tables' lengths,
    MLP ratio from the first MLP layer; the prompt and decoder widths from the prompt
    encoder and decoder tensors. An architecture that matches a named one (vit_b, vit_l,
    vit_h, vit_t) is reported under that name, any other as ``"custom"``.

    Raises
    ------
    CheckpointError
        When the state dict is not a SAM's, or its ViT cannot be described.
    """
    keys = set(state_dict)
    if not any(key.startswith(_SAM_PARTS) for key in keys):
        sample = ", ".join(sorted(keys)[:5])
        raise CheckpointError(
            "not a Segment Anything state dict: no key starts with "
            f"{' / '.join(_SAM_PARTS)} (first keys: {sample or 'none'})"
        )
    if any(key.startswith(("image_encoder.layers.", "image_encoder.patch_embed.seq.")) for key in keys):
        encoder = {"encoder": "tiny_vit", "img_size": _named_configs()["vit_t"]["img_size"]}
    else:
        encoder = _vit_config(state_dict)
    return _architecture_from_config({**encoder, **_decoder_config(state_dict)})


def _decoder_config(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Prompt/decoder widths; absent keys are left to the defaults (and reported later)."""
    config = {}
    embed = state.get("prompt_encoder.no_mask_embed.weight")  # (1, prompt_embed_dim)
    if embed is not None and embed.ndim == 2:
        config["prompt_embed_dim"] = int(embed.shape[1])
    mlp = state.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")  # (mlp_dim, dim)
    if mlp is not None and mlp.ndim == 2:
        config["decoder_mlp_dim"] = int(mlp.shape[0])
    text = state.get("prompt_encoder.text_projection.0.weight")  # (prompt_embed_dim, text_dim)
    if text is not None and text.ndim == 2:
        config["text_dim"] = int(text.shape[1])
    return config


def _vit_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"cannot infer the image encoder: {key!r} is missing")
        return state[key]

    stem = _stem_channels(state)
    if stem:
        # The stem's 3x3 stride-2 convolutions, then its 1x1 projection to the token width.
        projection = tensor(f"image_encoder.patch_embed.stem.{3 * len(stem)}.weight")  # (D, c, 1, 1)
        embed_dim, patch_size = int(projection.shape[0]), 2 ** len(stem)
    else:
        patch = tensor("image_encoder.patch_embed.proj.weight")  # (D, 3, p, p)
        if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
            raise CheckpointError(f"unexpected patch embedding shape {tuple(patch.shape)}")
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    pos = tensor("image_encoder.pos_embed")  # (1, g, g, D)
    grid = int(pos.shape[1])
    block_ids = sorted(
        {int(m.group(1)) for key in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key))}
    )
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise CheckpointError(f"the image encoder's blocks are not numbered 0..n-1: {block_ids[:20]}")
    depth = len(block_ids)

    lengths = [int(tensor(f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    head_dim = int(tensor("image_encoder.blocks.0.attn.rel_pos_h").shape[1])
    if head_dim <= 0 or embed_dim % head_dim:
        raise CheckpointError(f"relative position width {head_dim} does not divide embed_dim {embed_dim}")
    global_length = 2 * grid - 1
    global_blocks = [i for i, length in enumerate(lengths) if length == global_length]
    windowed = {length for length in lengths if length != global_length}
    if len(windowed) > 1:
        sizes = sorted((n + 1) // 2 for n in windowed)
        raise CheckpointError(f"blocks use several attention window sizes: {sizes}")
    # With no windowed block the window size does not change any computation.
    window_size = (windowed.pop() + 1) // 2 if windowed else grid

    hidden = int(tensor("image_encoder.blocks.0.mlp.lin1.weight").shape[0])
    extra = {"stem_channels": stem} if stem else {}
    return {
        "encoder": "vit",
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "mlp_ratio": hidden / embed_dim,
        "window_size": window_size,
        "global_attn_indexes": global_blocks,
        **extra,
    }


def _stem_channels(state: Mapping[str, torch.Tensor]) -> list[int]:
    """Widths of a convolutional stem's 3x3 layers (``ConvStem``), empty for a linear patch embedding."""
    widths = []
    while (conv := state.get(f"image_encoder.patch_embed.stem.{3 * len(widths)}.weight")) is not None:
        if conv.ndim != 4:
            raise CheckpointError(f"unexpected stem convolution shape {tuple(conv.shape)}")
        if conv.shape[-1] == 1:  # the final 1x1 projection
            return widths
        widths.append(int(conv.shape[0]))
    if widths:
        raise CheckpointError("the convolutional stem has no 1x1 projection to the token width")
    return widths


# --------------------------------------------------------------------------------------
# load_model / save_model
# --------------------------------------------------------------------------------------


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    model_type: str | None = None,
) -> Sam:
    """Load a Segment Anything model, in eval mode, on the selected device.

    Parameters
    ----------
    name_or_path : str or path
        A named model (``"default"``, ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``;
        downloaded into :func:`cache_dir` on first use), or the path of a checkpoint file:
        an official SAM or MobileSAM file, a micro-sam / torch_em training checkpoint, or
        a file written by :func:`save_model`.
    device : str or torch.device, optional
        See :func:`napari_sam.device.select_device`.
    model_type : str, optional
        The architecture (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``). By default
        the sidecar JSON's ``model_type``/``config``, else the named model's, else
        detected from the file's keys and tensor shapes.

    Returns
    -------
    Sam
        With ``model.metadata``: the sidecar JSON's content plus ``model_type``,
        ``config``, ``checkpoint`` (the file read) and ``name`` (for named models).

    Raises
    ------
    CheckpointError
        Unsafe, corrupt or non-checkpoint file; or weights that do not fit the
        architecture (the message lists missing and unexpected keys and shape mismatches).
    DownloadError
        A named model that is not cached and cannot be downloaded.
    FileNotFoundError
        No such file (or the bundled default model is not installed).
    """
    from .model import build_sam

    target_device = select_device(device)  # fail on a bad device before reading gigabytes
    spec, path = _resolve(name_or_path)
    state = read_state_dict(path)
    metadata, metadata_file = _read_metadata(path)
    architecture, origin = _choose_architecture(state, path, model_type, metadata, metadata_file, spec)

    try:
        model = build_sam(architecture.build_argument())
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"Cannot build the architecture {architecture.describe()} ({origin}) for {path}: {err}"
        ) from err
    state = _check_state_dict(model, state, architecture, origin, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(target_device)
    model.metadata = {
        **metadata,
        "model_type": architecture.model_type,
        "config": dict(architecture.config),
        "checkpoint": str(path),
        **({"name": spec.name} if spec is not None else {}),
    }
    return model


def _resolve(name_or_path: str | os.PathLike) -> tuple[ModelSpec | None, Path]:
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return MODELS[name_or_path], fetch_weights(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return None, path
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; give the path of a checkpoint file (.pt / .pth).")
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither a named model ({', '.join(sorted(MODELS))}) nor an "
        "existing checkpoint file."
    )


def _choose_architecture(
    state: Mapping[str, torch.Tensor],
    path: Path,
    model_type: str | None,
    metadata: Mapping[str, Any],
    metadata_file: Path | None,
    spec: ModelSpec | None,
) -> tuple[Architecture, str]:
    """The architecture to build and where that choice came from (for messages)."""
    named = _named_configs()
    if model_type is not None:
        if model_type not in named:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(named)}")
        return Architecture(model_type, named[model_type]), "model_type given by the caller"

    meta_type = metadata.get("model_type")
    meta_config = metadata.get("config")
    source = f"from the metadata file {metadata_file}"
    if isinstance(meta_config, Mapping) and meta_config:
        if "encoder" not in meta_config:
            raise CheckpointError(f"The metadata file {metadata_file} has a 'config' without 'encoder'.")
        return _architecture_from_config(meta_config), source
    if meta_type is not None and meta_type != "custom":
        if meta_type not in named:
            raise CheckpointError(
                f"The metadata file {metadata_file} names model_type {meta_type!r}; expected "
                f"one of {sorted(named)}, or 'custom' with a 'config'."
            )
        return Architecture(meta_type, named[meta_type]), source

    if spec is not None and spec.model_type is not None:
        return Architecture(spec.model_type, named[spec.model_type]), f"the named model {spec.name!r}"

    try:
        return detect_architecture(state), "detected from the file's keys and shapes"
    except CheckpointError as err:
        raise CheckpointError(
            f"Cannot tell which architecture {path} holds: {err}. Pass model_type=, or put "
            f"a metadata file {metadata_path(path)} next to it with 'model_type' / 'config'."
        ) from None


def _check_state_dict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    architecture: Architecture,
    origin: str,
    path: Path,
) -> dict[str, torch.Tensor]:
    """Compare keys and shapes before loading, to say exactly what does not fit.

    Returns the state dict without entries for the model's non-persistent buffers (e.g.
    the pixel statistics, which some exports include), once checked to equal the model's.
    """
    expected = model.state_dict()
    derived = {name: buf for name, buf in model.named_buffers() if name not in expected}
    state = dict(state)
    mismatched = []
    for name in [n for n in state if n in derived]:
        value, fixed = state.pop(name), derived[name].cpu()
        same = value.shape == fixed.shape and (
            torch.allclose(value.to(fixed.dtype), fixed)
            if fixed.is_floating_point()
            else torch.equal(value.to(fixed.dtype), fixed)
        )
        if not same:
            mismatched.append(f"{name}: the file's values differ from the model's fixed buffer")

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    for name in sorted(set(expected) & set(state)):
        if state[name].shape != expected[name].shape:
            mismatched.append(
                f"{name}: file {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
            )
    if not (missing or unexpected or mismatched):
        return state

    lines = [f"{path} does not fit the architecture {architecture.describe()} ({origin}):"]
    for label, items in (
        ("missing keys (in the model, not in the file)", missing),
        ("unexpected keys (in the file, not in the model)", unexpected),
        ("mismatched tensors", mismatched),
    ):
        if items:
            shown = "\n    ".join(items[:_LIST_LIMIT])
            more = f"\n    ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
            lines.append(f"  {len(items)} {label}:\n    {shown}{more}")
    try:
        detected = detect_architecture(state)
    except CheckpointError:
        detected = None
    if detected is not None and detected != architecture:
        if origin.startswith("model_type"):
            remedy = "leave model_type unset to detect it"
        elif origin.startswith("the named model"):
            remedy = "the file is not that model's; delete it to download it again"
        else:
            remedy = "fix or remove the metadata file"
        lines.append(f"The file's keys and shapes look like {detected.describe()}: {remedy}.")
    raise CheckpointError("\n".join(lines))


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model's state dict and its sidecar JSON, each atomically.

    The state dict goes to ``path`` (a plain state dict, readable by :func:`load_model`
    and by ``torch.load(weights_only=True)``); the metadata goes to ``<stem>.json`` with
    ``model_type`` and ``config``, so compact project-trained models load without guessing.
    Each file is written to a temporary file in the same folder and renamed over the
    target, so a crash never leaves a half-written checkpoint under the final name.

    Parameters
    ----------
    model : Sam
    path : str or path
        Target file, conventionally ``.pt`` or ``.pth``.
    metadata : mapping, optional
        JSON-serialisable extra information (training data, date, ...). Its
        ``model_type`` / ``config``, if given, must agree with the model.

    Returns
    -------
    Path of the checkpoint file.
    """
    path = Path(path).expanduser()
    if path.suffix == ".json":
        raise ValueError(f"{path}: a checkpoint needs a suffix other than .json (e.g. .pt)")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and config.get("encoder"):
        architecture = _architecture_from_config(config)
    else:
        architecture = detect_architecture(state)

    record: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "model_type": architecture.model_type,
        "config": architecture.config,
    }
    for key, value in (metadata or {}).items():
        if key == "model_type" and value != architecture.model_type:
            raise ValueError(
                f"metadata model_type {value!r} disagrees with the model ({architecture.model_type!r})"
            )
        if key == "config" and _architecture_from_config(value) != architecture:
            raise ValueError(f"metadata config {value!r} disagrees with the model ({architecture.config!r})")
        record.setdefault(key, value)
    try:
        text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serialisable: {err}") from None

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda stream: torch.save(state, stream))
    _atomic_write(metadata_path(path), lambda stream: stream.write(text.encode("utf-8")))
    return path


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide permissions, as for a plain open().
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
