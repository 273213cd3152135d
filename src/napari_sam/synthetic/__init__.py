"""Procedural microscopy-like images with exact instance labels.

The generator trains the bundled default model from scratch and makes the napari sample
data, so it aims for the variety of real data rather than for one pretty picture:
fluorescence nuclei of 6 to 60 px with textured chromatin, dim and out-of-focus nuclei,
crowded nuclei that touch; whole cells (cytoplasm, membrane and whole-cell stains);
brightfield objects; phase contrast (dark objects and rods with bright halos, or
inverted); DIC / oblique-light relief; H&E-like and IHC-like (hematoxylin and DAB) histology.

Every image is built in two passes. The first draws each object's shape as a field
``q`` (normalised distance from its centre, ``q < 1`` inside) in a small crop and places
the crops in the frame: where two objects cover a pixel the one with the smaller ``q``
owns it, which gives touching objects a shared, roughly straight boundary, and never two
labels on one pixel. The second pass paints each object's intensity only where its final
label is, so the image and the labels agree exactly; optics (blur, defocus glow) and the
camera (noise, offset, quantisation) are applied to the whole frame afterwards.

Objects are drawn in batches of equal-sized crops, so the per-object Python work is a
handful of small numpy calls.

Modules: :mod:`.shapes` (argument checks, object shapes, placement), :mod:`.painting`
(intensities, textures, modality styles, optics and camera), :mod:`.modalities` (phase
contrast and IHC, added later so that the others keep their images); this module holds the public
API and the driver that runs the two passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .modalities import finish_dic, finish_ihc, finish_phase_contrast
from .painting import _finish_brightfield, _finish_fluorescence, _finish_histology, _paint, _style
from .shapes import (
    DEFAULT_SIZE_RANGE,
    KINDS,
    MAX_OBJECTS,
    MIN_OBJECT_PIXELS,
    MODALITIES,
    _check_args,
    _make_batches,
    _make_rng,
    _place,
    _sample_sizes,
    _tidy,
)

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
    "widefield_slice",
]

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
    noise_scale: float = 1.0,
    out_of_focus: float = 0.0,
    psf_sigma: float | None = None,
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
        (low-contrast objects with halos on grey), "histology" (H&E-like RGB),
        "phase contrast" (dark objects with a bright halo outside them; a quarter of
        the images inverted), "dic" (DIC / oblique-light relief: one side of each
        object bright, the other dark) or "ihc" (RGB: hematoxylin-blue and DAB-brown
        objects).
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
    noise_scale : float
        Multiplies the noise's standard deviation (> 1: lower signal-to-noise ratio).
        1 keeps the images of earlier versions for the same seed.
    out_of_focus : float
        Fluorescence only: light from objects out of the focal plane, as in a slice of a
        widefield z-stack (the objects' own blurred glow and unlabelled blurred objects
        between them), about this many times the in-focus objects' level (0.2-1 is
        typical). 0 keeps the images of earlier versions for the same seed.
    psf_sigma : float, optional
        The optics' blur (Gaussian sigma in pixels). Default: drawn per image (0.5-2 px,
        less for histology); a strongly blurred widefield slice has a quarter of a
        nucleus's diameter or more.

    Returns
    -------
    SyntheticImage
        Image of ``shape`` (plus a trailing 3 for histology and ihc) and ``dtype``; int32
        labels of ``shape``; ``classes`` for every label.
    """
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
    if not 0 <= out_of_focus <= 5:
        raise ValueError(f"out_of_focus must be within 0..5, got {out_of_focus!r}")
    if out_of_focus and modality != "fluorescence":
        raise ValueError(f"out_of_focus is for fluorescence images, not {modality!r}")
    overrides = {"out_of_focus": float(out_of_focus)} if out_of_focus else {}
    if psf_sigma is not None:
        if not 0 < psf_sigma <= 50:
            raise ValueError(f"psf_sigma must be within (0, 50] px, got {psf_sigma!r}")
        overrides["psf_sigma"] = float(psf_sigma)
    return _generate(
        shape, modality, kinds, density, size_range, dtype, _make_rng(seed, rng), overrides, noise_scale=noise_scale
    )


def widefield_slice(
    shape: tuple[int, int],
    rng: np.random.Generator,
    seed,
    *,
    sizes: tuple[float, float] = (6.0, 40.0),
    density: tuple[float, float] = (0.25, 0.6),
    out_of_focus: tuple[float, float] = (0.2, 1.2),
    blur: tuple[float, float] = (0.05, 0.3),
) -> SyntheticImage:
    """A slice of a widefield z-stack of fluorescence nuclei, its look drawn from ``rng``.

    Drawn in this order: a typical nucleus size log-uniform in ``sizes`` (objects within
    0.75-1.3x of it), 16-bit for 60 % (else 8-bit), the covered fraction from ``density``,
    the out-of-focus light from ``out_of_focus`` (:func:`generate`'s option), the optics'
    blur as a fraction ``blur`` of the size (at least 0.5 px), and 1-3x the noise
    (log-uniform). ``seed`` seeds :func:`generate` itself.
    """
    centre = float(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))
    return generate(
        shape, modality="fluorescence", kinds=("nucleus",), dtype=np.uint16 if rng.random() < 0.6 else np.uint8,
        density=float(rng.uniform(*density)), size_range=(0.75 * centre, 1.3 * centre),
        out_of_focus=float(rng.uniform(*out_of_focus)), psf_sigma=max(0.5, float(rng.uniform(*blur)) * centre),
        noise_scale=float(np.exp(rng.uniform(0.0, np.log(3.0)))), seed=seed)


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


# --------------------------------------------------------------------------- driver


def _generate(shape, modality, kinds, density, size_range, dtype, rng, overrides, noise_scale=1.0) -> SyntheticImage:
    shape, kinds, dtype, sizes = _check_args(shape, modality, kinds, density, size_range, dtype)
    style = _style(modality, rng, overrides)
    if noise_scale != 1.0:
        for key, power in (("read_noise", 1), ("noise", 1), ("photons", -2)):
            if key in style:
                style[key] *= noise_scale**power
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
        "phase contrast": finish_phase_contrast,
        "dic": finish_dic,
        "ihc": finish_ihc,
    }[modality]
    image = finish(canvases, labels, spacing, dtype, style, rng)

    kept = np.flatnonzero(new_ids[1:])
    classes = {int(new_ids[i + 1]): batches[placed.batch[i]].kind for i in kept}
    return SyntheticImage(image=image, labels=labels, classes=classes, modality=modality)
