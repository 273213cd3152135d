"""Automatic 3D objects and tracks: per-plane automatic instances linked across planes.

Every plane of a stack is segmented on its own (:class:`~.segment.AutomaticSegmenter`),
so its ids mean nothing on the next plane; :func:`~napari_sam.annotate.linking.link`
then matches the instances of consecutive planes by the optimal assignment of their IoU
(pairs below ``iou_floor`` are not linked) and gives every linked object one id:

- z-stacks: 3D objects (``kind="objects"``);
- time-lapses: tracks (``kind="tracks"``), with divisions: a parent whose area mostly goes
  into two similar instances ends, both daughters start new tracks and record the parent.

The tracks table (:func:`tracks_rows`, written by :func:`write_tracks_csv` beside the labels
as ``LABELS.tracks.csv``) has one row per track and frame::

    track_id,frame,row,col,parent

``row, col`` the track's centroid on that frame (plane pixels), ``parent`` the id of the
track it divided from (0: none). ``track_id, frame, row, col`` is napari's Tracks data;
``{track_id: [parent]}`` its graph.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..annotate.linking import Linked, link

__all__ = ["LINK_KINDS", "MIN_PLANES", "TRACKS_HEADER", "drop_short", "link_kind", "link_planes", "segment_linked", "tracks_path", "tracks_rows",
           "write_tracks_csv", "read_tracks_csv"]

LINK_KINDS = ("objects", "tracks")
TRACKS_HEADER = ("track_id", "frame", "row", "col", "parent")


def link_kind(stack_axes: str) -> str:
    """``"tracks"`` when the planes are frames (the stack's plane axis is ``T``), else ``"objects"``."""
    return "tracks" if stack_axes.upper() == "T" else "objects"


#: Default ``min_planes`` per kind: a 3D object seen on one or two planes of a z-stack is
#: almost always a speck or a piece of a nucleus whose link broke (cells3d, AIS with the
#: default model: 195 objects for 20 nuclei, 3D F1 0.17; with 3: 31 objects, F1 0.71); a
#: track may rightly last one frame (a cell entering on the last one).
MIN_PLANES = {"objects": 3, "tracks": 1}


def link_planes(labels, kind: str = "objects", *, iou_floor: float = 0.3, min_planes: int | None = None) -> Linked:
    """Link per-plane instance labels ``(N, H, W)`` into 3D objects or tracks (divisions for tracks).

    ``min_planes``: linked objects on fewer planes are dropped (labels, tracks and parents);
    default :data:`MIN_PLANES` of the kind (never more than the stack's planes).

    Returns a :class:`~napari_sam.annotate.linking.Linked`: ``labels`` ``(N, H, W)`` uint32
    with one id per object / track, ``tracks`` ``(K, 4)`` (id, plane, row, col), ``parents``.
    """
    if kind not in LINK_KINDS:
        raise ValueError(f"kind must be one of {', '.join(LINK_KINDS)}; got {kind!r}")
    if not 0.0 < iou_floor <= 1.0:
        raise ValueError(f"iou_floor must be in (0, 1], got {iou_floor}")
    if len(np.shape(labels)) != 3:
        raise ValueError(f"linking needs per-plane labels of shape (N, H, W), got {np.shape(labels)}")
    if min_planes is not None and (int(min_planes) != min_planes or min_planes < 1):
        raise ValueError(f"min_planes must be a whole number >= 1, got {min_planes!r}")
    linked = link(labels, iou_floor=iou_floor, divisions=kind == "tracks")
    wanted = min(int(MIN_PLANES[kind] if min_planes is None else min_planes), len(linked.labels))
    return drop_short(linked, wanted) if wanted > 1 else linked


def drop_short(linked: Linked, min_planes: int) -> Linked:
    """``linked`` without the objects present on fewer than ``min_planes`` planes; a daughter
    whose parent is dropped keeps no parent."""
    labels = linked.labels
    if labels.size == 0 or labels.max() == 0:
        return linked
    present = np.zeros((len(labels), int(labels.max()) + 1), bool)
    for index, plane in enumerate(labels):
        present[index, np.unique(plane)] = True
    planes = present[:, 1:].sum(axis=0)
    short = np.flatnonzero(planes < min_planes) + 1  # ids present on 1..min_planes-1 planes
    short = short[planes[short - 1] > 0]
    if short.size == 0:
        return linked
    drop = np.zeros(int(labels.max()) + 1, bool)
    drop[short] = True
    kept_labels = np.where(drop[labels], 0, labels).astype(labels.dtype)
    # track and parent ids are ids of the labels, so all within ``drop``
    tracks = linked.tracks[~drop[linked.tracks[:, 0].astype(np.int64)]] if len(linked.tracks) else linked.tracks
    parents = {d: p for d, p in linked.parents.items() if not drop[d] and not drop[p]}
    return Linked(kept_labels, tracks, parents)


def segment_linked(segmenter, planes: Sequence, kind: str = "objects", *, iou_floor: float = 0.3,
                   min_planes: int | None = None, progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> Linked:
    """Segment every plane of ``planes`` with ``segmenter`` and link the instances.

    Parameters
    ----------
    segmenter : AutomaticSegmenter
    planes : (N, H, W) array-like (numpy, dask, a LazyStack's planes)
        Read one plane at a time.
    kind : "objects" (z-stacks) or "tracks" (time-lapses: divisions detected)
    iou_floor : float
        Instances of consecutive planes with a lower IoU are not linked.
    min_planes : int, optional
        Linked objects on fewer planes are dropped (default :data:`MIN_PLANES` of the kind).
    progress : callable(done, total), optional
        Planes segmented so far.
    cancel : callable() -> bool, optional
        Checked before each plane (True raises ``SegmentationCancelled``).

    Examples
    --------
    >>> linked = segment_linked(AutomaticSegmenter.load("default"), volume)   # (Z, H, W)
    >>> linked.labels                                                           # one id per 3D object
    """
    from .ais import SegmentationCancelled

    count = len(planes)
    if not count:
        raise ValueError("no planes to segment")
    per_plane = None
    for index in range(count):
        if cancel is not None and cancel():
            raise SegmentationCancelled("segment-all cancelled")
        labels = segmenter.segment(np.asarray(planes[index]), cancel=cancel)
        if per_plane is None:
            per_plane = np.zeros((count, *labels.shape), np.uint32)
        per_plane[index] = labels
        if progress is not None:
            progress(index + 1, count)
    return link_planes(per_plane, kind, iou_floor=iou_floor, min_planes=min_planes)


def tracks_path(out: str | os.PathLike) -> Path:
    """``LABELS.tracks.csv`` beside ``LABELS.tif`` (the label file's suffix replaced)."""
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".tracks.csv" if out.suffix else out.name + ".tracks.csv")


def tracks_rows(linked: Linked) -> np.ndarray:
    """``(K, 5)`` float rows ``track_id, frame, row, col, parent`` sorted by track then frame."""
    tracks = np.asarray(linked.tracks, float)
    if tracks.shape[1] != 4:
        raise ValueError(f"a tracks table needs 2D planes, got centroids of {tracks.shape[1] - 2} dimensions")
    parents = np.array([linked.parents.get(int(t), 0) for t in tracks[:, 0]], float)
    return np.column_stack([tracks, parents]) if len(tracks) else np.zeros((0, 5))


def write_tracks_csv(path: str | os.PathLike, linked: Linked) -> Path:
    """Write :func:`tracks_rows` with a header line (atomically); returns the path."""
    from ..files import atomic_write_bytes

    text = io.StringIO()
    text.write(",".join(TRACKS_HEADER) + "\n")
    for track, frame, row, col, parent in tracks_rows(linked):
        text.write(f"{int(track)},{int(frame)},{row:.3f},{col:.3f},{int(parent)}\n")
    return atomic_write_bytes(path, text.getvalue().encode())


def read_tracks_csv(path: str | os.PathLike) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks ``data`` ``(K, 4)`` (id, frame, row, col) and ``graph`` from a tracks CSV."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].strip() != ",".join(TRACKS_HEADER):
        raise ValueError(f"{path}: expected the header {','.join(TRACKS_HEADER)}")
    rows = np.loadtxt(lines[1:], delimiter=",", ndmin=2) if len(lines) > 1 else np.zeros((0, len(TRACKS_HEADER)))
    if rows.size and rows.shape[1] != len(TRACKS_HEADER):
        raise ValueError(f"{path}: expected the columns {','.join(TRACKS_HEADER)}")
    rows = rows.reshape(-1, len(TRACKS_HEADER))
    graph = {int(t): [int(p)] for t, p in zip(rows[:, 0], rows[:, 4]) if p}
    return rows[:, :4], graph
