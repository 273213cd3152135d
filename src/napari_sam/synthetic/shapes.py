"""Synthetic images, first pass: argument checks, object shapes and their placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from skimage import measure

KINDS = ("nucleus", "cell", "elongated cell", "small spot")
MODALITIES = ("fluorescence", "brightfield", "histology", "phase contrast", "dic", "ihc")

#: Every label in a :class:`SyntheticImage` has at least this many pixels.
MIN_OBJECT_PIXELS = 8
#: Upper bound on the number of objects drawn in one image (keeps generation fast).
MAX_OBJECTS = 500

#: Default object size range in pixels per kind: the diameter, or the length of an
#: elongated cell.
DEFAULT_SIZE_RANGE = {
    "nucleus": (12.0, 26.0),
    "cell": (30.0, 70.0),
    "elongated cell": (15.0, 45.0),
    "small spot": (3.0, 7.0),
}

# Big objects are placed first so that small ones fill the gaps instead of punching
# holes in cells.
_PLACEMENT_ORDER = {"cell": 0, "nucleus": 1, "elongated cell": 2, "small spot": 3}
_BATCH = 24
# An object that keeps less than this fraction of its in-frame area after its
# neighbours took their share is dropped rather than left as a sliver.
_MIN_KEPT_FRACTION = 0.4

# --------------------------------------------------------------------------- checks


def _make_rng(seed, rng) -> np.random.Generator:
    if seed is not None and rng is not None:
        raise ValueError("give either seed or rng, not both")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    return np.random.default_rng(seed)


def _check_args(shape, modality, kinds, density, size_range, dtype):
    if len(shape) != 2 or any(int(s) != s or s < 16 for s in shape):
        raise ValueError(f"shape must be two integers >= 16 (H, W), got {shape!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {kinds!r}")
    if density is not None and not 0 < density <= 1:
        raise ValueError(f"density is the covered fraction of the frame, in (0, 1], got {density!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
    sizes = dict(DEFAULT_SIZE_RANGE)
    if isinstance(size_range, Mapping):
        sizes.update(size_range)
    elif size_range is not None:
        sizes.update({k: size_range for k in KINDS})
    for kind in kinds:
        lo, hi = sizes[kind]
        if not 2 <= lo <= hi:
            raise ValueError(f"size_range for {kind!r} must be (min, max) with 2 <= min <= max, got {(lo, hi)}")
    return (int(shape[0]), int(shape[1])), kinds, dtype, {k: tuple(map(float, sizes[k])) for k in kinds}


# --------------------------------------------------------------------------- shapes


@dataclass
class _Batch:
    """Objects of one kind drawn in equal (S, S) crops, centre at pixel S // 2."""

    kind: str
    q: np.ndarray  # (N, S, S) float32 normalised distance, < 1 inside
    inner: np.ndarray | None  # (N, S, S) float32, the nucleus of a "cell", < 1 inside
    size: np.ndarray  # (N,) float, nominal size in px


def _sample_sizes(lo, hi, n, rng):
    """Log-normal sizes centred in (lo, hi), which spans about +-2 sd; clipped to it."""
    mid, spread = np.log(lo * hi) / 2, max(np.log(hi / lo) / 4, 1e-3)
    return np.clip(np.exp(rng.normal(mid, spread, n)), lo, hi)


def _shape_params(kind, size, irregularity, rng):
    """Per-object shape parameters (arrays of length N) and each object's extent in px.

    ``irregularity`` scales the outline harmonics of nuclei and cells (0: ellipses).
    """
    n = len(size)
    p = {"size": size, "angle": rng.uniform(0, np.pi, n), "jitter": rng.uniform(-0.5, 0.5, (n, 2))}
    if kind in ("nucleus", "cell"):
        # an ellipse whose radius is modulated by a few random harmonics, maybe bent
        # into a kidney; cells are larger and more irregular
        aspect_scale, n_harmonics = (0.12, 5) if kind == "nucleus" else (0.25, 6)
        irregularity = irregularity if kind == "nucleus" else 2 * irregularity
        aspect = np.minimum(1.0 + rng.gamma(2.0, aspect_scale, n), 2.5)
        k = np.arange(2, n_harmonics + 1)
        amp = rng.normal(0.0, 1.0, (n, len(k))) * irregularity * rng.gamma(2.0, 0.5, (n, 1)) / k**1.2
        amp /= np.maximum(1.0, np.abs(amp).sum(1, keepdims=True) / 0.45)  # radius within [0.55, 1.45]
        p["amplitude"], p["phase"] = np.abs(amp), rng.uniform(0, 2 * np.pi, amp.shape)
        p["a"], p["b"] = size / 2 * np.sqrt(aspect), size / 2 / np.sqrt(aspect)
        p["bend"] = np.clip(rng.normal(0.0, 0.08 if kind == "nucleus" else 0.1, n), -0.35, 0.35)
        # extent: the farthest of 64 outline points from the centre
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = _radius(theta[None, :], p["amplitude"][:, None, :], p["phase"][:, None, :])
        u = p["a"][:, None] * r * np.cos(theta)
        v = p["b"][:, None] * r * np.sin(theta) + p["bend"][:, None] * u * u / p["a"][:, None]
        p["extent"] = np.sqrt(u * u + v * v).max(1)
        if kind == "cell":
            p["inner_radius"] = rng.uniform(0.28, 0.45, n) * p["b"]
            p["inner_aspect"] = np.sqrt(rng.uniform(1.0, 1.6, n))
            room = np.stack([p["a"], p["b"]], 1) - p["inner_radius"][:, None]
            p["inner_offset"] = rng.uniform(-0.3, 0.3, (n, 2)) * room
    elif kind == "elongated cell":
        # a capsule around a parabolically bent centre line
        p["half_length"] = size / 2
        p["half_width"] = np.maximum(size / rng.uniform(2.5, 8.0, n) / 2, 1.5)
        p["bend"] = rng.uniform(-0.5, 0.5, n)
        p["extent"] = p["half_length"] * np.sqrt(1 + p["bend"] ** 2)
    else:  # small spot
        p["radius"] = size / 2
        p["aspect"] = np.sqrt(rng.uniform(1.0, 1.4, n))
        p["extent"] = p["radius"] * p["aspect"]
    return p


