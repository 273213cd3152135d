"""Files: the one atomic writer and the one image reader of the package.

Every file napari-sam writes (labels, cache entries, models, training states, sidecars)
goes through :func:`atomic_write`: a temporary file in the same folder, flushed and
fsync'd, then renamed over the target with ``os.replace``. A killed process leaves either
the old file or the new one, plus at worst a stray ``.<name>.<random>.tmp`` that no reader
opens. New files get the permissions the umask gives a plain ``open()`` (not mkstemp's 600).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def temporary_name(path: Path) -> Path:
    """The name of a temporary file beside ``path`` (hidden, unique, ending in ``.tmp``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, then rename it over ``path``.

    The folder must exist. An existing file at ``path`` keeps its permission bits; a new
    one gets ``0o666 & ~umask``. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = None
    # "xb": exclusive creation, permissions 0o666 & ~umask; a named stream (tifffile
    # asks for the stream's name, an os.fdopen stream's is an int).
    stream = open(temporary, "xb")  # noqa: SIM115 (closed by the with below)
    try:
        with stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda stream: stream.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda stream: torch.save(obj, stream))


def atomic_write_tiff(path: str | os.PathLike, data: np.ndarray, **kwargs: Any) -> Path:
    """Write ``data`` as a zlib-compressed TIFF to ``path`` atomically."""
    import tifffile

    kwargs.setdefault("compression", "zlib")
    return atomic_write(path, lambda stream: tifffile.imwrite(stream, data, **kwargs))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a whole TIFF (any dtype, any number of planes) or a PNG / JPEG / BMP file into memory.

    Raises :class:`napari_sam.io.ImageReadError` (naming the file) for a corrupt, truncated
    or too large file, before allocating; ``FileNotFoundError`` for a missing one.
    """
    from .io import ImageReadError, check_plane_size, first_line, open_stack, read_plane

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return read_plane(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        import tifffile

        with open_stack(path) as stack:
            check_plane_size(stack.shape, stack.dtype, path)
        return tifffile.imread(path)
    except ImageReadError:
        raise
    except Exception as error:  # zlib.error, struct.error, tifffile errors ...
        raise ImageReadError(f"{path}: cannot read this image ({first_line(error)})") from None


class OutputError(ValueError):
    """An output path that must not be written: it exists, it is an input, or it cannot be created."""


def check_output(path: str | os.PathLike, *, overwrite: bool = False, inputs=(), suffixes=(), what: str = "--out") -> Path:
    """Check, before any work, that ``path`` may be written; return it as a Path.

    Refuses (:class:`OutputError`, one line): an existing file without ``overwrite``; any of
    ``inputs`` (never overwritten, even with ``overwrite``); a folder; a missing or
    read-only parent folder; a suffix not in ``suffixes`` (when given, lower case with dot).
    """
    path = Path(path).expanduser()
    if suffixes and not path.name.lower().endswith(tuple(suffixes)):
        raise OutputError(f"{what} {path}: the file name must end in {' or '.join(suffixes)}")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputError(f"{what} {path} is an input of this command; it is never overwritten")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{what} {path} exists; pass --overwrite to replace it (nothing was written)")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the folder {folder} is not writable")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def clean_stale_temporaries(folder: str | os.PathLike, *, older_than_s: float = 3600.0, recursive: bool = False) -> int:
    """Delete ``.<name>.<hex>.tmp`` files of killed writes in ``folder`` older than ``older_than_s``.

    A younger one may belong to a write still running in another process. ``recursive``:
    also in sub-folders (the embedding cache keeps entries in one folder per model).
    Returns the count.
    """
    import time

    removed = 0
    limit = time.time() - older_than_s
    folder = Path(folder)
    for entry in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        try:
            if entry.is_file() and entry.stat().st_mtime < limit:
                entry.unlink()
                removed += 1
        except OSError:
            continue
    return removed
