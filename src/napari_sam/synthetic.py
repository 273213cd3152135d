"""Procedural microscopy-like images with exact instance labels.

The generator trains the bundled default model from scratch and makes the napari sample
data, so it aims for the variety of real data rather than for one pretty picture:
fluorescence nuclei of 6 to 60 px with textured chromatin, dim and out-of-focus nuclei,
crowded nuclei that touch; brightfield / phase-contrast objects with halos; H&E-like
histology.

Every image is built in two passes. The first draws each object's shape as a field
``q`` (normalised distance from its centre, ``q < 1`` inside) in a small crop and places
the crops in the frame: where two objects cover a pixel the one with the smaller ``q``
owns it, which gives touching objects a shared, roughly straight boundary, and never two
labels on one pixel. The second pass paints each object's intensity only where its final
label is, so the image and the labels agree exactly; optics (blur, defocus glow) and the
camera (noise, offset, quantisation) are applied to the whole frame afterwards.

Objects are drawn in batches of equal-sized crops, so the per-object Python work is a
handful of small numpy calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

__all__ = [
    "KINDS",
    "MODALITIES",
    "MIN_OBJECT_PIXELS",
    "MAX_OBJECTS",
    "DEFAULT_SIZE_RANGE",
    "SyntheticImage",
    "generate",
    "random_training_image",
    "sample_nuclei",
]

KINDS = ("nucleus", "cell", "elongated cell", "small spot")
MODALITIES = ("fluorescence", "brightfield", "histology")

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


@dataclass
class SyntheticImage:
    """A synthetic image with its exact instance labels.

    Attributes
    ----------
    image : np.ndarray
        (H, W) grey image, or (H, W, 3) RGB for histology; uint8 or uint16.
    labels : np.ndarray
        (H, W) int32 instance ids, 0 is background, 1..N the objects.
    classes : dict[int, str]
        Label id -> object kind (one of :data:`KINDS`), for every id in ``labels``.
    modality : str
        One of :data:`MODALITIES`.
    """

    image: np.ndarray
    labels: np.ndarray
    classes: dict[int, str]
    modality: str


def generate(
    shape: tuple[int, int] = (512, 512),
    *,
    modality: str = "fluorescence",
    kinds: Sequence[str] = ("nucleus",),
    density: float | None = None,
    size_range: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
    dtype=np.uint8,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> SyntheticImage:
    """Generate one microscopy-like image with exact instance labels.

    Appearance details (background, illumination, blur, noise, texture, brightness
    spread, crowding) are drawn at random from realistic ranges, so two seeds give
    visibly different images.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image in pixels, each at least 16.
    modality : str
        "fluorescence" (bright objects on a dark, uneven background), "brightfield"
        (low-contrast objects with halos on grey) or "histology" (H&E-like RGB).
    kinds : sequence of str
        Object kinds to draw, any of :data:`KINDS`; several may be mixed.
    density : float, optional
        Target fraction of the frame covered by objects, in (0, 1]. Crowded frames may
        fall short of it. Default: drawn from a range typical of the modality and kinds.
    size_range : (float, float) or mapping, optional
        (min, max) object size in pixels (diameter; length for "elongated cell"), for
        every kind, or a mapping kind -> (min, max). Default: :data:`DEFAULT_SIZE_RANGE`.
    dtype : {np.uint8, np.uint16}
        Image dtype. uint16 images use a camera-like sub-range (offset of ~100 and
        signals of hundreds to a few thousand counts).
    seed : int, optional
        Seed for a new random generator; the result is deterministic for a seed.
    rng : np.random.Generator, optional
        Generator to draw from instead of ``seed``.

    Returns
    -------
    SyntheticImage
        Image of ``shape`` (plus a trailing 3 for histology) and ``dtype``; int32
        labels of ``shape``; ``classes`` for every label.
    """
    return _generate(shape, modality, kinds, density, size_range, dtype, _make_rng(seed, rng), {})


def random_training_image(
    rng: np.random.Generator | int | None, shape: tuple[int, int] = (512, 512)
) -> SyntheticImage:
    """Draw one training image with broadly varied content and appearance.

    About half are fluorescence nuclei (the main use), with a typical nucleus diameter
    drawn log-uniformly between 6 and 60 px; the rest are spread over fluorescence
    cells, rods and spots, brightfield and histology.

    Parameters
    ----------
    rng : np.random.Generator or int or None
        Random generator (or seed) to draw from.
    shape : tuple of int
        (H, W) of the image.

    Returns
    -------
    SyntheticImage
    """
    rng = np.random.default_rng(rng)
    dtype = np.uint16 if rng.random() < 0.3 else np.uint8
    density = None if rng.random() < 0.3 else float(rng.uniform(0.03, 0.5))
    nucleus_size = float(np.exp(rng.uniform(np.log(6.0), np.log(60.0))))
    nucleus_range = (nucleus_size * rng.uniform(0.55, 0.85), nucleus_size * rng.uniform(1.1, 1.5))
    sizes = dict(DEFAULT_SIZE_RANGE, nucleus=nucleus_range)
    for kind, low, high in (("cell", 0.6, 1.6), ("elongated cell", 0.5, 1.5)):
        scale = rng.uniform(low, high)
        sizes[kind] = tuple(s * scale for s in DEFAULT_SIZE_RANGE[kind])

    u = rng.random()
    if u < 0.50:
        modality, kinds = "fluorescence", ("nucleus",)
    elif u < 0.58:
        modality, kinds = "fluorescence", ("cell",)
    elif u < 0.64:
        modality, kinds = "fluorescence", ("elongated cell",)
    elif u < 0.70:
        modality = "fluorescence"
        kinds = tuple(k for k in KINDS if rng.random() < 0.5) or ("nucleus", "small spot")
    elif u < 0.85:
        modality = "brightfield"
        kinds = (("nucleus",), ("cell",), ("elongated cell",), ("cell", "small spot"))[rng.integers(4)]
    else:
        modality = "histology"
        kinds = (("nucleus",), ("nucleus",), ("cell",), ("nucleus", "elongated cell"))[rng.integers(4)]
    if modality == "histology":
        dtype = np.uint8

    result = _generate(shape, modality, kinds, density, sizes, dtype, rng, {})
    if result.image.dtype == np.uint16 and rng.random() < 0.15:
        # Some cameras and converters store signed data shifted by 2**15 (the Cell
        # Tracking Challenge HeLa images sit around 33000): the signal is unchanged.
        result.image = np.minimum(result.image.astype(np.uint32) + 32768, 65535).astype(np.uint16)
    return result


def sample_nuclei(shape: tuple[int, int] = (256, 256), seed: int = 0) -> SyntheticImage:
    """A small, clean fluorescence-nuclei image for demos and napari's sample data.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    seed : int
        Seed; the default gives the README's demo image.

    Returns
    -------
    SyntheticImage
        uint8 image with ~10-25 touching and separate nuclei at the default shape.
    """
    style = {
        "psf_sigma": 1.0,
        "photons": 400.0,
        "read_noise": 0.01,
        "max_overlap": 0.12,
        "defocus_fraction": 0.1,
        "dim_fraction": 0.08,
        "bright_fraction": 0.0,
        "target_level": 120.0,
        "texture_amp": 0.45,
        "texture_scale": 0.08,
        "nucleoli": 0.0,
    }
    return _generate(
        shape, "fluorescence", ("nucleus",), 0.16, (18.0, 32.0), np.uint8, np.random.default_rng(seed), style
    )


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


# --------------------------------------------------------------------------- painting


def _smooth_field(shape, rng, spacing):
    """(H, W) float32 smooth random field, zero mean and ~unit sd, features ~spacing px.

    A random grid of weights times Gaussian bumps along each axis: two matrix products
    instead of a large blur.
    """
    h, w = shape
    spacing = max(float(spacing), 8.0)

    def basis(n):
        knots = np.arange(-spacing, n + 2 * spacing, spacing)
        return np.exp(-(((np.arange(n)[:, None] - knots[None, :]) / spacing) ** 2)).astype(np.float32)

    by, bx = basis(h), basis(w)
    weights = rng.standard_normal((by.shape[1], bx.shape[1])).astype(np.float32) / np.float32(1.1)
    return _matmul_one_thread(by, _matmul_one_thread(weights, np.ascontiguousarray(bx.T)))


def _matmul_one_thread(a, b):
    """a @ b in row blocks small enough (rows * cols * inner < 2**18) for OpenBLAS to
    stay on one thread: its threaded product is up to 100x slower when the cores are
    busy, as they are with several data-loader workers."""
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    rows = max(1, 2**18 // (b.shape[0] * b.shape[1]))
    for r in range(0, a.shape[0], rows):
        np.matmul(a[r : r + rows], b, out=out[r : r + rows])
    return out


def _profile(q, edge, dome):
    """Intensity across an object: a dome that falls to 0 over the outer ``edge`` of q."""
    return np.clip((1 - q) / edge, 0, 1) * (1 - dome * q * q)


def _object_levels(n, rng, style):
    """(n,) brightness (or stain) per object around 1: log-normal, a few dim or bright."""
    level = np.exp(rng.normal(0, style["level_sd"], n))
    u = rng.random(n)
    dim = u < style["dim_fraction"]
    level[dim] *= rng.uniform(0.25, 0.5, n)[dim]
    bright = u > 1 - style["bright_fraction"]
    level[bright] *= rng.uniform(1.5, 2.5, n)[bright]
    return level.astype(np.float32), bright


def _paint(modality, batches, placed, new_ids, labels, style, rng):
    """Paint every kept object into padded float32 canvases, where its label is.

    Returns three canvases: two modality-specific ones (see ``_object_values``) and the
    per-pixel amplitude of the chromatin texture that the finishing step multiplies in.
    """
    canvases = [np.zeros(labels.shape, np.float32) for _ in range(3)]
    flat_labels = labels.ravel()
    ids = new_ids[1:]
    for bi, batch in enumerate(batches):
        sel = np.flatnonzero((placed.batch == bi) & (ids > 0))
        if len(sel) == 0:
            continue
        rows = placed.row[sel]
        q = batch.q[rows]
        inner = None if batch.inner is None else batch.inner[rows]
        values = _object_values(modality, _Batch(batch.kind, q, inner, batch.size[rows]), style, rng)
        s = q.shape[1]
        ramp = np.arange(s)
        corners = placed.top_left[sel]
        flat = (corners[:, :1, None] + ramp[None, :, None]) * labels.shape[1] + corners[:, 1:, None] + ramp
        mask = flat_labels[flat] == ids[sel][:, None, None]
        # labels never overlap, so no two objects write the same pixel
        idx = flat[mask]
        for canvas, value in zip(canvases, values):
            canvas.ravel()[idx] = np.broadcast_to(value, mask.shape)[mask]
    return canvases


def _object_values(modality, batch, style, rng):
    """Per-object values, each (N, S, S) or broadcastable, for the three canvases.

    fluorescence: in-focus signal, out-of-focus signal, texture amplitude;
    brightfield: absorption, phase (for the halo), texture amplitude;
    histology: hematoxylin and eosin optical density, texture amplitude.
    """
    n = len(batch.q)
    q = batch.q
    level, bright = _object_levels(n, rng, style)
    level = level[:, None, None]
    texture = (style["texture_amp"] * rng.uniform(0.6, 1.2, n)).astype(np.float32)
    texture[bright] *= 1.6  # condensed, mitotic-looking chromatin
    texture = texture[:, None, None]
    if batch.kind == "small spot":
        shape_profile = np.exp(-1.4 * q * q)
        texture = texture * 0.3
    else:
        shape_profile = _profile(q, style["edge"], style["dome"])
    if batch.kind == "nucleus" and style["nucleoli"] > 0:
        shape_profile = shape_profile * _nucleoli(batch, style["nucleoli"], rng)

    if modality == "fluorescence":
        if batch.kind == "cell":
            value = _cell_stain(batch, shape_profile, style) * level
        else:
            value = shape_profile * level
        defocus = np.where(rng.random(n) < style["defocus_fraction"], rng.uniform(0.4, 1.0, n), 0.0)
        defocus = _col(defocus)
        return [value * (1 - defocus), value * defocus, texture]

    if modality == "brightfield":
        absorb = shape_profile * level * style["contrast"]
        if batch.kind == "cell":
            nucleus = _profile(batch.inner, 0.3, 0.0)
            absorb = absorb * (style["cytoplasm"] + (1 - style["cytoplasm"]) * nucleus)
        phase = _col(rng.uniform(0.6, 1.4, n))
        return [absorb, phase, texture]

    # histology
    hema = shape_profile * level * style["hema"]
    if style["vesicular"]:
        # open chromatin: pale centre and a dark rim (nuclear membrane)
        hema = hema * (0.4 + 0.6 * np.clip((q - 0.55) / 0.3, 0, 1))
    eosin = np.float32(0.0)
    if batch.kind == "cell":
        nucleus = _profile(batch.inner, 0.3, 0.0)
        eosin = _profile(q, 0.15, 0.0) * style["cytoplasm_eosin"]
        hema = (0.1 + 0.9 * nucleus) * level * style["hema"]
    return [hema, eosin, texture]


def _nucleoli(batch, depth, rng):
    """(N, S, S) factor <= 1 that darkens 0-3 small round nucleoli inside each nucleus."""
    n, s = batch.q.shape[:2]
    axis = np.arange(s, dtype=np.float32) - s // 2
    factor = np.ones(batch.q.shape, np.float32)
    for _ in range(3):
        offset = rng.uniform(-0.3, 0.3, (2, n)) * batch.size
        radius = rng.uniform(0.035, 0.07, n) * batch.size
        present = rng.random(n) < 0.5
        dy = axis[None, :, None] - _col(offset[0])
        dx = axis[None, None, :] - _col(offset[1])
        strength = _col(depth * present * rng.uniform(0.5, 1.0, n))
        factor *= 1 - strength * np.exp(-(dy * dy + dx * dx) / _col(2 * radius**2))
    return factor


def _cell_stain(batch, shape_profile, style):
    """Fluorescence of a whole cell: a cytoplasm, membrane or whole-cell stain."""
    nucleus = _profile(batch.inner, 0.25, 0.2)
    if style["cell_stain"] == "cytoplasm":
        return style["cytoplasm"] * shape_profile + (1 - style["cytoplasm"]) * nucleus
    if style["cell_stain"] == "membrane":
        rim = np.clip(1 - np.abs(batch.q - 0.88) / 0.12, 0, 1)
        return 0.25 * shape_profile + rim
    return shape_profile * (1 - 0.35 * nucleus)  # cell tracker: the nucleus a bit darker


def _grain(amplitude, spacing, style, rng):
    """exp(a T - a^2 / 2), mean 1: chromatin texture of amplitude ``a`` per pixel.

    T is one smooth Gaussian field for the whole frame with grains ~``texture_scale``
    of the object size; its exponential gives bright chromocentres and dark nucleoli.
    """
    t = _texture_field(amplitude.shape, style["texture_scale"] * spacing, rng)
    grain = amplitude * t
    grain -= 0.5 * amplitude * amplitude
    return np.exp(grain, out=grain)


_TEXTURE_SIGMAS = (0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
_TEXTURE_TILE = 1024
_texture_tiles: dict[float, np.ndarray] = {}


def _texture_field(shape, sigma, rng):
    """(H, W) float32 zero-mean unit-sd noise blurred by about ``sigma`` px.

    Cut at a random place from a fixed, read-only tile per sigma, made on first use:
    fresh noise would cost a large blur per image, and grain needs no novelty.
    """
    sigma = min(_TEXTURE_SIGMAS, key=lambda s: abs(s - sigma))
    h, w = shape
    if max(h, w) > _TEXTURE_TILE:
        return _blurred_noise(shape, sigma, rng)
    tile = _texture_tiles.get(sigma)
    if tile is None:
        tile = _blurred_noise((_TEXTURE_TILE,) * 2, sigma, np.random.default_rng(0))
        tile.flags.writeable = False
        tile = _texture_tiles.setdefault(sigma, tile)
    r0, c0 = rng.integers(0, _TEXTURE_TILE - h + 1), rng.integers(0, _TEXTURE_TILE - w + 1)
    return tile[r0 : r0 + h, c0 : c0 + w]


def _blurred_noise(shape, sigma, rng):
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    return noise / noise.std()


# --------------------------------------------------------------------------- styles


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _style(modality, rng, overrides):
    """Appearance parameters of one image, drawn from broad but realistic ranges."""
    style = {
        "max_overlap": float(rng.choice([0.0, rng.uniform(0.0, 0.35)])),
        "clustering": float(rng.uniform(0.0, 0.8)),
        "edge": float(rng.uniform(0.03, 0.18)),
        "dome": float(rng.uniform(-0.1, 0.5)),
        "level_sd": float(rng.uniform(0.08, 0.3)),
        "dim_fraction": float(rng.uniform(0.0, 0.15)),
        "bright_fraction": float(rng.choice([0.0, rng.uniform(0.0, 0.06)])),
        "texture_amp": float(rng.uniform(0.2, 0.75)),
        "texture_scale": float(rng.uniform(0.05, 0.12)),
        "irregularity": float(rng.uniform(0.03, 0.16)),
        "nucleoli": float(rng.uniform(0.2, 0.7) if rng.random() < 0.3 else 0.0),
        "psf_sigma": float(rng.uniform(0.5, 2.0)),
        "defocus_fraction": float(rng.uniform(0.0, 0.35)),
        "cell_stain": str(rng.choice(["cytoplasm", "cytoplasm", "membrane", "whole"])),
        "cytoplasm": float(rng.uniform(0.15, 0.5)),
    }
    if modality == "fluorescence":
        style.update(
            background=float(rng.choice([0.0, rng.uniform(0.0, 0.12)])),
            haze=float(rng.uniform(0.0, 0.1)),
            vignetting=float(rng.uniform(0.0, 0.4)),
            photons=_log_uniform(rng, 60.0, 5000.0),
            read_noise=_log_uniform(rng, 0.002, 0.03),
            target_level=float(rng.uniform(50.0, 170.0)),
        )
    elif modality == "brightfield":
        style.update(
            contrast=float(rng.choice([-1.0, 1.0], p=[0.2, 0.8]) * rng.uniform(0.04, 0.3)),
            halo=float(rng.uniform(-0.15, 0.3)),
            halo_sigma=float(rng.uniform(1.5, 4.0)),
            vignetting=float(rng.uniform(0.0, 0.1)),
            noise=_log_uniform(rng, 0.004, 0.03),
            background_level=float(rng.uniform(0.35, 0.8)),
        )
    else:
        style.update(
            hema=float(rng.uniform(0.4, 0.9)),
            eosin=float(rng.uniform(0.15, 0.5)),
            cytoplasm_eosin=float(rng.uniform(0.1, 0.35)),
            vesicular=bool(rng.random() < 0.35),
            tissue_fraction=float(rng.uniform(0.5, 1.0)),
            noise=_log_uniform(rng, 0.005, 0.03),
            psf_sigma=float(rng.uniform(0.4, 1.2)),
            texture_amp=float(rng.uniform(0.3, 0.9)),
        )
    style.update(overrides)
    return style


# --------------------------------------------------------------------------- optics and camera


def _finish_fluorescence(canvases, labels, spacing, dtype, style, rng):
    # in-place arithmetic throughout: a 512 x 512 temporary costs as much as the sum
    sharp, glow, texture = canvases
    shape = labels.shape
    h, w = shape
    if texture.any():
        grain = _grain(texture, spacing, style, rng)
        sharp *= grain
        glow *= grain
    signal = sharp
    if glow.any():
        signal += ndi.gaussian_filter(glow, min(1.0 + 0.12 * spacing, 5.0), truncate=2.5)
    haze = _smooth_field(shape, rng, 2.5 * spacing)
    np.maximum(haze, 0, out=haze)
    haze *= style["haze"]
    signal += haze
    signal += style["background"]
    illumination = np.tanh(_smooth_field(shape, rng, max(h, w) / 2))
    illumination *= style["vignetting"]
    illumination += 1
    signal *= illumination
    signal = ndi.gaussian_filter(signal, style["psf_sigma"], truncate=3.0)
    # shot noise (Poisson, as a Gaussian) and camera read noise in one draw
    sd = np.maximum(signal, 0)
    sd *= 1 / style["photons"]
    sd += style["read_noise"] ** 2
    np.sqrt(sd, out=sd)
    sd *= rng.standard_normal(shape, dtype=np.float32)
    signal += sd
    if dtype == np.uint8:
        # a negative offset clips the background to 0, as in many 8-bit exports
        offset, gain, top = rng.uniform(-8, 6), style["target_level"], 255
    else:
        offset, gain, top = rng.uniform(80, 500), _log_uniform(rng, 300, 4000), 65535
    signal *= gain
    signal += offset
    return _quantise(signal, dtype, top)


def _finish_brightfield(canvases, labels, spacing, dtype, style, rng):
    absorb, phase, texture = canvases
    shape = labels.shape
    h, w = shape
    if texture.any():
        absorb *= _grain(texture, spacing, style, rng)
    illumination = 1 + style["vignetting"] * np.tanh(_smooth_field(shape, rng, max(h, w)))
    # phase contrast: the halo is the phase image blurred wide minus blurred narrow
    halo = style["halo"] * ndi.gaussian_filter(phase, style["halo_sigma"], truncate=2.5)
    dirt = rng.uniform(0.0, 0.015) * _smooth_field(shape, rng, 8.0)
    sharp = ndi.gaussian_filter(illumination * absorb + style["halo"] * phase, style["psf_sigma"], truncate=3.0)
    signal = illumination * (1 + dirt) - sharp + halo
    signal += style["noise"] * rng.standard_normal(shape, dtype=np.float32)
    if dtype == np.uint8:
        gain, top = 255 * style["background_level"], 255
    else:
        gain, top = _log_uniform(rng, 800, 12000), 65535
    return _quantise(gain * signal, dtype, top)


def _finish_histology(canvases, labels, spacing, dtype, style, rng):
    hema, eosin, texture = canvases
    shape = labels.shape
    if texture.any():
        hema *= _grain(texture, spacing, style, rng)
    # stroma: wavy eosin fibres, with pale gaps where there is no tissue
    h, w = shape
    angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, 12.0)
    along = (np.arange(w, dtype=np.float32) * np.float32(np.cos(angle) * 2 * np.pi / period))[None, :] + (
        np.arange(h, dtype=np.float32) * np.float32(np.sin(angle) * 2 * np.pi / period)
    )[:, None]
    # wavy stripes broken up by blotchy noise, so that they read as fibres, not as a
    # fingerprint
    fibres = np.sin(along + rng.uniform(2, 8) * _smooth_field(shape, rng, rng.uniform(20, 60)))
    fibres *= np.clip(_texture_field(shape, 2.8, rng), 0, None)
    grain = _texture_field(shape, 1.0, rng)
    tissue = 1 / (1 + np.exp(-4 * (_smooth_field(shape, rng, 4 * spacing) + 2 * style["tissue_fraction"] - 1)))
    stroma = style["eosin"] * tissue * np.clip(0.8 + 0.25 * fibres + 0.12 * grain, 0.1, None)
    # nuclei and cells take up some eosin too, which makes them purple rather than blue
    eosin += np.where(labels == 0, stroma, 0.3 * style["eosin"])
    hema += 0.03 * tissue
    # Beer-Lambert colour mixing with slightly varied H and E stain vectors
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]) + rng.normal(0, 0.04, (2, 3))
    stains = (np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True) * np.log(10)).astype(np.float32)
    brightness = rng.uniform(0.88, 0.98)
    blur = style["psf_sigma"]
    hema = ndi.gaussian_filter(hema, blur, truncate=3.0)
    eosin = ndi.gaussian_filter(eosin, blur, truncate=3.0)
    top = 255 if dtype == np.uint8 else 4095
    rgb = np.empty(shape + (3,), dtype)
    for c in range(3):
        channel = np.exp(-(hema * stains[0, c] + eosin * stains[1, c])) * brightness
        # uniform noise of the same sd: a fifth of the cost of normal draws, and slide
        # scanner noise is far from Gaussian after JPEG compression anyway
        channel += (style["noise"] * np.sqrt(12)) * (rng.random(shape, dtype=np.float32) - np.float32(0.5))
        rgb[..., c] = _quantise(top * channel, dtype, top)
    return rgb


def _quantise(values, dtype, top):
    np.rint(values, out=values)
    return np.clip(values, 0, top, out=values).astype(dtype)


# --------------------------------------------------------------------------- driver


def _generate(shape, modality, kinds, density, size_range, dtype, rng, overrides) -> SyntheticImage:
    shape, kinds, dtype, sizes = _check_args(shape, modality, kinds, density, size_range, dtype)
    style = _style(modality, rng, overrides)
    if density is None:
        density = float(rng.uniform(0.3, 0.65) if "cell" in kinds else rng.uniform(0.08, 0.35))
    h, w = shape

    # each kind gets an equal share of the covered area (spots less), a bit over-drawn
    # because crowded placements get rejected
    share = np.array([0.15 if k == "small spot" else 1.0 for k in kinds])
    share /= share.sum()
    batches = []
    for kind, frac in zip(kinds, share):
        lo, hi = sizes[kind]
        mean_area = np.pi / 4 * lo * hi * (0.3 if kind == "elongated cell" else 1.0)
        n = min(int(np.ceil(1.2 * density * frac * h * w / mean_area)) + 1, MAX_OBJECTS // len(kinds))
        batches += _make_batches(kind, _sample_sizes(lo, hi, n, rng), style["irregularity"], rng)

    labels, pad, placed = _place(batches, shape, density, style["max_overlap"], style["clustering"], rng)
    new_ids = _tidy(labels, placed)
    labels = new_ids[labels]
    canvases = _paint(modality, batches, placed, new_ids, labels, style, rng)

    frame = (slice(pad, pad + h), slice(pad, pad + w))
    canvases = [c[frame] for c in canvases]
    labels = np.ascontiguousarray(labels[frame])
    spacing = float(np.median(np.concatenate([b.size for b in batches])))
    finish = {
        "fluorescence": _finish_fluorescence,
        "brightfield": _finish_brightfield,
        "histology": _finish_histology,
    }[modality]
    image = finish(canvases, labels, spacing, dtype, style, rng)

    kept = np.flatnonzero(new_ids[1:])
    classes = {int(new_ids[i + 1]): batches[placed.batch[i]].kind for i in kept}
    return SyntheticImage(image=image, labels=labels, classes=classes, modality=modality)
