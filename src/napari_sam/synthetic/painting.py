"""Synthetic images, second pass: intensities and textures per object, modality styles,
optics and the camera."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .shapes import _Batch, _col

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

    if modality != "histology":
        from .modalities import extra_values  # imports this module

        return extra_values(modality, batch, shape_profile, level, texture, style, rng)

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
    elif modality == "histology":
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
    else:
        from .modalities import extra_style  # imports this module

        style.update(extra_style(modality, rng))
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
    if style.get("out_of_focus", 0.0) > 0:
        signal += _out_of_focus_light(signal, labels, spacing, style["out_of_focus"], rng)
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


def _out_of_focus_light(signal, labels, spacing, strength, rng):
    """Light from objects above and below the focal plane, as in a widefield z-stack slice:
    the in-focus objects' own glow (their signal blurred over ~a diameter) and unlabelled
    blurred objects between them, together about ``strength`` times the in-focus objects'
    median level. Only called when ``strength > 0``, so other images keep their draws."""
    shape = labels.shape
    inside = signal[labels > 0]
    level = float(np.median(inside)) if inside.size else float(signal.max() or 1.0)
    glow = ndi.gaussian_filter(signal, float(rng.uniform(0.4, 1.2)) * spacing, truncate=2.5)
    glow *= float(rng.uniform(0.2, 0.8)) * strength * level / max(float(glow.max()), 1e-6)
    count = int(shape[0] * shape[1] / spacing**2 * rng.uniform(0.3, 1.2)) + 1
    ghosts = np.zeros(shape, np.float32)
    rows, cols = rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)
    np.add.at(ghosts, (rows, cols), rng.lognormal(0.0, 0.4, count).astype(np.float32))
    ghosts = ndi.gaussian_filter(ghosts, float(rng.uniform(0.35, 0.8)) * spacing, truncate=2.5)
    ghosts *= strength * level / max(float(np.percentile(ghosts, 99)), 1e-6)
    glow += ghosts
    return glow


def _transmitted_light(shape, style, rng, dirt_amplitude: float, dirt_spacing: float):
    """Uneven illumination (vignetting, 1 +- style["vignetting"]) and dust (0..dirt_amplitude)
    of a transmitted-light image: two ``(H, W)`` fields, drawn in that order from ``rng``."""
    illumination = 1 + style["vignetting"] * np.tanh(_smooth_field(shape, rng, max(shape)))
    dirt = rng.uniform(0.0, dirt_amplitude) * _smooth_field(shape, rng, dirt_spacing)
    return illumination, dirt


def _finish_brightfield(canvases, labels, spacing, dtype, style, rng):
    absorb, phase, texture = canvases
    shape = labels.shape
    if texture.any():
        absorb *= _grain(texture, spacing, style, rng)
    illumination, dirt = _transmitted_light(shape, style, rng, 0.015, 8.0)
    # phase contrast: the halo is the phase image blurred wide minus blurred narrow
    halo = style["halo"] * ndi.gaussian_filter(phase, style["halo_sigma"], truncate=2.5)
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