def _radius(theta, amplitude, phase):
    """Outline radius 1 + sum_k amplitude_k cos(k theta + phase_k), k = 2, 3, ...

    ``amplitude`` and ``phase`` have the harmonics on their last axis; ``theta``
    broadcasts against them without it.
    """
    r = np.ones(np.broadcast_shapes(theta.shape, amplitude.shape[:-1]), np.float32)
    for j in range(amplitude.shape[-1]):
        r += amplitude[..., j] * np.cos((j + 2) * theta + phase[..., j])
    return r


def _col(values):
    """(N, ...) -> (N, 1, 1, ...) float32, to broadcast against (N, S, S) crops."""
    values = np.asarray(values, dtype=np.float32)
    return values.reshape(values.shape[:1] + (1, 1) + values.shape[1:])


def _shape_batch(kind, p) -> _Batch:
    """Draw the q fields of the objects described by ``p`` in one (N, S, S) batch."""
    s = 2 * int(np.ceil(p["extent"].max() + 0.5)) + 1  # + 0.5 for the sub-pixel jitter
    axis = np.arange(s, dtype=np.float32) - s // 2
    y = axis[None, :, None] - _col(p["jitter"][:, 0])
    x = axis[None, None, :] - _col(p["jitter"][:, 1])
    cos, sin = _col(np.cos(p["angle"])), _col(np.sin(p["angle"]))
    u, v = cos * x + sin * y, cos * y - sin * x  # along / across the object's long axis
    inner = None
    if kind in ("nucleus", "cell"):
        a, b = _col(p["a"]), _col(p["b"])
        v = v - _col(p["bend"]) * u * u / a
        un, vn = u / a, v / b
        q = np.sqrt(un * un + vn * vn) / _radius(np.arctan2(vn, un), _col(p["amplitude"]), _col(p["phase"]))
        if kind == "cell":
            r, asp = _col(p["inner_radius"]), _col(p["inner_aspect"])
            du = u - _col(p["inner_offset"][:, 0])
            dv = v - _col(p["inner_offset"][:, 1])
            inner = np.sqrt((du / (r * asp)) ** 2 + (dv * asp / r) ** 2)
    elif kind == "elongated cell":
        half_length, half_width = _col(p["half_length"]), _col(p["half_width"])
        v = v - _col(p["bend"]) * u * u / half_length
        along = np.maximum(np.abs(u) - (half_length - half_width), 0)
        q = np.sqrt(along * along + v * v) / half_width
    else:
        r, asp = _col(p["radius"]), _col(p["aspect"])
        q = np.sqrt((u / (r * asp)) ** 2 + (v * asp / r) ** 2)
    return _Batch(kind, q, inner, p["size"])


