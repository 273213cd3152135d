"""Download of named models and decoders through pooch, with hash checks.

Each file is checked with the hash its publisher gives: sha256 for SAM and MobileSAM,
xxh128 (the ``xxhash`` package) for micro-sam's models, as micro-sam's own registry does.

A download that cannot reach its server raises :class:`DownloadError` with the exact URL
and the path to put a manually downloaded copy at; one with the wrong content raises
:class:`CheckpointError` and keeps nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pooch

from .errors import CheckpointError, DownloadError
from .registry import CACHE_ENV_VAR, ModelSpec, bundled_path, cache_dir, file_spec, model_spec

__all__ = ["fetch_decoder", "fetch_weights", "file_hash", "sha256_of"]

#: Shell commands that print each hash, for the manual-download message.
_HASH_TOOLS = {"sha256": "sha256sum FILE", "xxh128": "xxh128sum FILE (package xxhash)"}


def fetch_weights(name: str, *, progressbar: bool | None = None) -> Path:
    """The local path of a named model's (or decoder's) weights, downloading them on first use.

    Downloads go through pooch, which writes to a temporary file in the cache folder,
    checks its hash (:attr:`ModelSpec.hash_algorithm`: sha256, or xxh128 for micro-sam's
    files), and only then renames it to its final name (a rename within one folder is
    atomic): an interrupted or corrupted download never leaves a partial file under the
    final name.

    Parameters
    ----------
    name : str
        A key of :data:`~napari_sam.checkpoints.MODELS` or of
        :data:`~napari_sam.checkpoints.registry.DECODERS`.
    progressbar : bool, optional
        Show progress (a tqdm bar in a terminal, a line per 10 % in a log, nothing under
        ``--quiet``); default: when tqdm is installed.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    FileNotFoundError
        For a bundled model whose file is not in this installation.
    CheckpointError
        When the downloaded file's hash is not the expected one (nothing is kept).
    DownloadError
        When the server cannot be reached; the message says which file to download from
        which URL, and the full path to put it at.
    """
    spec = file_spec(name)
    if spec.bundled:
        return bundled_path(spec)

    algorithm, expected = spec.hash_algorithm, spec.expected_hash
    folder = cache_dir()
    target = folder / spec.filename
    stale_hash = None
    if target.is_file():
        actual = file_hash(target, algorithm)
        if actual == expected:
            return target
        stale_hash = actual  # pooch replaces a file with the wrong content by a new download

    if progressbar is None:
        progressbar = _tqdm_available()
    if progressbar is True:
        from .. import console

        # pooch's tqdm bar in a terminal; in a log, a line per 10 % instead of a flood of updates.
        if console.is_quiet():
            progressbar = False
        elif not sys.stderr.isatty():
            progressbar = console.LineProgress(desc=f"downloading {spec.filename}", unit="B")
    downloader = _HashRecordingDownloader(spec.url, progressbar, algorithm)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(
            spec.url,
            known_hash=f"{algorithm}:{expected}",
            fname=spec.filename,
            path=folder,
            downloader=downloader,
        )
    except Exception as err:
        # requests' errors come first: some of them (InvalidURL) are ValueErrors too.
        if _is_download_failure(err):
            raise DownloadError(_manual_download_message(spec, target, err, stale_hash)) from err
        if not (isinstance(err, ValueError) and downloader.digest is not None):
            raise
        # A ValueError after a complete download is pooch's hash check.
        raise CheckpointError(
            f"The download of {spec.filename} (model {name!r}) from {spec.url} has the wrong "
            f"content: {algorithm} expected {expected}, got {downloader.digest}. "
            f"The download was deleted and nothing was written to {target}. The server may "
            "have served an error page or a changed file; try again later, or download the "
            f"file yourself, check its {algorithm}, and put it at that path."
        ) from err
    _VERIFIED[(*_file_identity(target), algorithm)] = expected
    return target


def fetch_decoder(name: str, *, progressbar: bool | None = None) -> Path | None:
    """The local path of the instance decoder paired with named model ``name``, or None.

    None when the model has no decoder, or when its decoder is a bundled file this
    installation does not ship (the default model before its decoder is trained).
    Downloads as :func:`fetch_weights` (same checks and errors).
    """
    decoder = model_spec(name).decoder
    if decoder is None:
        return None
    spec = file_spec(decoder)
    if spec.bundled:
        try:
            return bundled_path(spec)
        except FileNotFoundError:
            return None
    return fetch_weights(decoder, progressbar=progressbar)


def _manual_download_message(
    spec: ModelSpec, target: Path, err: BaseException, stale_hash: str | None
) -> str:
    algorithm = spec.hash_algorithm
    stale = ""
    if stale_hash is not None:
        stale = (
            f" The file already at {target} has {algorithm} {stale_hash}, not the expected one; "
            "replace it."
        )
    size = f" ({spec.size_bytes / 1e6:.0f} MB)" if spec.size_bytes else ""
    return (
        f"Could not download the weights of model {spec.name!r}: {type(err).__name__}: {err}."
        f"{stale}\nTo use this model without network access, download\n"
        f"    {spec.url}\n"
        f"on a machine that has access{size}, check that its {algorithm} ({_HASH_TOOLS[algorithm]}) is\n"
        f"    {spec.expected_hash}\n"
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
    """pooch's own downloader for the URL, remembering the hash of what it fetched.

    pooch deletes a download whose hash does not match; recording the hash first lets the
    error say what actually arrived.
    """

    def __init__(self, url: str, progressbar: Any, algorithm: str = "sha256") -> None:
        self._download = pooch.downloaders.choose_downloader(url, progressbar=progressbar)
        self._algorithm = algorithm
        self.digest: str | None = None

    def __call__(self, url: str, output_file: str, pooch_instance: Any, **kwargs: Any) -> Any:
        result = self._download(url, output_file, pooch_instance, **kwargs)
        if isinstance(output_file, (str, os.PathLike)) and os.path.isfile(output_file):
            self.digest = file_hash(Path(output_file), self._algorithm, remember=False)
        return result


# In-process memo of verified files, keyed by (path, size, mtime, algorithm), so loading a
# large model twice does not hash 2.5 GB twice.
_VERIFIED: dict[tuple[str, int, int, str], str] = {}


def _file_identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def sha256_of(path: Path, *, remember: bool = True) -> str:
    """The sha256 of a file, lowercase hex; remembered per (path, size, mtime) when ``remember``."""
    return file_hash(path, "sha256", remember=remember)


def _hasher(algorithm: str):
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh128":
        try:
            import xxhash
        except ImportError:  # pragma: no cover - a dependency of the package
            raise ImportError("checking micro-sam's files needs the xxhash package: pip install xxhash") from None
        return xxhash.xxh128()
    raise ValueError(f"unknown hash algorithm {algorithm!r}; expected 'sha256' or 'xxh128'")


def file_hash(path: Path, algorithm: str = "sha256", *, remember: bool = True) -> str:
    """The ``algorithm`` (``"sha256"`` or ``"xxh128"``) hash of a file, lowercase hex.

    Remembered per (path, size, mtime, algorithm) when ``remember``.
    """
    key = (*_file_identity(path), algorithm)
    if remember and key in _VERIFIED:
        return _VERIFIED[key]
    digest = _hasher(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    result = digest.hexdigest()
    if remember:
        _VERIFIED[key] = result
    return result
