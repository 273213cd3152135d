"""Training data: image + instance-label pairs, the train / validation split, augmentation.

A :class:`Sample` is one 2D plane, already normalised to ``(H, W, 3)`` uint8 RGB by
:func:`napari_sam.imaging.to_rgb_uint8` (the normaliser inference uses), with its
``(H, W)`` instance labels (0 = background). Samples come from

* folders of TIFF (or PNG) files: :func:`find_pairs` + :func:`load_pairs`;
* numpy arrays, e.g. napari Image and Labels layers: :func:`samples_from_arrays`;
* the procedural generator: :class:`SyntheticSet` (an endless stream).

Stacks give one sample per plane. For training, a sample is brought into the model-input
frame once (:func:`prepare`: longest side resized to the model's ``image_size``, labels by
nearest neighbour) and augmented there (:class:`Augmentation`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..files import IMAGE_SUFFIXES as IMAGE_EXTENSIONS
from ..files import read_image
from ..imaging import to_rgb_uint8
from ..inference.transforms import resize_rgb, resized_shape

# Name endings that mark a file as the image or the labels of a pair ("cell_03_image.tif").
IMAGE_SUFFIXES = ("_image", "_images", "_img", "_raw", "_im")
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "_instances", "_gt")


@dataclass
class Sample:
    """One training plane.

    Attributes
    ----------
    image : (H, W, 3) uint8
        Normalised RGB.
    labels : (H, W) int64
        Instance labels, 0 = background; values need not be contiguous.
    name : str
        Where it came from, for messages (``"cells.tif[3]"``).
    classes : dict, optional
        Object kind of each label id (``{3: "nucleus"}``), for text prompts.
    anchor : bool
        Keep the starting model's answers on this sample (``anchor_weight``).
    """

    image: np.ndarray
    labels: np.ndarray
    name: str = ""
    classes: dict[int, str] | None = None
    anchor: bool = False

    def object_ids(self) -> np.ndarray:
        ids = np.unique(self.labels)
        return ids[ids != 0]


# --- reading ---------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _stem(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _strip(stem: str, suffixes: Sequence[str]) -> tuple[str, bool]:
    lower = stem.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def find_pairs(images: str | Path, labels: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Match image files with their label files.

    Parameters
    ----------
    images : folder
        Image files (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.bmp``).
    labels : folder, optional
        Label files. In a separate folder a label file matches the image file with the
        same name, or the same name once a known ending is removed (``X_image.tif`` <->
        ``X_labels.tif``, ``X.tif`` <-> ``X_masks.tif``). Without it (or the same folder),
        both live together and label files are those ending in ``_labels``, ``_label``,
        ``_masks``, ``_mask``, ``_seg``, ``_instances`` or ``_gt``.

    Returns
    -------
    list of (image path, label path), sorted by image name. Files without a partner are
    ignored; no pair at all is an error.
    """
    image_dir = Path(images)
    label_dir = Path(labels) if labels is not None else image_dir
    together = label_dir.resolve() == image_dir.resolve()
    image_files = _image_files(image_dir)
    label_files = _image_files(label_dir) if not together else []
    if together:
        for path in list(image_files):
            if _strip(_stem(path), LABEL_SUFFIXES)[1]:
                label_files.append(path)
                image_files.remove(path)

    by_key: dict[str, Path] = {}
    for path in label_files:
        by_key.setdefault(_stem(path).lower(), path)
        by_key.setdefault(_strip(_stem(path), LABEL_SUFFIXES)[0].lower(), path)
    pairs = []
    for path in image_files:
        stem = _stem(path)
        for key in (stem.lower(), _strip(stem, IMAGE_SUFFIXES)[0].lower()):
            if key in by_key:
                pairs.append((path, by_key[key]))
                break
    if not pairs:
        where = f"{image_dir}" if together else f"{image_dir} and {label_dir}"
        raise ValueError(
            f"no image / label pairs found in {where} ({len(image_files)} image and {len(label_files)} "
            "label files); name them X.tif + X.tif in two folders, or X_image.tif + X_labels.tif in one"
        )
    return pairs


def load_pairs(pairs: Sequence[tuple[str | Path, str | Path]]) -> list[Sample]:
    """Read matched files into samples (one per plane for stacks)."""
    samples: list[Sample] = []
    for image_path, label_path in pairs:
        samples += samples_from_arrays(read_image(image_path), read_image(label_path), name=Path(image_path).name)
    return samples


# --- arrays ----------------------------------------------------------------------------


def _as_instance_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype == bool:
        # A binary mask carries no instances: its connected components are taken as objects.
        return ndimage.label(labels)[0].astype(np.int64)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{name}: labels must be integer instance ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), found {labels.min()}")
    return labels.astype(np.int64, copy=False)


