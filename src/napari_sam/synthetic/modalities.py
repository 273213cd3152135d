"""Synthetic images: the phase-contrast and IHC modalities (object values, styles and
the finishing optics), kept apart from :mod:`.painting`'s original three so that those
give the same images for the same seeds.

Phase contrast: each object is a phase (optical path) field. The microscope shows it
dark, and the phase ring's imperfect filtering adds a bright halo just *outside* the
object (the object's phase, blurred, minus itself) and lightens the middle of large
objects ("shade-off"). A quarter of the images are inverted (bright objects with dark
halos: negative phase contrast, or a defocused positive one).

IHC: hematoxylin (blue) counterstains every nucleus; a share of the objects is DAB
positive (brown), in the nucleus or, for whole cells, in the cytoplasm. Colours are
mixed by Beer-Lambert with Ruifrok and Johnston's stain vectors, slightly jittered.

DIC / oblique illumination: the same phase objects seen as relief, the phase's gradient
along one shear direction (one side of each object bright, the other dark) on grey.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .painting import _grain, _quantise, _smooth_field, _texture_field, _transmitted_light
from .shapes import _col

#: Modalities this module paints; :mod:`.painting` paints the others.
EXTRA_MODALITIES = ("phase contrast", "dic", "ihc")

# Optical densities per RGB channel (Ruifrok & Johnston 2001), rows: hematoxylin, DAB.
_HEMATOXYLIN = (0.65, 0.70, 0.29)
_DAB = (0.27, 0.57, 0.78)


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def extra_style(modality, rng):
    """Appearance parameters of a phase-contrast or IHC image (added to the shared ones)."""
    if modality == "dic":
        return {
            "relief": float(rng.uniform(0.4, 2.5)),  # gradient gain, px
            "shear": float(rng.uniform(0, 2 * np.pi)),
            "relief_sigma": float(rng.uniform(0.8, 2.5)),
            "depth": float(rng.uniform(0.0, 0.12)),
            "vignetting": float(rng.uniform(0.0, 0.15)),
            "noise": _log_uniform(rng, 0.004, 0.04),
            "background_level": float(rng.uniform(0.3, 0.7)),
        }
    if modality == "phase contrast":
        return {
            "depth": float(rng.uniform(0.15, 0.55)),  # how dark objects are, of the background
            "halo": float(rng.uniform(0.5, 1.3)),  # the PSF spills dark past the edge: the halo must outweigh it
            "halo_sigma": float(rng.uniform(1.5, 5.0)),
            "shade_off": float(rng.uniform(0.0, 0.7)),
            "inverted": bool(rng.random() < 0.25),
            "vignetting": float(rng.uniform(0.0, 0.15)),
            "noise": _log_uniform(rng, 0.004, 0.04),
            "background_level": float(rng.uniform(0.3, 0.7)),
            "psf_sigma": float(rng.uniform(0.5, 1.5)),
        }
    return {
        "hema": float(rng.uniform(0.2, 0.6)),  # IHC counterstains are paler than H&E
        "dab": float(rng.uniform(0.4, 1.2)),
        "positive_fraction": float(rng.uniform(0.1, 0.8)),
        "dab_membrane": bool(rng.random() < 0.5),
        "background_hema": float(rng.uniform(0.02, 0.12)),
        "background_dab": float(rng.uniform(0.0, 0.08)),
        "tissue_fraction": float(rng.uniform(0.5, 1.0)),
        "noise": _log_uniform(rng, 0.005, 0.03),
        "psf_sigma": float(rng.uniform(0.4, 1.2)),
        "texture_amp": float(rng.uniform(0.3, 0.9)),
    }


def extra_values(modality, batch, shape_profile, level, texture, style, rng):
    """Per-object canvases for phase contrast (phase, unused, texture amplitude) or IHC
    (hematoxylin, DAB, texture amplitude), each (N, S, S) or broadcastable."""
    n = len(batch.q)
    if modality in ("phase contrast", "dic"):
        phase = shape_profile * level
        if batch.kind == "cell":
            # the nucleus and the cell body round up over it: thicker, so darker
            nucleus = np.clip((1 - batch.inner) / 0.3, 0, 1)
            phase = phase * (0.6 + 0.4 * nucleus)
        return [phase, np.float32(0.0), texture * 0.5]

    positive = _col(rng.random(n) < style["positive_fraction"])
    dab_level = _col(rng.uniform(0.5, 1.3, n)) * style["dab"]
    if batch.kind == "cell":
        nucleus = np.clip((1 - batch.inner) / 0.3, 0, 1)
        hema = (0.08 + 0.92 * nucleus) * level * style["hema"]
        # membrane or cytoplasm staining of positive cells, little over the nucleus
        if style["dab_membrane"]:
            stain = 0.3 * shape_profile + np.clip(1 - np.abs(batch.q - 0.9) / 0.15, 0, 1)
        else:
            stain = shape_profile
        dab = positive * dab_level * stain * (1 - 0.7 * nucleus)
        return [hema, dab, texture]
    hema = shape_profile * level * style["hema"]
    dab = positive * dab_level * shape_profile
    # a DAB-positive nucleus keeps some counterstain under the brown
    hema = hema * np.where(positive, 0.2, 1.0)
    return [hema, dab, texture]


def finish_phase_contrast(canvases, labels, spacing, dtype, style, rng):
    """Phase-contrast image from the objects' phase: dark objects, bright outer halos."""
    phase, _, texture = canvases
    shape = labels.shape
    if texture.any():
        phase *= _grain(texture, spacing, style, rng)
    sharp = ndi.gaussian_filter(phase, style["psf_sigma"], truncate=3.0)
    # the halo: what the phase ring lets through of the object's blurred phase. It is
    # positive outside each object (the bright ring) and negative inside near the edge.
    ring = ndi.gaussian_filter(phase, style["halo_sigma"], truncate=2.5)
    ring -= sharp
    if style["shade_off"] > 0:
        # large flat objects look lighter in the middle than at the edge
        sharp -= style["shade_off"] * ndi.gaussian_filter(sharp, max(2.0, 0.2 * spacing), truncate=2.5)
        np.maximum(sharp, 0, out=sharp)
    contrast = -style["depth"] * sharp + style["halo"] * ring
    if style["inverted"]:
        contrast = -contrast
    illumination, dirt = _transmitted_light(shape, style, rng, 0.02, 10.0)
    return _camera(illumination * (1 + dirt + contrast), dtype, style, rng)


