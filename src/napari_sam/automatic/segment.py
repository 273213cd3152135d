"""The Python API of automatic segmentation, beside :class:`~napari_sam.inference.predictor.Predictor`,
and its per-plane unit of batch work for stacks.

.. code-block:: python

    from napari_sam.automatic import AutomaticSegmenter
    segmenter = AutomaticSegmenter.load("path/to/micro_sam_checkpoint.pt")  # decoder found: AIS
    labels = segmenter.segment(plane)                                       # (H, W) uint32
    segmenter = AutomaticSegmenter.load("default", mode="amg")              # any model: AMG

Stacks: :func:`segment_plane` takes a :class:`SegmentAllJob` (plain, picklable settings)
and a plane index, opens the file and the model itself once per process, and returns that
plane's labels, so it runs in a loop (:func:`segment_stack`), as ``dask.delayed`` tasks
(:func:`plane_tasks`) or on a cluster, the pattern of :mod:`napari_sam.inference.batch`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..imaging import DEFAULT_NORMALIZATION, Normalization
from ..model.family import ModelFamily
from .ais import Progress, decoder_maps, tile_grid
from .amg import AmgOptions, segment_everything
from .watershed import WatershedOptions, instances_from_maps

__all__ = ["MODES", "AutomaticSegmenter", "SegmentAllJob", "plane_tasks", "segment_plane", "segment_stack"]

MODES = ("ais", "amg")


class AutomaticSegmenter:
    """Segment every object of a plane: the learned decoder (``"ais"``) or point grid (``"amg"``).

    Parameters
    ----------
    model : ModelFamily
    decoder : InstanceDecoder, optional
        Needed for ``"ais"``.
    mode : {"ais", "amg"}, optional
        Default ``"ais"`` when there is a decoder, else ``"amg"``.
    tile_size, halo : int, optional
        Tiling of large planes (default the model input and an eighth of it).
    normalization : Normalization
        Pixels -> uint8 for the project's conventions (micro-sam decoders scale min-max).
    watershed : WatershedOptions, optional
        AIS post-processing; default the options tuned with the decoder
        (``decoder.watershed_options``, stored in decoder files trained here), else micro-sam's.
    amg : AmgOptions
        AMG settings.
    min_size : int, optional
        When given, replaces ``watershed.min_size`` and ``amg.min_area`` (pixels).
    cache_dir : path, optional
        Read (and write) tile embeddings in this cache, the one ``napari-sam embed`` fills
        (only with the project's normalisation: micro-sam's min-max scaling is another input).
    object_size : "auto", float or None
        :mod:`.scale`. ``"auto"`` (default): when the decoder (or, in AMG, the ``sizer``) has
        a preferred object size (decoders trained here), measure the objects of a first pass
        and, if they are far from it, segment the plane again resized to it. A number: the typical
        object diameter in plane pixels (one pass, resized). None: the plane as it is.
    sizer : InstanceDecoder, optional
        AMG only: a decoder with a preferred object size (:func:`~.loading.sizing_decoder`,
        the default model's bundled one) whose first pass measures the objects, so the point
        grid runs on the plane resized to that size too (``load`` finds it).
    """

    def __init__(self, model: ModelFamily, decoder=None, *, mode: str | None = None, tile_size: int | None = None,
                 halo: int | None = None, normalization: Normalization = DEFAULT_NORMALIZATION,
                 watershed: WatershedOptions | None = None, amg: AmgOptions = AmgOptions(),
                 min_size: int | None = None, cache_dir: str | os.PathLike | None = None,
                 object_size: str | float | None = "auto", sizer=None) -> None:
        mode = mode or ("ais" if decoder is not None else "amg")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "ais" and decoder is None:
            raise ValueError("mode 'ais' needs an instance decoder (a checkpoint with 'decoder_state' or a "
                             "'*_decoder' file); mode 'amg' works with every model")
        self.model, self.decoder, self.mode = model, decoder, mode
        self.sizer = decoder if mode == "ais" else sizer
        self.tile_size, self.halo = tile_size, halo
        self.normalization = normalization
        if watershed is None:
            watershed = getattr(decoder, "watershed_options", None) or WatershedOptions()
        if min_size is not None:
            watershed, amg = replace(watershed, min_size=int(min_size)), replace(amg, min_area=int(min_size))
        self.watershed, self.amg = watershed, amg
        self.cache_dir = cache_dir
        if object_size is not None and object_size != "auto":
            if isinstance(object_size, str) or not float(object_size) > 0:
                raise ValueError(f"object_size must be 'auto', None or a diameter in pixels > 0, got {object_size!r}")
            if self.preferred_size is None:
                raise ValueError("no preferred object size to resize to (only instance decoders trained by "
                                 "napari-sam record one; AMG borrows the model's bundled one): leave object_size "
                                 "at 'auto' or None")
            object_size = float(object_size)
        self.object_size = object_size

    @property
    def preferred_size(self) -> float | None:
        """The preferred object diameter in model-input pixels (of the decoder, or in AMG of
        the sizing decoder), if there is one."""
        return getattr(self.sizer, "object_size", None)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = "default", decoder: str | os.PathLike | None = None, *,
             device: str | None = None, **kwargs) -> AutomaticSegmenter:
        """Load a model (:func:`napari_sam.checkpoints.load_model`) and its instance decoder.

        The decoder is read from ``decoder`` when given, else found by
        :func:`~.loading.decoder_source`: a named model's paired decoder (``vit_b_lm`` ->
        ``vit_b_lm_decoder``, downloaded on first use), or the model file's own
        ``decoder_state``. Keywords as the constructor.
        """
        from ..checkpoints import load_model
        from .loading import decoder_source, load_decoder

        model = load_model(name_or_path, device=device)
        source = decoder if decoder is not None else decoder_source(model, kwargs.get("mode"))
        instance_decoder = None if source is None else load_decoder(source, device=model.device, model=model)
        if instance_decoder is None and kwargs.get("object_size", "auto") is not None and "sizer" not in kwargs:
            from .loading import sizing_decoder

            kwargs["sizer"] = sizing_decoder(model, device=model.device)
        return cls(model, instance_decoder, **kwargs)

    @property
    def conventions(self) -> str:
        """``"micro_sam"`` (min-max input scaling) when the decoder is micro-sam's, else ``"napari_sam"``."""
        return getattr(self.decoder, "conventions", "napari_sam")

    def _embedder(self, plane: np.ndarray):
        if self.cache_dir is None or self.conventions != "napari_sam":
            return None
        from ..inference.embeddings import EmbeddingStore
        from ..inference.predictor import Predictor
        from ..inference.tiling import TiledPredictor

        store = EmbeddingStore(self.model, self.normalization, memory_mb=0, cache_dir=self.cache_dir)
        tiled = TiledPredictor(Predictor(self.model, self.normalization), store, tile_size=self.tile_size,
                               halo=self.halo)
        tiled.set_plane(plane)
        if [t.window for t in tiled.grid] != [t.window for t in tile_grid(self.model, plane.shape, self.tile_size,
                                                                         self.halo)]:
            return None  # another tiling: the cache cannot serve these windows
        return lambda tile, rgb: tiled.embedding(tile)

    def segment(self, plane: np.ndarray, *, progress: Progress | None = None,
                cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Instance labels of one plane, ``(H, W)`` uint32 (0 background, objects 1..n).

        ``progress(done, total)`` after each tile; ``cancel()`` checked before each tile
        (True raises :class:`~napari_sam.automatic.ais.SegmentationCancelled`).
        """
        plane = np.asarray(plane)
        common = dict(tile_size=self.tile_size, halo=self.halo, normalization=self.normalization,
                      progress=progress, cancel=cancel)
        return self.segment_scaled(plane, common)[0]

    def segment_scaled(self, plane: np.ndarray, common: dict) -> tuple[np.ndarray, float]:
        """Labels of ``plane`` and the resize factor they were made at (:mod:`.scale`)."""
        factor, maps = self._scale(plane, common)
        if self.mode == "amg":
            return self._amg(plane, common, factor), factor
        if maps is None or factor != 1.0:  # the first pass's maps serve when no resize is asked
            maps = self._maps(plane, common, factor)
        return instances_from_maps(maps[0], maps[1], maps[2], self.watershed), factor

    def _scale(self, plane: np.ndarray, common: dict) -> tuple[float, np.ndarray | None]:
        """The resize factor for ``plane``, and the sizing decoder's first-pass maps when it
        was measured (None when the size was given or there is none to resize to)."""
        from . import scale

        preferred = self.preferred_size if self.object_size is not None else None
        if preferred is None:
            return 1.0, None
        pixel_scale = scale.input_scale(self.model.image_size, self.tile_size or self.model.image_size, plane.shape)
        if self.object_size != "auto":
            return scale.scale_for_size(self.object_size, preferred, pixel_scale), None
        maps = decoder_maps(self.model, self.sizer, plane, embed=self._embedder(plane), **common)
        foreground = maps[0] > self.watershed.foreground_threshold
        return scale.measured_scale(foreground, preferred, pixel_scale, max(self.watershed.min_size, 9)), maps

    def _maps(self, plane: np.ndarray, common: dict, factor: float) -> np.ndarray:
        """The decoder's maps of ``plane`` decoded resized by ``factor``, at the plane's shape."""
        from . import scale

        if factor == 1.0:
            return decoder_maps(self.model, self.decoder, plane, embed=self._embedder(plane), **common)
        maps = decoder_maps(self.model, self.decoder, scale.resize_plane(plane, factor), **common)
        return scale.resize_maps(maps, plane.shape[:2])

    def _amg(self, plane: np.ndarray, common: dict, factor: float) -> np.ndarray:
        """AMG labels of ``plane``, the point grid run on it resized by ``factor``."""
        from . import scale

        if factor == 1.0:
            return segment_everything(self.model, plane, self.amg, conventions=self.conventions,
                                      embed=self._embedder(plane), **common)
        labels = segment_everything(self.model, scale.resize_plane(plane, factor), self.amg,
                                    conventions=self.conventions, **common)
        if factor < 1.0:  # made on a shrunk plane: smooth outlines at the plane's resolution
            return scale.upsample_labels(labels, plane.shape[:2])
        return scale.resize_labels(labels, plane.shape[:2])


# --------------------------------------------------------------------------------------
# Stacks, plane by plane
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentAllJob:
    """What to segment, as plain values (sent to dask workers as is).

    Attributes
    ----------
    path : str
        A TIFF stack (see :func:`napari_sam.io.open_stack`).
    model : str
        Named model or checkpoint path.
    decoder : str, optional
        Decoder file (default: the model file's own decoder, if any).
    mode : {"ais", "amg"}, optional
        Default AIS when a decoder is found, else AMG.
    device : str, optional
    tile_size, halo : int, optional
    cache_dir : str, optional
        Embedding cache to read / fill.
    series, level : int
    watershed : WatershedOptions, optional
        Default: the decoder's tuned options (see :class:`AutomaticSegmenter`).
    amg : AmgOptions
    min_size : int, optional
        Replaces ``watershed.min_size`` and ``amg.min_area`` when given.
    object_size : "auto", float or None
        The object size (see :class:`AutomaticSegmenter`).
    """

    path: str
    model: str = "default"
    decoder: str | None = None
    mode: str | None = None
    device: str | None = None
    tile_size: int | None = None
    halo: int | None = None
    cache_dir: str | None = None
    series: int = 0
    level: int = 0
    watershed: WatershedOptions | None = None
    amg: AmgOptions = field(default=AmgOptions())
    min_size: int | None = None
    object_size: str | float | None = "auto"


_SEGMENTERS: dict = {}
_STACKS: dict = {}
_STATE_LOCK = threading.Lock()
_TASK_LOCK = threading.Lock()  # tasks in threads of one process take turns on the model


def job_segmenter(job: SegmentAllJob) -> AutomaticSegmenter:
    """The job's segmenter, loaded once per process."""
    key = (job.model, job.decoder, job.mode, job.device, job.tile_size, job.halo, job.cache_dir, job.watershed,
           job.amg, job.min_size, job.object_size)
    with _STATE_LOCK:
        if key not in _SEGMENTERS:
            _SEGMENTERS[key] = AutomaticSegmenter.load(
                job.model, job.decoder, device=job.device, mode=job.mode, tile_size=job.tile_size, halo=job.halo,
                watershed=job.watershed, amg=job.amg, min_size=job.min_size, cache_dir=job.cache_dir,
                object_size=job.object_size)
        return _SEGMENTERS[key]


def job_stack(job: SegmentAllJob):
    """The job's lazy stack, opened once per process (again if the file changed)."""
    from ..io import open_stack

    stat = os.stat(job.path)
    key = (os.path.abspath(job.path), stat.st_mtime_ns, stat.st_size, job.series, job.level)
    with _STATE_LOCK:
        if key not in _STACKS:
            _STACKS[key] = open_stack(job.path, series=job.series, level=job.level)
        return _STACKS[key]


def segment_plane(job: SegmentAllJob, index) -> np.ndarray:
    """Labels ``(H, W)`` uint32 of plane ``index`` of ``job.path``; the unit of batch work."""
    stack = job_stack(job)
    plane = stack.plane(stack.plane_index(index))
    segmenter = job_segmenter(job)
    with _TASK_LOCK:
        return segmenter.segment(plane)


def plane_tasks(job: SegmentAllJob, indices: Iterable | None = None) -> list:
    """One ``dask.delayed`` task per plane: ``dask.compute(*plane_tasks(job))`` gives the labels."""
    import dask

    indices = list(job_stack(job).plane_indices()) if indices is None else list(indices)
    task = dask.delayed(segment_plane, pure=False)
    return [task(job, index, dask_key_name=f"segment-all-{'-'.join(map(str, np.atleast_1d(index)))}")
            for index in indices]


def segment_stack(job: SegmentAllJob, indices: Sequence | None = None, *, progress: bool = True,
                  scheduler: str = "sync") -> np.ndarray:
    """Labels of ``indices`` (default every plane): ``(N, H, W)`` uint32 in the order given.

    Planes run as dask tasks (``scheduler``: ``"sync"``, ``"threads"`` or ``"processes"``)
    with a progress bar over planes; each plane is read, segmented and dropped before the next.
    """
    import dask

    from ..console import progress_bar

    stack = job_stack(job)
    indices = list(stack.plane_indices()) if indices is None else list(indices)
    out = np.zeros((len(indices),) + tuple(stack.plane_shape[:2]), np.uint32)
    bar = progress_bar(total=len(indices), unit="plane", desc="segment-all", disable=not progress)
    try:
        for position, task in enumerate(plane_tasks(job, indices)):
            out[position] = dask.compute(task, scheduler=scheduler)[0]
            bar.update(1)
    finally:
        bar.close()
    return out