def samples_from_arrays(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    name: str = "array",
) -> list[Sample]:
    """Samples from in-memory arrays (napari Image and Labels layer data, or lists of them).

    Parameters
    ----------
    images : array or list of arrays
        Per pair: a plane ``(H, W)``, ``(H, W, 3|4)``, or a stack whose last two (or, for
        colour, the two before the channel axis) dimensions are the plane: ``(..., H, W)``
        or ``(..., H, W, 3|4)``. Any dtype; normalised per plane with ``to_rgb_uint8``.
    labels : array or list of arrays
        Matching instance labels ``(H, W)`` or ``(..., H, W)``; the leading dimensions
        must equal the image's. A bool mask is split into connected components.
    name : str
        Prefix for sample names.

    Returns
    -------
    One sample per plane, in order.
    """
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        images, labels = [images], [labels]
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label arrays")
    samples: list[Sample] = []
    for index, (image, label) in enumerate(zip(images, labels)):
        image, label = np.asarray(image), np.asarray(label)
        pair_name = name if len(images) == 1 else f"{name}[{index}]"
        plane_shape = label.shape[-2:]
        lead = label.shape[:-2]
        colour = image.ndim == label.ndim + 1 and image.shape[-1] in (3, 4)
        image_plane = image.shape[-3:-1] if colour else image.shape[-2:]
        image_lead = image.shape[:-3] if colour else image.shape[:-2]
        if image_plane != plane_shape or image_lead != lead:
            raise ValueError(
                f"{pair_name}: image shape {image.shape} does not match labels shape {label.shape}; "
                "expected the same planes (image may add a trailing RGB axis)"
            )
        for position in np.ndindex(*lead):
            plane_name = pair_name + (f"[{','.join(map(str, position))}]" if lead else "")
            plane_labels = _as_instance_labels(label[position], plane_name)
            plane = image[position]
            if plane.dtype.kind in "fc" and not np.isfinite(plane).any():  # it would train on a blank image
                raise ValueError(f"{plane_name}: the image holds no finite value (all NaN or infinite)")
            try:
                rgb = to_rgb_uint8(plane)
            except ValueError as error:  # e.g. a complex TIFF: say which file, as every other check here does
                raise ValueError(f"{plane_name}: {error}") from None
            samples.append(Sample(rgb, plane_labels, plane_name))
    return samples


# --- train / validation split ----------------------------------------------------------


def _keep_objects(sample: Sample, ids: np.ndarray, suffix: str) -> Sample:
    labels = np.where(np.isin(sample.labels, ids), sample.labels, 0)
    return Sample(sample.image, labels, sample.name + suffix, sample.classes)


def split_samples(
    samples: Sequence[Sample], val_fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample], str]:
    """Split by image into non-empty train and validation sets.

    With two or more samples, ``round(val_fraction * n)`` of them, at least one and at
    most ``n - 1``, chosen at random, validate. A single sample is split by object
    instead: the same image appears on both sides with disjoint sets of objects, since
    each object is its own target and unlabelled objects are never used as background.

    Returns
    -------
    train, validation, and a one-line description of the split.
    """
    if not samples:
        raise ValueError("no training samples")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(samples) >= 2:
        n_val = min(max(1, round(val_fraction * len(samples))), len(samples) - 1)
        order = rng.permutation(len(samples))
        val = [samples[i] for i in sorted(order[:n_val])]
        train = [samples[i] for i in sorted(order[n_val:])]
        return train, val, f"{len(train)} train / {len(val)} validation images"
    sample = samples[0]
    ids = rng.permutation(sample.object_ids())
    if ids.size < 2:
        raise ValueError(f"{sample.name}: a single image needs at least 2 objects to split into train and validation")
    n_val = min(max(1, round(val_fraction * ids.size)), ids.size - 1)
    train = [_keep_objects(sample, np.sort(ids[n_val:]), ":train")]
    val = [_keep_objects(sample, np.sort(ids[:n_val]), ":val")]
    return train, val, f"one image split by object: {ids.size - n_val} train / {n_val} validation objects"


def _tile_starts(length: int, size: int, overlap: float) -> list[int]:
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    return sorted({*range(0, length - size, step), length - size})