def finish_dic(canvases, labels, spacing, dtype, style, rng):
    """DIC / oblique-light image: the objects' phase gradient along the shear direction."""
    phase, _, texture = canvases
    shape = labels.shape
    if texture.any():
        phase *= _grain(texture, spacing, style, rng)
    smooth = ndi.gaussian_filter(phase, style["relief_sigma"], truncate=3.0)
    gy, gx = np.gradient(smooth)
    contrast = style["relief"] * (np.float32(np.sin(style["shear"])) * gy + np.float32(np.cos(style["shear"])) * gx)
    contrast -= style["depth"] * smooth
    illumination, dirt = _transmitted_light(shape, style, rng, 0.02, 10.0)
    return _camera(illumination * (1 + dirt + contrast), dtype, style, rng)


def _camera(signal, dtype, style, rng):
    """Transmitted light (1 = background) -> noisy counts of ``dtype``."""
    signal += style["noise"] * rng.standard_normal(signal.shape, dtype=np.float32)
    if dtype == np.uint8:
        gain, top = 255 * style["background_level"], 255
    else:
        gain, top = _log_uniform(rng, 800, 12000), 65535
    signal *= gain
    if dtype != np.uint8:
        signal += rng.uniform(80, 500)  # camera offset
    return _quantise(signal, dtype, top)


def finish_ihc(canvases, labels, spacing, dtype, style, rng):
    """IHC RGB image: hematoxylin-blue and DAB-brown objects on pale, faintly stained tissue."""
    hema, dab, texture = canvases
    shape = labels.shape
    if texture.any():
        g = _grain(texture, spacing, style, rng)
        hema *= g
        dab *= g
    tissue = 1 / (1 + np.exp(-4 * (_smooth_field(shape, rng, 4 * spacing) + 2 * style["tissue_fraction"] - 1)))
    mottle = np.clip(1 + 0.4 * _texture_field(shape, 2.0, rng), 0, None)
    background = labels == 0
    hema += np.where(background, style["background_hema"] * tissue * mottle, 0.02)
    dab += np.where(background, style["background_dab"] * tissue * np.clip(_smooth_field(shape, rng, spacing), 0, None), 0)
    stains = np.array([_HEMATOXYLIN, _DAB]) + rng.normal(0, 0.04, (2, 3))
    stains = (np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True) * np.log(10)).astype(np.float32)
    brightness = rng.uniform(0.85, 0.97)
    hema = ndi.gaussian_filter(hema, style["psf_sigma"], truncate=3.0)
    dab = ndi.gaussian_filter(dab, style["psf_sigma"], truncate=3.0)
    top = 255 if dtype == np.uint8 else 4095
    rgb = np.empty(shape + (3,), dtype)
    for c in range(3):
        channel = np.exp(-(hema * stains[0, c] + dab * stains[1, c])) * brightness
        channel += (style["noise"] * np.sqrt(12)) * (rng.random(shape, dtype=np.float32) - np.float32(0.5))
        rgb[..., c] = _quantise(top * channel, dtype, top)
    return rgb
