"""napari layers <-> prompts and masks of one 2D plane.

Frames (see ``napari_sam.inference.transforms`` for the model side)
------
world
    napari's world coordinates, one per viewer axis (``viewer.dims.point``); a layer
    with fewer axes covers the last ones. Layer ``scale`` / ``translate`` (e.g.
    anisotropic voxels) map a layer's data coordinates to world.
data
    One layer's own array coordinates (``layer.world_to_data`` / ``data_to_world``).
plane (``rc``)
    ``(row, col)`` pixels of the 2D plane being annotated: the image layer's last two
    spatial axes at the viewer's current position. Pixel ``i`` is centred at ``i``.

Only napari's public layer API is used. The plane is always the image's last two
spatial axes; the viewer must show them (the default 2D view, possibly transposed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..inference import transforms

# Points layer feature holding each point's sign.
SIGN_FEATURE = "prompt"
POSITIVE, NEGATIVE = "positive", "negative"
SIGN_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}

# Shape types whose bounding box becomes a box prompt (lines and paths have no area).
BOX_SHAPE_TYPES = ("rectangle", "ellipse", "polygon")


@dataclass(frozen=True)
class PlaneRef:
    """Where the annotated 2D plane lies in an image layer.

    Attributes
    ----------
    layer_name : str
        Name of the image layer (for messages).
    layer_id : int
        ``id()`` of the image layer: part of :attr:`key`.
    index : tuple of int and slice
        Index into the layer's (highest-resolution) data that reads the plane:
        an int for every non-plane axis, ``slice(None)`` for the plane axes (and RGB).
    channel_axis : int or None
        Data axis held fixed at a chosen channel instead of following the viewer.
    shape : (H, W)
        Plane shape in pixels.
    """

    layer_name: str
    layer_id: int
    index: tuple
    channel_axis: int | None
    shape: tuple[int, int]

    @property
    def key(self) -> tuple:
        """Hashable identity of the plane: the layer and the position on its stack axes."""
        return (self.layer_id, self.stack_position)

    @property
    def stack_position(self) -> tuple[int, ...]:
        """Integer index of every non-plane spatial axis (the channel axis included)."""
        return tuple(i for i in self.index if isinstance(i, int))

    @property
    def ndim(self) -> int:
        """Spatial axes of the image layer."""
        return len(self.stack_position) + 2


def layer_array(layer):
    """The layer's full-resolution array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def plane_ref(image_layer, world_point: Sequence[float], channel_axis: int | None = None, channel: int = 0) -> PlaneRef:
    """The plane of ``image_layer`` at the viewer position ``world_point``.

    Parameters
    ----------
    image_layer : napari.layers.Image
        2D, 2D RGB or nD (e.g. ZYX, TYX, TZYX, CZYX).
    world_point : sequence of float
        ``viewer.dims.point``.
    channel_axis : int, optional
        A data axis (not one of the last two) that holds channels; it stays at
        ``channel`` whatever the viewer shows.
    channel : int
        Channel index on ``channel_axis``.

    Raises
    ------
    ValueError
        If the position is outside the image, or the channel axis or index is invalid.
    """
    ndim = image_layer.ndim
    shape = layer_array(image_layer).shape[:ndim]
    if ndim < 2:
        raise ValueError(f"image layer {image_layer.name!r} has {ndim} axis; SAM needs a 2D plane")
    if channel_axis is not None:
        if not 0 <= channel_axis < ndim - 2:
            raise ValueError(
                f"channel axis {channel_axis} of {image_layer.name!r} must be one of the first "
                f"{ndim - 2} axes (the last two are the plane)"
            )
        if not 0 <= channel < shape[channel_axis]:
            raise ValueError(
                f"channel {channel} is outside axis {channel_axis} of {image_layer.name!r} "
                f"(size {shape[channel_axis]})"
            )
    coords = np.asarray(image_layer.world_to_data(np.asarray(world_point, dtype=float)), dtype=float)
    index: list = []
    for axis in range(ndim - 2):
        if axis == channel_axis:
            index.append(int(channel))
            continue
        position = int(np.round(coords[axis]))  # napari slices by rounding too
        if not 0 <= position < shape[axis]:
            raise ValueError(
                f"the viewer's position is outside image layer {image_layer.name!r} on axis {axis} "
                f"(index {position}, size {shape[axis]})"
            )
        index.append(position)
    index += [slice(None)] * (layer_array(image_layer).ndim - (ndim - 2))
    return PlaneRef(
        layer_name=image_layer.name,
        layer_id=id(image_layer),
        index=tuple(index),
        channel_axis=channel_axis,
        shape=(int(shape[-2]), int(shape[-1])),
    )


def shifted_ref(ref: PlaneRef, axis: int, step: int, image_layer) -> PlaneRef | None:
    """``ref`` moved by ``step`` along stack ``axis``, or None when that leaves the image."""
    shape = layer_array(image_layer).shape
    position = ref.index[axis] + step
    if axis == ref.channel_axis or not 0 <= position < shape[axis]:
        return None
    index = list(ref.index)
    index[axis] = position
    return PlaneRef(ref.layer_name, ref.layer_id, tuple(index), ref.channel_axis, ref.shape)