def tile_samples(samples: Sequence[Sample], size: int, overlap: float = 0.25) -> list[Sample]:
    """Cut planes larger than the model input into ``size``-pixel crops at native resolution.

    Inference embeds such planes the same way (``napari_sam.inference.tiling``: tiles of the input
    size, not the plane shrunk), so training on crops shows the model objects at the scale
    it will meet them. Crops overlap by ``overlap`` of their side, the last one is flush
    with the edge, crops without labels are dropped; an object cut by a crop border is
    the part of it inside the crop. Planes that fit pass unchanged.
    """
    tiled: list[Sample] = []
    for sample in samples:
        height, width = sample.labels.shape
        if max(height, width) <= size:
            tiled.append(sample)
            continue
        for r in _tile_starts(height, size, overlap):
            for c in _tile_starts(width, size, overlap):
                labels = sample.labels[r : r + size, c : c + size]
                if labels.any():
                    name = f"{sample.name}[{r}:{r + labels.shape[0]},{c}:{c + labels.shape[1]}]"
                    tiled.append(Sample(sample.image[r : r + size, c : c + size], labels, name, sample.classes))
    return tiled


# --- model-input frame -----------------------------------------------------------------


@dataclass
class Prepared:
    """A sample in the model-input frame (longest side ``image_size``, not yet padded).

    ``object_ids`` lists the objects large enough to train on.
    """

    image: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) int32 (int64 for huge ids)
    object_ids: np.ndarray  # (n,) int64
    classes: dict[int, str] | None = None  # label id -> object kind, for text prompts
    anchor: bool = False  # keep the starting model's answers here (``anchor_weight``)


