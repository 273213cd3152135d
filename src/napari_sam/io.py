"""Lazy access to large TIFF stacks: one plane at a time, never the whole file.

TIFF, BigTIFF, OME-TIFF and ImageJ hyperstacks open through tifffile with the axes from
their metadata (``series.axes``, e.g. ``"TZCYX"``) as a dask array with one chunk per
plane (per 2048 x 2048 block of larger planes):

- uncompressed, contiguous image data (what ImageJ and most acquisition software write)
  is read through a memory map of exactly the requested plane, which is unmapped once
  the plane has been copied out. The kernel's page cache still makes repeated reads
  cheap, but the process never keeps more than one plane mapped, so its resident memory
  does not grow with the number of planes read;
- everything else (compressed, tiled, strip-interleaved, pyramids) goes through
  tifffile's zarr store (``series.aszarr()``), which decodes only the TIFF chunks a plane
  needs.

A plane is ``(Y, X)``, or ``(Y, X, S)`` for RGB(A) samples; all other axes index planes.
Planar RGB (``S`` before ``YX``) is moved to the end so that a plane is always
channel-last. Files are opened lazily and re-opened after pickling, so the dask array
runs unchanged in threads, processes or on a ``dask.distributed`` cluster.

>>> stack = open_stack("big.ome.tif")
>>> stack.axes, stack.shape          # ('TZYX', (40, 60, 4096, 4096))
>>> plane = stack.plane((3, 10))     # reads exactly one plane
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np

__all__ = ["ImageReadError", "LazyStack", "open_stack", "read_plane", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
# A plane may take at most this share of physical memory (NAPARI_SAM_MAX_PLANE_BYTES overrides).
PLANE_MEMORY_SHARE = 0.25


class ImageReadError(ValueError):
    """An image file that cannot be read: corrupt, truncated, or claiming an impossible size."""


def plane_size_limit() -> int:
    """The largest plane, in bytes, that a read may allocate."""
    override = os.environ.get("NAPARI_SAM_MAX_PLANE_BYTES")
    if override:
        return int(override)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume 8 GiB
        physical = 8 << 30
    return int(physical * PLANE_MEMORY_SHARE)


def check_plane_size(shape: tuple[int, ...], dtype, path: str | os.PathLike) -> None:
    """Refuse, before allocating, an array (a plane, or a whole stack) of ``shape`` and ``dtype`` larger than :func:`plane_size_limit`."""
    size = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    limit = plane_size_limit()
    if size > limit:
        raise ImageReadError(
            f"{path}: one plane of shape {tuple(shape)} {np.dtype(dtype).name} needs {size / 2**30:.1f} GiB, "
            f"more than the {limit / 2**30:.1f} GiB allowed (set NAPARI_SAM_MAX_PLANE_BYTES to raise it)"
        )


class _TiffSource:
    """Array-like view of one TIFF series (level) that dask reads chunk by chunk.

    Holds only the path until the first read; pickles without open handles.

    Attributes
    ----------
    reads : int
        Number of reads: one per plane, or per block of a plane split into blocks.
    """

    def __init__(self, path: str | os.PathLike, series: int = 0, level: int = 0) -> None:
        import tifffile

        self.path = str(Path(path).expanduser())
        self.series = series
        self.level = level
        self.reads = 0
        with tifffile.TiffFile(self.path) as tif:
            if not tif.series:
                raise ValueError(f"{self.path}: no image series in this TIFF file")
            if not 0 <= series < len(tif.series):
                raise ValueError(f"{self.path}: series {series} requested, the file has {len(tif.series)}")
            levels = tif.series[series].levels
            if not 0 <= level < len(levels):
                raise ValueError(f"{self.path}: level {level} requested, series {series} has {len(levels)}")
            info = levels[level]
            self.shape = tuple(int(n) for n in info.shape)
            self.axes = str(info.axes)
            self.dtype = np.dtype(info.dtype)
            # A contiguous, uncompressed series has a single data offset and can be mapped.
            self.offset = info.dataoffset if not getattr(info, "is_multifile", False) else None
            self.file_dtype = self.dtype.newbyteorder(tif.byteorder)
        if self.offset is not None:  # uncompressed: the header's size must fit in the file
            claimed = self.offset + math.prod(self.shape) * self.dtype.itemsize
            actual = os.path.getsize(self.path)
            if claimed > actual:
                raise ImageReadError(
                    f"{self.path}: the header describes {claimed} bytes of pixels but the file has {actual}: "
                    "truncated or corrupt"
                )
        self.ndim = len(self.shape)
        self.plane_ndim = 3 if self.axes.endswith("S") and self.ndim >= 3 else 2
        self._lock = threading.Lock()
        self._tif = None
        self._zarr = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tif"] = state["_zarr"] = state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def mapped(self) -> bool:
        """True when planes are read through a memory map (contiguous, uncompressed data)."""
        return self.offset is not None

    def close(self) -> None:
        with self._lock:
            if self._tif is not None:
                self._tif.close()
            self._tif = self._zarr = None

    def _zarr_array(self):
        with self._lock:
            if self._zarr is None:
                import tifffile
                import zarr

                self._tif = tifffile.TiffFile(self.path)
                self._tif.filehandle.set_lock(True)  # dask may read from several threads
                store = self._tif.series[self.series].aszarr(level=self.level)
                self._zarr = zarr.open(store, mode="r")
            return self._zarr

    def __getitem__(self, key) -> np.ndarray:
        """Read ``key`` (a tuple of slices / ints, as dask passes them)."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        lead, inner = key[: self.ndim - self.plane_ndim], key[self.ndim - self.plane_ndim :]
        lead_ranges = [range(*k.indices(n)) if isinstance(k, slice) else [int(k) % n]
                       for k, n in zip(lead, self.shape)]
        with self._lock:
            self.reads += math.prod(len(r) for r in lead_ranges)
        if self.mapped:
            counts = [len(r) for r in lead_ranges]
            plane_shape = self.shape[self.ndim - self.plane_ndim :]
            planes = [self._read_mapped(tuple(r[i] for r, i in zip(lead_ranges, position)), inner)
                      for position in np.ndindex(*counts)]
            inner_shape = planes[0].shape if planes else np.empty(plane_shape, np.uint8)[inner].shape
            block = np.stack(planes) if planes else np.empty(0, self.dtype)
            block = block.reshape(*counts, *inner_shape)
            dropped = tuple(i for i, k in enumerate(lead) if not isinstance(k, slice))  # integer keys
            return block.squeeze(axis=dropped) if dropped else block
        return np.asarray(self._zarr_array()[key])

    def _read_mapped(self, index: tuple[int, ...], inner: tuple) -> np.ndarray:
        """Map exactly one plane of the file, copy the part ``inner`` out, unmap."""
        plane_shape = self.shape[self.ndim - self.plane_ndim :]
        count = math.prod(plane_shape)
        flat = int(np.ravel_multi_index(index, self.shape[: self.ndim - self.plane_ndim])) if index else 0
        offset = self.offset + flat * count * self.dtype.itemsize
        start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be aligned
        with open(self.path, "rb") as handle, mmap.mmap(
            handle.fileno(), offset - start + count * self.dtype.itemsize, access=mmap.ACCESS_READ, offset=start
        ) as mapped:
            view = np.frombuffer(mapped, dtype=self.file_dtype, count=count, offset=offset - start)
            plane = np.array(view.reshape(plane_shape)[inner], dtype=self.dtype)  # a copy, native byte order
            del view  # the map cannot close while a view of it exists
        return plane