class LazyPlane:
    """The plane ``ref`` of a (possibly lazy) nD array, read only when and where indexed.

    ``plane[rows, cols]`` reads just that window of the layer's data (one tile of a large
    plane on disk); ``np.asarray(plane)`` reads the whole plane. Nothing is read on the
    GUI thread when a worker does the indexing.
    """

    def __init__(self, data, ref: PlaneRef) -> None:
        self.data = data
        self.ref = ref
        plane_axes = [axis for axis, i in enumerate(ref.index) if isinstance(i, slice)]
        self.shape = tuple(int(data.shape[axis]) for axis in plane_axes)
        self.dtype = data.dtype
        self._first_plane_axis = plane_axes[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        index = list(self.ref.index)
        for offset, part in enumerate(key):
            index[self._first_plane_axis + offset] = part
        return np.asarray(self.data[tuple(index)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        plane = np.asarray(self.data[self.ref.index])
        return plane if dtype is None else plane.astype(dtype, copy=False)


def read_plane(image_layer, ref: PlaneRef) -> np.ndarray:
    """The plane as a numpy array, ``(H, W)`` or ``(H, W, C)`` for RGB(A) layers."""
    return np.asarray(layer_array(image_layer)[ref.index])


# --------------------------------------------------------------------------- world <-> plane


def layer_to_world(layer, data_coords: np.ndarray, world_point: Sequence[float]) -> np.ndarray:
    """Data coordinates ``(N, layer.ndim)`` of ``layer`` -> world ``(N, len(world_point))``.

    A layer with fewer axes than the viewer lies on every position of the missing
    leading axes (napari shows it there), so those take the current ``world_point``.
    """
    world_point = np.asarray(world_point, dtype=float)
    data_coords = np.asarray(data_coords, dtype=float).reshape(-1, layer.ndim)
    world = np.tile(world_point, (len(data_coords), 1))
    for row, coords in zip(world, data_coords):
        mapped = np.asarray(layer.data_to_world(coords), dtype=float)
        row[len(world_point) - len(mapped):] = mapped
    return world


def world_to_plane(image_layer, ref: PlaneRef, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates ``(N, D)`` -> plane ``(row, col)`` ``(N, 2)`` and an on-plane flag ``(N,)``.

    A coordinate is on the plane when it rounds to the plane's index on every stack axis
    (the channel axis excepted: a prompt applies to whichever channel is segmented).
    """
    world = np.asarray(world, dtype=float).reshape(len(world), -1)
    data = np.array([np.asarray(image_layer.world_to_data(w), dtype=float) for w in world]).reshape(
        len(world), image_layer.ndim
    )
    on_plane = np.ones(len(data), dtype=bool)
    for axis, position in enumerate(ref.stack_position):
        if axis != ref.channel_axis:
            on_plane &= np.round(data[:, axis]) == position
    return data[:, -2:], on_plane


# --------------------------------------------------------------------------- prompts


def empty_sign_features():
    """Features of an empty prompt Points layer: a categorical sign column."""
    import pandas as pd

    return pd.DataFrame({SIGN_FEATURE: pd.Categorical([], categories=[POSITIVE, NEGATIVE])})


def ensure_sign_feature(points_layer) -> None:
    """Give a Points layer the sign feature (existing points positive) if it lacks it."""
    if SIGN_FEATURE in points_layer.features.columns:
        return
    import pandas as pd

    features = points_layer.features.copy()
    features[SIGN_FEATURE] = pd.Categorical([POSITIVE] * len(features), categories=[POSITIVE, NEGATIVE])
    points_layer.features = features


def point_signs(points_layer) -> np.ndarray:
    """``(N,)`` 1 for positive points, 0 for negative ones (all positive without the feature)."""
    n = len(points_layer.data)
    features = points_layer.features
    if SIGN_FEATURE not in features.columns:
        return np.ones(n, dtype=np.int64)
    return (np.asarray(features[SIGN_FEATURE].astype(str)) != NEGATIVE).astype(np.int64)


def points_prompt(points_layer, image_layer, ref: PlaneRef, world_point) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``points_layer`` on the plane: ``(N, 2)`` (row, col) and ``(N,)`` 1/0 labels.

    Points on other slices and outside the image are left out.
    """
    if points_layer is None or len(points_layer.data) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    world = layer_to_world(points_layer, points_layer.data, world_point)
    rc, on_plane = world_to_plane(image_layer, ref, world)
    keep = on_plane & transforms.inside_plane_rc(rc, ref.shape)
    return rc[keep], point_signs(points_layer)[keep]


def boxes_prompt(shapes_layer, image_layer, ref: PlaneRef, world_point) -> np.ndarray:
    """One ``(r0, c0, r1, c1)`` box per rectangle (ellipse, polygon) on the plane: ``(M, 4)``.

    A shape's box is its bounding box in plane pixels, clipped to the plane; shapes on
    other slices, outside the image, lines and paths are left out.
    """
    boxes = []
    if shapes_layer is None:
        return np.zeros((0, 4))
    for vertices, shape_type in zip(shapes_layer.data, shapes_layer.shape_type):
        if shape_type not in BOX_SHAPE_TYPES:
            continue
        rc, on_plane = world_to_plane(image_layer, ref, layer_to_world(shapes_layer, vertices, world_point))
        if not on_plane.all():
            continue
        low = transforms.clip_to_plane_rc(rc.min(axis=0), ref.shape)
        high = transforms.clip_to_plane_rc(rc.max(axis=0), ref.shape)
        if (high - low).min() < 1.0:  # outside the image, or a zero-area click
            continue
        boxes.append(np.concatenate([low, high]))
    return np.asarray(boxes, dtype=float).reshape(-1, 4)


def prompts_on_plane(layer, image_layer, ref: PlaneRef, world_point) -> np.ndarray:
    """Indices of ``layer``'s points (or shapes) that lie on the plane."""
    if layer is None or len(layer.data) == 0:
        return np.zeros(0, dtype=int)
    items = layer.data if isinstance(layer.data, list) else [row[None] for row in np.asarray(layer.data)]
    keep = []
    for i, item in enumerate(items):
        _, on_plane = world_to_plane(image_layer, ref, layer_to_world(layer, item, world_point))
        if on_plane.all():
            keep.append(i)
    return np.asarray(keep, dtype=int)


# --------------------------------------------------------------------------- labels


def labels_plane_index(labels_layer, image_layer, ref: PlaneRef, world_point) -> tuple[int, ...]:
    """Integer index of the labels layer's stack axes for the plane (empty for 2D labels).

    Raises
    ------
    ValueError
        If the labels layer does not cover the image plane pixel for pixel, or the
        viewer's position is outside it.
    """
    shape = layer_array(labels_layer).shape
    if tuple(shape[-2:]) != tuple(ref.shape):
        raise ValueError(
            f"labels layer {labels_layer.name!r} has planes of {shape[-2]}x{shape[-1]} pixels, "
            f"image {ref.layer_name!r} of {ref.shape[0]}x{ref.shape[1]}: they must match"
        )
    if not (
        np.allclose(labels_layer.scale[-2:], image_layer.scale[-2:])
        and np.allclose(labels_layer.translate[-2:], image_layer.translate[-2:])
    ):
        raise ValueError(
            f"labels layer {labels_layer.name!r} is placed differently from image {ref.layer_name!r} "
            "(scale / translate of the last two axes differ): it must cover the image pixel for pixel"
        )
    coords = np.asarray(labels_layer.world_to_data(np.asarray(world_point, dtype=float)), dtype=float)
    index = []
    for axis in range(labels_layer.ndim - 2):
        position = int(np.round(coords[axis]))
        if not 0 <= position < shape[axis]:
            raise ValueError(
                f"the viewer's position is outside labels layer {labels_layer.name!r} on axis {axis}"
            )
        index.append(position)
    return tuple(index)


def read_labels_plane(labels_layer, plane_index: tuple[int, ...]) -> np.ndarray:
    """The labels layer's ``(H, W)`` plane at ``plane_index`` (a copy)."""
    return np.array(layer_array(labels_layer)[plane_index])


def next_label_id(labels_layer) -> int:
    """One more than the largest label in the layer."""
    data = layer_array(labels_layer)
    return int(np.max(data)) + 1 if data.size else 1


def write_edit(labels_layer, plane_index: tuple[int, ...], edit) -> int:
    """Write a :class:`~napari_sam.annotate.commit.PlaneEdit` into one plane of a Labels
    layer as one undoable step: a single Ctrl+Z (``labels_layer.undo()``) takes it back.

    One ``Labels.data_setitem`` call, which refreshes only the changed region.
    Returns the number of pixels changed.
    """
    if len(edit) == 0:
        return 0
    indices = tuple(np.full(len(edit), i, dtype=np.intp) for i in plane_index) + (edit.rows, edit.cols)
    with labels_layer.block_history():
        labels_layer.data_setitem(indices, np.asarray(edit.new))
    return len(edit)


def write_masks(
    labels_layer,
    plane_index: tuple[int, ...],
    masks: Sequence[np.ndarray],
    values: Sequence[int],
    *,
    preserve: bool = True,
    replace: int | None = None,
) -> int:
    """Write ``(H, W)`` masks into one plane of a Labels layer as one undoable edit.

    The rule is :func:`napari_sam.annotate.commit.paint`'s (``preserve``: never overwrite
    other non-zero labels; ``replace``: the refined label's pixels the masks do not cover
    become 0); ``values`` are the label ids, one per mask. Returns the pixels changed.
    """
    from ..annotate.commit import CommitPlan, paint

    plan = CommitPlan(tuple(np.asarray(m, dtype=bool) for m in masks), tuple(int(v) for v in values),
                      preserve=preserve, replace=replace)
    current = np.asarray(layer_array(labels_layer)[plane_index])
    return write_edit(labels_layer, plane_index, paint(current, plan))