def patch_kinds(
    labels: np.ndarray, classes: dict[int, str], kinds: Sequence[str], patch: int, min_pixels: int | None = None
) -> np.ndarray:
    """The object kind of each ``patch`` x ``patch`` cell of ``labels`` (an embedding cell).

    ``1 + kinds.index(kind)`` for the kind with the most pixels in the cell, or 0
    (background) when it has fewer than ``min_pixels`` (default: an eighth of the cell).
    Objects of a kind not in ``kinds`` count as background. Returns ``(h // patch, w // patch)``
    int64; a partial last row or column of cells is left out.
    """
    if min_pixels is None:
        min_pixels = max(1, patch * patch // 8)
    kind_of_label = np.zeros(int(labels.max()) + 1, np.int64)
    for label, kind in classes.items():
        if kind in kinds and 0 < int(label) < kind_of_label.size:
            kind_of_label[int(label)] = 1 + list(kinds).index(kind)
    per_pixel = kind_of_label[labels]
    rows, cols = labels.shape[0] // patch, labels.shape[1] // patch
    cells = per_pixel[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch).transpose(0, 2, 1, 3)
    counts = np.stack([(cells == k).sum(axis=(-2, -1)) for k in range(len(kinds) + 1)], axis=-1)
    counts[..., 0] = 0
    return np.where(counts.max(axis=-1) >= min_pixels, counts.argmax(axis=-1), 0)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape``, sampling at pixel centres."""
    height, width = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    return labels[rows[:, None], cols[None, :]]


def large_objects(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Ids of the objects in ``labels`` with at least ``min_pixels`` pixels."""
    ids, counts = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (counts >= min_pixels)
    return ids[keep].astype(np.int64)


def prepare(sample: Sample, image_size: int, min_object_pixels: int = 10) -> Prepared:
    """Resize a sample to the model-input frame, as inference resizes one tile."""
    image = resize_rgb(sample.image, image_size)
    labels = resize_labels(sample.labels, resized_shape(sample.labels.shape, image_size))
    if labels.max(initial=0) < 2**31:
        labels = labels.astype(np.int32)  # half the memory of every prepared sample
    return Prepared(image, labels, large_objects(labels, min_object_pixels), sample.classes, sample.anchor)


@dataclass(frozen=True)
class Augmentation:
    """A finite set of augmentations, so that frozen-encoder embeddings can be cached.

    A variant is an index in ``range(count)``: a dihedral transform (flips and / or
    90-degree rotations) combined with one of ``intensity_variants`` intensity jitters
    (variant 0 of those is the identity). Jitter acts on the normalised uint8 RGB:
    contrast gain ``exp(U(-s, s))``, gamma ``exp(U(-s, s))``, brightness shift
    ``U(-s, s) * 64``, with ``s = intensity``; its parameters are a fixed function of
    ``(seed, image index, variant)``.
    """

    flips: bool = True
    rotations: bool = True
    intensity: float = 0.2
    intensity_variants: int = 2

    @property
    def geometric_count(self) -> int:
        return (2 if self.flips else 1) * (4 if self.rotations else 1)

    @property
    def count(self) -> int:
        jitters = max(1, self.intensity_variants) if self.intensity > 0 else 1
        return self.geometric_count * jitters

    def apply(self, prepared: Prepared, variant: int, seed: int, image_index: int) -> Prepared:
        """The ``variant``-th augmentation of ``prepared``; variant 0 is the identity."""
        if not 0 <= variant < self.count:
            raise ValueError(f"variant {variant} out of range({self.count})")
        geometric, jitter = variant % self.geometric_count, variant // self.geometric_count
        flip = self.flips and geometric % 2 == 1
        turns = geometric // 2 if self.flips else geometric
        image, labels = prepared.image, prepared.labels
        if flip:
            image, labels = image[:, ::-1], labels[:, ::-1]
        if turns:
            image, labels = np.rot90(image, turns, axes=(0, 1)), np.rot90(labels, turns, axes=(0, 1))
        image = np.ascontiguousarray(image)
        if jitter:
            image = _jitter(image, self.intensity, np.random.default_rng([seed, image_index, jitter]))
        return replace(prepared, image=image, labels=np.ascontiguousarray(labels))


def _jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    gain, gamma = np.exp(rng.uniform(-strength, strength, size=2))
    shift = rng.uniform(-strength, strength) * 64
    values = (image.astype(np.float32) / 255) ** gamma * 255
    values = (values - 127.5) * gain + 127.5 + shift
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


# --- datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One optimisation step: some objects of one sample."""

    sample: int
    object_ids: tuple[int, ...]  # empty: up to objects_per_step drawn at random at the step


@dataclass
class SampleSet:
    """A finite list of samples in the model-input frame (prepared lazily, kept in memory).

    One epoch visits every object once: each sample's objects are shuffled and cut into
    groups of ``objects_per_step``, and the groups of all samples are shuffled.
    """

    samples: list[Sample]
    image_size: int
    min_object_pixels: int = 10
    cacheable: bool = field(default=True, init=False)
    _prepared: dict[int, Prepared] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def prepared(self, index: int) -> Prepared:
        if index not in self._prepared:
            self._prepared[index] = prepare(self.samples[index], self.image_size, self.min_object_pixels)
        return self._prepared[index]

    def object_count(self) -> int:
        return sum(self.prepared(i).object_ids.size for i in range(len(self)))

    def epoch_plan(self, epoch: int, objects_per_step: int, seed: int) -> list[Step]:
        rng = np.random.default_rng([seed, 7, epoch])
        steps = []
        for index in range(len(self)):
            ids = rng.permutation(self.prepared(index).object_ids)
            for start in range(0, ids.size, objects_per_step):
                steps.append(Step(index, tuple(int(i) for i in ids[start : start + objects_per_step])))
        return [steps[i] for i in rng.permutation(len(steps))]

    def steps_per_epoch(self, objects_per_step: int) -> int:
        return sum(math.ceil(self.prepared(i).object_ids.size / objects_per_step) for i in range(len(self)))

    def describe(self) -> str:
        return f"{len(self)} planes, {self.object_count()} objects"


@dataclass
class SyntheticSet:
    """An endless stream of procedural images (:mod:`napari_sam.synthetic`).

    Sample ``i`` is a fixed function of ``(seed, stream, i)``; training never sees an
    image twice (epochs are ``steps_per_epoch`` fresh images), and :meth:`validation`
    draws from a separate stream.
    """

    image_size: int
    seed: int = 0
    shape: tuple[int, int] = (256, 256)
    steps_per_epoch_: int = 50
    min_object_pixels: int = 10
    cacheable: bool = field(default=False, init=False)
    _last: tuple[int, Prepared] | None = field(default=None, init=False, repr=False)

    def sample(self, index: int, stream: int = 0) -> Sample:
        from ..synthetic import random_training_image

        generated = random_training_image(np.random.default_rng([self.seed, stream, index]), self.shape)
        labels = _as_instance_labels(np.asarray(generated.labels), f"synthetic {index}")
        classes = {int(k): str(v) for k, v in generated.classes.items()}
        return Sample(to_rgb_uint8(generated.image), labels, f"synthetic[{stream}:{index}]", classes)

    def prepared(self, index: int) -> Prepared:
        if self._last is None or self._last[0] != index:
            self._last = (index, prepare(self.sample(index), self.image_size, self.min_object_pixels))
        return self._last[1]

    def epoch_plan(self, epoch: int, objects_per_step: int, seed: int) -> list[Step]:
        # Objects are picked when the image is generated, at the step itself.
        start = epoch * self.steps_per_epoch_
        return [Step(index, ()) for index in range(start, start + self.steps_per_epoch_)]

    def steps_per_epoch(self, objects_per_step: int) -> int:
        return self.steps_per_epoch_

    def validation(self, count: int) -> list[Sample]:
        return [self.sample(i, stream=1) for i in range(count)]

    def describe(self) -> str:
        return f"synthetic images {self.shape[0]}x{self.shape[1]}, seed {self.seed}, {self.steps_per_epoch_} per epoch"