class LazyStack:
    """An nD image whose 2D planes are read on demand.

    Parameters
    ----------
    data : dask array (or anything ``dask.array.asarray`` takes)
    axes : str, optional
        One letter per dimension (tifffile's: ``T`` time, ``Z`` depth, ``C`` channel,
        ``Y``/``X`` the plane, ``S`` RGB samples, ``Q``/``I`` unknown). By default
        ``"YX"`` / ``"YXS"`` (last axis 3 or 4 long) / ``"Q...YX"``.

    Attributes
    ----------
    data : dask.array.Array
        The whole stack, lazy; for files one chunk per plane (or per block of a large plane).
    axes : str
    path : str or None
    """

    def __init__(self, data, axes: str | None = None, *, path: str | None = None, source: _TiffSource | None = None):
        self.data = data if isinstance(data, da.Array) else da.asarray(data)
        if axes is None:
            axes = _default_axes(self.data.shape)
        if len(axes) != self.data.ndim:
            raise ValueError(f"axes {axes!r} has {len(axes)} letters for a {self.data.ndim}D array {self.data.shape}")
        if self.data.ndim < 2:
            raise ValueError(f"an image needs at least 2 dimensions, got shape {self.data.shape}")
        self.axes = axes
        self.path = path
        self._source = source

    # ---- shape --------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def rgb(self) -> bool:
        """True when planes are colour ``(Y, X, S)`` with 3 or 4 samples."""
        return self.axes.endswith("S") and self.shape[-1] in (3, 4) and self.data.ndim >= 3

    @property
    def plane_ndim(self) -> int:
        return 3 if self.rgb else 2

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return self.shape[-self.plane_ndim :]

    @property
    def stack_shape(self) -> tuple[int, ...]:
        """Shape of the leading axes that index planes (``()`` for a single plane)."""
        return self.shape[: -self.plane_ndim]

    @property
    def stack_axes(self) -> str:
        return self.axes[: -self.plane_ndim]

    @property
    def n_planes(self) -> int:
        return math.prod(self.stack_shape)

    def __len__(self) -> int:
        return self.n_planes

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"LazyStack({self.axes} {self.shape} {self.dtype}{where})"

    # ---- planes -------------------------------------------------------------------

    def plane_index(self, index) -> tuple[int, ...]:
        """Normalise ``index`` (a flat plane number or a tuple over the leading axes)."""
        if isinstance(index, (int, np.integer)) and len(self.stack_shape) != 1:
            if not 0 <= index < max(self.n_planes, 1):
                raise IndexError(f"plane {index} out of range for {self.n_planes} planes")
            return tuple(int(i) for i in np.unravel_index(int(index), self.stack_shape)) if self.stack_shape else ()
        index = tuple(int(i) for i in np.atleast_1d(index)) if not isinstance(index, tuple) else tuple(map(int, index))
        if len(index) != len(self.stack_shape):
            raise IndexError(
                f"plane index {index} needs {len(self.stack_shape)} values for axes {self.stack_axes!r} "
                f"{self.stack_shape}"
            )
        for i, n in zip(index, self.stack_shape):
            if not 0 <= i < n:
                raise IndexError(f"plane index {index} out of range for {self.stack_axes!r} {self.stack_shape}")
        return index

    def plane(self, index=()) -> np.ndarray:
        """Read one plane ``(Y, X)`` or ``(Y, X, S)`` into memory; nothing else is read."""
        index = self.plane_index(index)
        return np.asarray(self.data[index].compute(scheduler="synchronous"))

    def plane_indices(self) -> Iterator[tuple[int, ...]]:
        """Every plane index, in C order over the leading axes."""
        return np.ndindex(*self.stack_shape) if self.stack_shape else iter([()])

    @property
    def reads(self) -> int | None:
        """Plane (or plane-block) reads from the file so far (None for in-memory data)."""
        return None if self._source is None else self._source.reads

    @property
    def memory_mapped(self) -> bool:
        return self._source is not None and self._source.mapped

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    def __enter__(self) -> LazyStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stack(path: str | os.PathLike, *, series: int = 0, level: int = 0, block: int = 2048) -> LazyStack:
    """Open a TIFF / BigTIFF / OME-TIFF / ImageJ file lazily.

    Parameters
    ----------
    path : path of the file
    series : which image series (OME files may hold several); default the first.
    level : pyramid level (0 = full resolution).
    block : int
        Planes larger than ``block`` x ``block`` pixels are split into dask chunks of
        that size, so that reading one tile of a huge plane reads only the blocks under it.

    Returns
    -------
    LazyStack with axes from the file's metadata; one dask chunk per plane (or per
    block of a large plane).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    source = _TiffSource(path, series=series, level=level)
    plane_dims = source.shape[source.ndim - source.plane_ndim :]
    chunks = (1,) * (source.ndim - source.plane_ndim) + tuple(
        min(n, block) if i < 2 else n for i, n in enumerate(plane_dims))
    stat = path.stat()
    identity = f"{source.path}|{stat.st_mtime_ns}|{stat.st_size}|{series}|{level}"
    name = "tiff-" + hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
    data = da.from_array(source, chunks=chunks, name=name, asarray=False, fancy=False, lock=False)
    axes = source.axes
    # Planar RGB ("SYX", "TSYX"...): bring the samples to the end, channel-last.
    if "S" in axes and not axes.endswith("S") and source.shape[axes.index("S")] in (3, 4):
        order = [i for i, a in enumerate(axes) if a != "S"] + [axes.index("S")]
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
    elif "S" in axes and not axes.endswith("S"):
        axes = axes.replace("S", "C")  # samples that are not colour: treat as channels
    return LazyStack(data, axes, path=str(path), source=source)


def read_plane(path: str | os.PathLike, index=None) -> np.ndarray:
    """Read one 2D plane ``(Y, X)`` or ``(Y, X, S)`` of an image file, checking its size first.

    Parameters
    ----------
    path : a TIFF (any axes; only the requested plane is read) or a PNG / JPEG / BMP file.
    index : int or tuple, optional
        The plane of a stack, as :meth:`LazyStack.plane` takes it (a flat plane number or
        one index per leading axis). Required when the file has more than one plane.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageReadError
        Corrupt, truncated or too large for memory (one line naming the file and the problem).
    IndexError
        ``index`` does not name a plane of the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            with open_stack(path) as stack:
                if index is None and stack.n_planes != 1:
                    raise IndexError(
                        f"{path} holds {stack.n_planes} planes (axes {stack.axes!r}, shape {stack.shape}); "
                        "give the index of one plane"
                    )
                check_plane_size(stack.plane_shape, stack.dtype, path)
                if not stack.stack_shape and index in (0, (0,)):  # "the first plane" of a single plane
                    index = None
                return stack.plane(() if index is None else index)
        return _read_pillow(path, index)
    except (ImageReadError, IndexError, FileNotFoundError, MemoryError):
        raise
    except Exception as error:  # zlib.error, struct.error, tifffile / PIL errors ...
        raise ImageReadError(f"{path}: cannot read this image ({first_line(error)})") from None


def _read_pillow(path: Path, index) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:  # raises DecompressionBombError past Pillow's pixel limit
        if index not in (None, 0, (), (0,)):
            raise IndexError(f"{path} holds one plane; plane {index} requested")
        bands = len(image.getbands())
        dtype = np.uint16 if image.mode.startswith("I;16") else np.uint8
        check_plane_size((image.height, image.width, bands), dtype, path)
        return np.asarray(image)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _default_axes(shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[-2] > 4:
        return "YXS"
    return "Q" * (len(shape) - 2) + "YX"