def _make_batches(kind, size, irregularity, rng):
    """Shape fields for ``size`` objects of one kind, batched by similar extent."""
    p = _shape_params(kind, size, irregularity, rng)
    by_extent = np.argsort(p["extent"])
    n_batches = -(-len(size) // _BATCH)
    return [_shape_batch(kind, {k: v[i] for k, v in p.items()}) for i in np.array_split(by_extent, n_batches)]


# --------------------------------------------------------------------------- placement


@dataclass
class _Placed:
    """Objects that made it into the frame, in placement order (label id - 1)."""

    batch: np.ndarray  # (M,) index into the batch list
    row: np.ndarray  # (M,) index inside the batch
    top_left: np.ndarray  # (M, 2) crop corner in padded-frame pixels
    area: np.ndarray  # (M,) in-frame area when placed, before neighbours clipped it


def _centres(n, shape, rng, spacing, clustering):
    """(n, 2) int centres (row, col): uniform, or clumped around a few cluster centres."""
    h, w = shape
    uniform = rng.uniform(0, 1, (n, 2)) * (h, w)
    n_clusters = int(rng.integers(1, 8))
    cluster = rng.uniform(0, 1, (n_clusters, 2)) * (h, w)
    scale = spacing * rng.uniform(1.5, 6.0, n_clusters)
    which = rng.integers(n_clusters, size=n)
    clumped = cluster[which] + rng.normal(0, 1, (n, 2)) * scale[which, None]
    centres = np.where(rng.random((n, 1)) < clustering, clumped, uniform)
    return np.rint(centres).astype(np.intp)


def _place(batches, shape, density, max_overlap, clustering, rng):
    """Place the batches' crops in a padded frame; returns labels with ids 1..M.

    An object is rejected (and tried elsewhere, up to three times) when more than
    ``max_overlap`` of it lies on earlier objects; otherwise each contested pixel goes
    to the object with the smaller q.
    """
    h, w = shape
    s_max = max(b.q.shape[1] for b in batches)
    pad = s_max // 2 + 1
    labels = np.zeros((h + 2 * pad, w + 2 * pad), np.int32)
    # the owner's q per pixel: inf is free, -1 is outside the frame (never claimed)
    qmap = np.full(labels.shape, -1.0, np.float32)
    qmap[pad : pad + h, pad : pad + w] = np.inf

    order = sorted(
        (_PLACEMENT_ORDER[b.kind], rng.random(), i, j) for i, b in enumerate(batches) for j in range(len(b.q))
    )
    tries = 3
    spacing = float(np.median(np.concatenate([b.size for b in batches])))
    inside_masks = [b.q < 1 for b in batches]
    inside_areas = [np.count_nonzero(m, axis=(1, 2)).tolist() for m in inside_masks]
    # crop corners in the padded frame for every try, worked out up front because
    # numpy scalars in the loop cost more than the small array operations
    half = np.repeat([batches[bi].q.shape[1] // 2 for _, _, bi, _ in order], tries)
    corners = _centres(len(order) * tries, shape, rng, spacing, clustering) + (pad - half)[:, None]
    corners = np.clip(corners, 0, np.array(labels.shape) - 2 * half[:, None] - 1)
    whole = np.all((corners >= pad) & (corners + 2 * half[:, None] + 1 <= np.array(shape) + pad), axis=1)
    corners, whole = corners.tolist(), whole.tolist()
    target = density * h * w

    placed_batch, placed_row, placed_corners, areas = [], [], [], []
    covered = 0
    for n, (_, _, bi, row) in enumerate(order):
        if covered >= target:
            break
        q = batches[bi].q[row]
        inside = inside_masks[bi][row]
        s = q.shape[0]
        for t in range(n * tries, (n + 1) * tries):
            r0, c0 = corners[t]
            lab = labels[r0 : r0 + s, c0 : c0 + s]
            qm = qmap[r0 : r0 + s, c0 : c0 + s]
            if whole[t]:
                in_frame, n_in = inside, inside_areas[bi][row]
            else:
                in_frame = inside & (qm >= 0)
                n_in = np.count_nonzero(in_frame)
                if n_in < MIN_OBJECT_PIXELS:
                    continue
            n_overlap = np.count_nonzero(lab[in_frame])
            if n_overlap > max_overlap * n_in:
                continue
            claim = inside & (q < qm) if n_overlap else in_frame
            np.copyto(lab, len(areas) + 1, where=claim)
            np.copyto(qm, q, where=claim)
            placed_batch.append(bi)
            placed_row.append(row)
            placed_corners.append((r0, c0))
            areas.append(n_in)
            covered += n_in
            break

    placed = _Placed(
        np.array(placed_batch, dtype=np.intp),
        np.array(placed_row, dtype=np.intp),
        np.array(placed_corners, dtype=np.intp).reshape(-1, 2),
        np.array(areas, dtype=np.int64),
    )
    return labels, pad, placed


def _tidy(labels, placed):
    """Keep the largest piece of each object and drop slivers, in place.

    Contested pixels or the frame edge can cut an object in two (crossing rods, a
    bent nucleus at the border). Returns (M + 1,) int32 new ids indexed by old id:
    0 for dropped objects, the kept ones renumbered 1..K in placement order.
    """
    n = len(placed.area)
    pieces = measure.label(labels, background=0, connectivity=1)
    if pieces.max() > n:
        owner = np.zeros(pieces.max() + 1, np.int64)
        owner[pieces.ravel()] = labels.ravel()
        size = np.bincount(pieces.ravel())
        order = np.lexsort((size, owner))  # by owner, then by size: the last is the largest
        largest = order[np.r_[owner[order][1:] != owner[order][:-1], True]]
        keep = np.zeros(len(owner), bool)
        keep[largest] = True
        labels[~keep[pieces]] = 0
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = area >= np.maximum(MIN_OBJECT_PIXELS, _MIN_KEPT_FRACTION * placed.area)
    new_ids = np.zeros(n + 1, np.int32)
    new_ids[1:][keep] = np.arange(1, np.count_nonzero(keep) + 1)
    return new_ids
