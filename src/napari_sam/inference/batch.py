"""Precompute the embeddings of every plane (and tile) of a stack into the disk cache.

The unit of work is one plane: :func:`embed_plane` takes an :class:`EmbedJob` (plain,
picklable settings) and a plane index, opens the file and the model itself (once per
process, then reused), embeds the plane's tiles into the cache and returns a small
:class:`PlaneReport`. Nothing is shared between planes except the cache directory, whose
writes are atomic, so the same function runs unchanged

- in a loop (:func:`embed_stack`, the ``napari-sam embed`` command),
- as dask tasks: ``dask.compute(*plane_tasks(job))``,
- on a ``dask.distributed`` cluster: ``client.map(embed_plane, [job] * n, indices)``
  or ``embed_stack(job, client=client)``.

An interrupted run resumes: valid entries are verified and skipped, a truncated or
stale entry is recomputed. The widget and the Python API read the same cache when they
use the same model, normalisation, tile size and halo (``TiledPredictor`` with an
``EmbeddingStore(model, normalization, cache_dir=...)``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..imaging import DEFAULT_NORMALIZATION, Normalization

__all__ = ["EmbedJob", "PlaneReport", "add_embed_parser", "embed_plane", "embed_stack", "plane_tasks"]


@dataclass(frozen=True)
class EmbedJob:
    """What to precompute, as plain values (sent to dask workers as is).

    Attributes
    ----------
    path : str
        The TIFF stack.
    model : str
        A named model or checkpoint path (see :func:`napari_sam.checkpoints.load_model`).
    cache_dir : str
        The embedding cache directory.
    tile_size, halo : int, optional
        Tiling of planes; default as :class:`~napari_sam.inference.tiling.TiledPredictor`
        (the model's input size, and an eighth of it).
    device : str, optional
        ``cpu``, ``cuda``, ``mps``...; default the best available.
    series, level : int
        Which image in the file (see :func:`napari_sam.io.open_stack`).
    normalization : Normalization
    """

    path: str
    model: str
    cache_dir: str
    tile_size: int | None = None
    halo: int | None = None
    device: str | None = None
    series: int = 0
    level: int = 0
    normalization: Normalization = field(default=DEFAULT_NORMALIZATION)


@dataclass(frozen=True)
class PlaneReport:
    """What :func:`embed_plane` did for one plane."""

    index: tuple[int, ...]
    tiles: int
    computed: int
    seconds: float
    unwritten: int = 0  # computed, but the cache entry could not be written
    write_error: str | None = None


# Per-process state: the model and the open file are reused by every task of a worker.
_STORES: dict = {}
_STACKS: dict = {}
_STATE_LOCK = threading.Lock()
_TASK_LOCK = threading.Lock()  # tasks in threads of one process take turns on the model


def _store(job: EmbedJob):
    from .embeddings import EmbeddingStore
    from ..checkpoints import load_model

    key = (job.model, job.device, str(Path(job.cache_dir).expanduser()), job.normalization)
    with _STATE_LOCK:
        if key not in _STORES:
            # Precomputation keeps nothing in memory: every embedding goes to disk.
            _STORES[key] = EmbeddingStore(load_model(job.model, device=job.device), job.normalization,
                                          memory_mb=0, cache_dir=job.cache_dir)
        return _STORES[key]


def _stack(job: EmbedJob):
    from ..io import open_stack

    path = Path(job.path).expanduser()
    stat = path.stat()  # a rewritten file is opened again
    key = (str(path), stat.st_mtime_ns, stat.st_size, job.series, job.level)
    with _STATE_LOCK:
        if key not in _STACKS:
            _STACKS[key] = open_stack(job.path, series=job.series, level=job.level)
        return _STACKS[key]


def embed_plane(job: EmbedJob, index) -> PlaneReport:
    """Make sure the cache holds every tile of plane ``index``; the unit of batch work.

    Reads only that plane. Safe to run concurrently in threads or processes (also for
    the same plane: the last atomic write wins, and both are valid).
    """
    from .predictor import Predictor
    from .tiling import TiledPredictor

    start = time.perf_counter()
    stack = _stack(job)
    index = stack.plane_index(index)
    store = _store(job)
    with _TASK_LOCK:
        tiled = TiledPredictor(Predictor(store.model, store.normalization), store, tile_size=job.tile_size,
                               halo=job.halo)
        tiled.set_plane(stack.plane(index))
        failures = store.write_failures
        computed = tiled.precompute(keep_in_memory=False)
        unwritten = store.write_failures - failures
    return PlaneReport(index=index, tiles=len(tiled.grid), computed=int(computed),
                       seconds=time.perf_counter() - start, unwritten=unwritten,
                       write_error=store.last_write_error if unwritten else None)


def plane_tasks(job: EmbedJob, indices: Iterable | None = None) -> list:
    """One ``dask.delayed`` task per plane: ``dask.compute(*plane_tasks(job))``."""
    import dask

    indices = list(_stack(job).plane_indices()) if indices is None else list(indices)
    task = dask.delayed(embed_plane, pure=False)
    return [task(job, index, dask_key_name=f"embed-plane-{'-'.join(map(str, _tuple(index)))}")
            for index in indices]


def _tuple(index) -> tuple:
    return tuple(index) if isinstance(index, (tuple, list)) else (index,)


def embed_stack(job: EmbedJob, indices: Sequence | None = None, *, client=None, progress: bool = True,
                on_plane: Callable[[PlaneReport], None] | None = None) -> list[PlaneReport]:
    """Precompute ``indices`` (default every plane) of ``job.path``.

    Parameters
    ----------
    job : EmbedJob
    indices : sequence of plane indices, optional
    client : dask.distributed.Client, optional
        Run the planes as tasks on this cluster; by default in this process.
    progress : bool
        Show progress over planes (a bar in a terminal, a line per 10 % in a log).
    on_plane : callable(PlaneReport), optional
        Called as each plane finishes (in completion order).

    Returns
    -------
    The reports, one per plane, in completion order.
    """
    from ..console import progress_bar

    indices = list(_stack(job).plane_indices()) if indices is None else list(indices)
    reports: list[PlaneReport] = []
    bar = progress_bar(total=len(indices), unit="plane", desc="embedding", disable=not progress)
    try:
        if client is None:
            results: Iterable = (embed_plane(job, index) for index in indices)
        else:
            from dask.distributed import as_completed

            futures = client.map(embed_plane, [job] * len(indices), indices, pure=False)
            results = (future.result() for future in as_completed(futures))
        for report in results:
            reports.append(report)
            bar.update(1)
            bar.set_postfix(computed=sum(r.computed for r in reports),
                            cached=sum(r.tiles - r.computed for r in reports))
            if on_plane is not None:
                on_plane(report)
    finally:
        bar.close()
    return reports


# --------------------------------------------------------------------------------------
# The `napari-sam embed` subcommand
# --------------------------------------------------------------------------------------


def _planes(text: str) -> slice:
    try:
        parts = [int(p) if p else None for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3:
        import argparse

        raise argparse.ArgumentTypeError(f"--planes takes START:STOP[:STEP] or one plane number, got {text!r}")
    return slice(parts[0], parts[0] + 1) if len(parts) == 1 else slice(*parts)


def add_embed_parser(subparsers) -> None:
    """Register ``napari-sam embed`` on the CLI's subparsers."""
    embed = subparsers.add_parser(
        "embed",
        help="precompute the embeddings of every plane (and tile) of a TIFF stack into a cache",
        description="Precompute embeddings into a cache directory that the napari widget and the Python API "
                    "read. Resumes an interrupted run; reads one plane at a time.",
    )
    embed.add_argument("stack", help="TIFF / BigTIFF / OME-TIFF / ImageJ file")
    embed.add_argument("--model", default="default", help="model name (default, vit_t, vit_b, ...) or checkpoint path")
    embed.add_argument("--cache", required=True, help="embedding cache directory (created if missing)")
    embed.add_argument("--tile", type=int, default=None,
                       help="tile size in pixels for planes larger than it (default: the model input size)")
    embed.add_argument("--halo", type=int, default=None, help="tile halo in pixels (default: tile / 8)")
    embed.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    embed.add_argument("--series", type=int, default=0, help="image series in the file (default 0)")
    embed.add_argument("--planes", type=_planes, default=None,
                       help="only these planes, as flat numbers START:STOP[:STEP] (default: all)")
    embed.add_argument("--workers", type=int, default=0,
                       help="run on a local dask cluster with this many worker processes (default: in this process)")
    embed.set_defaults(func=_cmd_embed)


def _cmd_embed(args) -> int:
    from ..console import set_summary

    cache = Path(args.cache).expanduser()
    if cache.exists() and not cache.is_dir():
        raise ValueError(f"--cache {cache} is a file; give a folder (created if missing)")
    cache.mkdir(parents=True, exist_ok=True)
    if not os.access(cache, os.W_OK | os.X_OK):
        raise ValueError(f"--cache {cache} is not writable: nothing could be stored")
    job = EmbedJob(path=str(args.stack), model=args.model, cache_dir=str(cache), tile_size=args.tile,
                   halo=args.halo, device=args.device, series=args.series)
    stack = _stack(job)
    indices = list(stack.plane_indices())
    if args.planes is not None:
        selected = indices[args.planes]
        if not selected:
            span = f"{args.planes.start or 0}:{'' if args.planes.stop is None else args.planes.stop}"
            raise ValueError(f"--planes {span} selects no plane of {args.stack}, which has {len(indices)}")
        indices = selected
    print(f"{args.stack}: {stack.axes} {stack.shape} {stack.dtype}, {len(indices)} planes -> {args.cache}")
    start = time.perf_counter()
    if args.workers > 0:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True) as cluster, \
                Client(cluster) as client:
            reports = embed_stack(job, indices, client=client)
    else:
        reports = embed_stack(job, indices)
    tiles = sum(r.tiles for r in reports)
    computed = sum(r.computed for r in reports)
    unwritten = [r for r in reports if r.unwritten]
    if unwritten:  # a cache run that stored nothing must not look like a success
        count = sum(r.unwritten for r in unwritten)
        raise OSError(f"{count} of {computed} computed embeddings could not be written to the cache "
                      f"({unwritten[0].write_error})")
    done = f"{len(reports)} planes, {tiles} embeddings: {computed} computed, {tiles - computed} already cached"
    print(f"{done} ({time.perf_counter() - start:.1f} s)")
    set_summary(f"{done} in {args.cache}")
    return 0
