"""Train an instance decoder (AIS) for a SAM whose image encoder stays frozen: the bundled default's.

    OMP_NUM_THREADS=1 python -m napari_sam.automatic.training \\
        --model src/napari_sam/weights/default.pt --out src/napari_sam/weights/default_decoder.pt

Recipe (seeded: the same command on the same software gives the same file):

1. A fixed set of procedural images of the model's input size (:mod:`napari_sam.synthetic`):
   half fluorescence nuclei (8- and 16-bit, a share with nuclei of 10-56 px), half drawn
   from every modality and object kind the generator has when the set is built
   (:data:`~napari_sam.synthetic.MODALITIES`, :data:`~napari_sam.synthetic.KINDS`), so a
   rerun picks up new ones.
2. Each image goes through the model's own path once, the one inference takes
   (:func:`~napari_sam.imaging.to_rgb_uint8` with the default normaliser, then
   :func:`~napari_sam.inference.encoding.encode_batch`); the embeddings are kept, the
   encoder never runs again.
3. Targets are micro-sam's (:func:`instance_targets`): foreground, distance to the
   object's centre and distance to its boundary, each normalised per object to 0..1.
4. Loss (:func:`decoder_loss`): dice per channel as micro-sam, the distance channels only
   inside the true foreground, plus binary cross-entropy on the foreground and a squared
   error on the distances (both speed up the first hundreds of steps on a cold decoder).
   The decoder's output is resized to the model input exactly as at inference
   (:func:`~napari_sam.automatic.decoder.maps_to_plane`) before the loss.
5. The watershed's thresholds and minimum size are tuned on held-out generated planes,
   segmented through :func:`~napari_sam.automatic.ais.decoder_maps` (tiles as at
   inference), for the best mean AP; they are stored in the decoder file.

The file records the sha256 of the model file it was trained on;
:func:`napari_sam.automatic.loading.load_decoder` refuses it beside another encoder.
Progress goes to stdout and ``--log``; creating ``OUT.stop`` ends training after the
current step (the decoder so far is tuned and written).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..imaging import DEFAULT_NORMALIZATION, to_rgb_uint8
from ..model.family import InputFrame
from .decoder import InstanceDecoder, maps_to_plane
from .watershed import WatershedOptions, instances_from_maps

__all__ = [
    "DecoderTraining", "decoder_loss", "embed_images", "instance_targets", "main",
    "train_decoder", "training_images", "tune_watershed",
]

#: The object diameter (model-input pixels) the decoder is run at (:mod:`.scale`): the middle
#: of the generator's default nucleus sizes (12-26 px), the objects it sees most.
PREFERRED_OBJECT_SIZE = 19.0

COMMAND = ("python -m napari_sam.automatic.training --model src/napari_sam/weights/default.pt "
           "--out src/napari_sam/weights/default_decoder.pt")


@dataclass(frozen=True)
class DecoderTraining:
    """Settings of :func:`train_decoder` and the command.

    Attributes
    ----------
    initial_features : int
        Decoder width ``f`` (levels ``8f, 4f, 2f, f``). With the default model, the 25 tiles of
        a 512 x 512 plane embed and decode in 0.84 s of one core at 4 (1.4 s at 8, 2.8 s at 16).
    images : int
        Generated training images (of the model input's size).
    steps, batch_size, lr, weight_decay : training schedule (AdamW, cosine to 0 after a warm-up)
    crop_cells : int
        Steps before the last ``full_steps`` see random ``crop_cells`` x ``crop_cells``
        windows of the embedding grid (and the matching pixels): 6x cheaper than whole
        embeddings at 8 of 16 cells. The last ``full_steps`` see whole embeddings, so the
        decoder's instance norms end on the statistics they meet at inference.
    fluorescence_share : float
        Share of fluorescence-nucleus images; the rest mix every modality and kind.
    hazy_share : float
        Share drawn first as slices of widefield z-stacks (crowded nuclei, strong blur,
        out-of-focus light): without them the decoder took the bright haze between the
        nuclei of real 3D slices for objects (StarDist's 3D nuclei: F1 0.04).
    tune_planes : int
        Held-out generated planes (256 x 256) on which the watershed options are tuned.
    seed : int
    """

    initial_features: int = 4
    images: int = 2000
    steps: int = 3000
    batch_size: int = 8
    crop_cells: int = 8
    full_steps: int = 100
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    fluorescence_share: float = 0.5
    hazy_share: float = 0.25
    tune_planes: int = 16
    validation_images: int = 32
    log_every: int = 100
    seed: int = 0


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _draw_image(rng: np.random.Generator, shape: tuple[int, int], fluorescence_share: float, seed,
                hazy_share: float = 0.0):
    """One generated image (image, labels): fluorescence nuclei, or any modality and kinds.

    A share ``hazy_share`` (drawn first, only when > 0) is a slice of a widefield z-stack:
    crowded nuclei of 6-40 px under strong blur and out-of-focus light
    (:func:`~napari_sam.synthetic.widefield_slice` with its defaults).
    """
    from .. import synthetic

    if hazy_share > 0 and rng.random() < hazy_share:
        sample = synthetic.widefield_slice(shape, rng, seed)
        return sample.image, sample.labels
    if rng.random() < fluorescence_share:
        dtype = np.uint16 if rng.random() < 0.3 else np.uint8
        size_range = None
        if rng.random() < 0.4:  # large nuclei too: a quarter of the input and more
            centre = float(np.exp(rng.uniform(np.log(10.0), np.log(56.0))))
            size_range = (0.75 * centre, 1.3 * centre)
        sample = synthetic.generate(shape, modality="fluorescence", kinds=("nucleus",), dtype=dtype,
                                    size_range=size_range, seed=seed)
        return sample.image, sample.labels
    modalities, kinds = tuple(synthetic.MODALITIES), tuple(synthetic.KINDS)
    for attempt in range(10):  # a modality may refuse some kinds: draw again
        modality = modalities[int(rng.integers(len(modalities)))]
        chosen = tuple(kinds[i] for i in sorted(rng.choice(len(kinds), int(rng.integers(1, 3)), replace=False)))
        try:
            sample = synthetic.generate(shape, modality=modality, kinds=chosen, seed=[*seed, attempt])
        except ValueError:
            continue
        return sample.image, sample.labels
    sample = synthetic.generate(shape, modality="fluorescence", kinds=("nucleus",), seed=seed)
    return sample.image, sample.labels


def training_images(count: int, shape: tuple[int, int], seed: int = 0, fluorescence_share: float = 0.5,
                    hazy_share: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` generated (image, int32 labels) pairs of ``shape``; deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    pairs = [_draw_image(rng, shape, fluorescence_share, [seed, index], hazy_share) for index in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """micro-sam's decoder targets of an instance label image.

    Parameters
    ----------
    labels : (H, W) integer array, 0 background

    Returns
    -------
    (3, H, W) float32: foreground (0/1); distance to the object's centre divided by its
    largest value in the object (0 at the centre, 1 at the farthest pixel); one minus the
    distance to the object's outline divided by its largest value (0 deepest inside, 1 on
    the outline). Both distances are 1 on the background. The centre is the object's
    centroid when that lies inside it, else its most interior pixel.
    """
    labels = np.asarray(labels)
    targets = np.ones((3,) + labels.shape, np.float32)
    targets[0] = labels > 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # One pixel of background around the box, so the object's outline is a boundary.
        r0, c0 = box[0].start, box[1].start
        mask = np.pad(labels[box] == index, 1)
        inside = ndimage.distance_transform_edt(mask)
        rows, cols = np.nonzero(mask)
        centre = np.array([rows.mean(), cols.mean()])
        if not mask[int(round(centre[0])), int(round(centre[1]))]:
            centre = np.unravel_index(int(np.argmax(inside)), mask.shape)
        to_centre = np.hypot(rows - centre[0], cols - centre[1])
        to_centre /= max(float(to_centre.max()), 1e-6)
        depth = inside[rows, cols] - 1.0  # 0 on the outline
        top = float(depth.max())
        depth = 1.0 - depth / top if top > 0 else np.zeros_like(depth)  # one or two pixels wide: all core
        rows_plane, cols_plane = rows - 1 + r0, cols - 1 + c0
        targets[1, rows_plane, cols_plane] = to_centre
        targets[2, rows_plane, cols_plane] = depth
    return targets


@torch.inference_mode()
def embed_images(model, images: list[np.ndarray], batch_size: int = 32) -> tuple[torch.Tensor, list[InputFrame]]:
    """Image embeddings ``(N, C, h, w)`` (CPU float32) through inference's path, and their frames."""
    from ..inference.encoding import encode_batch

    features, frames = [], []
    for start in range(0, len(images), batch_size):
        rgb = [to_rgb_uint8(image, DEFAULT_NORMALIZATION) for image in images[start : start + batch_size]]
        embedding, batch_frames = encode_batch(model, rgb)
        if not isinstance(embedding, torch.Tensor):
            raise TypeError("instance decoders need a single-tensor image embedding (SAM 1 family)")
        features.append(embedding.float().cpu())
        frames.extend(batch_frames)
    return torch.cat(features), frames


# --------------------------------------------------------------------------------------
# Loss and training
# --------------------------------------------------------------------------------------


def _dice(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - dice over the batch, per channel ``(K,)``; torch-em's form (squares in the denominator)."""
    dims = (0, 2, 3)
    overlap = (prediction * target).sum(dims)
    total = (prediction * prediction).sum(dims) + (target * target).sum(dims)
    return 1.0 - 2.0 * overlap / total.clamp_min(eps)


def decoder_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of decoder maps ``(B, 3, H, W)`` in 0..1 against :func:`instance_targets` ``(B, 3, H, W)``.

    Dice on each channel (the distances masked by the true foreground, micro-sam's rule, so
    the background's distance values are free), plus BCE on the foreground and a masked
    mean squared error on the distances.
    """
    foreground = targets[:, :1]
    masked = maps[:, 1:] * foreground
    dice = _dice(maps[:, :1], foreground).sum() + _dice(masked, targets[:, 1:] * foreground).sum()
    bce = F.binary_cross_entropy(maps[:, :1].clamp(1e-6, 1 - 1e-6), foreground)
    squared = ((masked - targets[:, 1:] * foreground) ** 2).sum() / (2 * foreground.sum()).clamp_min(1.0)
    return dice + bce + squared


def _log(message: str, log) -> None:
    print(message, flush=True)
    if log is not None:
        log.write(message + "\n")
        log.flush()


def train_decoder(features: torch.Tensor, frame: InputFrame, targets: torch.Tensor, settings: DecoderTraining, *,
                  validation: tuple[torch.Tensor, torch.Tensor] | None = None, log=None,
                  stop_file: Path | None = None) -> tuple[InstanceDecoder, dict]:
    """Fit an :class:`InstanceDecoder` (``conventions="napari_sam"``) to precomputed embeddings.

    Parameters
    ----------
    features : (N, C, h, w) float32 embeddings of N images of one frame ``frame``
    targets : (N, 3, H, W) float32 :func:`instance_targets` in the plane's pixels
    settings : DecoderTraining
    validation : (features, targets), optional; its loss is logged every ``log_every`` steps
    log : text file, optional (progress lines also go to stdout)
    stop_file : path, optional; training ends after the step during which it appears

    Returns
    -------
    (decoder in eval mode, summary dict: steps, seconds, first / last training losses, validation losses)
    """
    torch.manual_seed(settings.seed)
    decoder = InstanceDecoder(embed_dim=int(features.shape[1]), initial_features=settings.initial_features,
                              conventions="napari_sam")
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def rate(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    generator = torch.Generator().manual_seed(settings.seed)
    start, recent, history, validation_losses, step = time.perf_counter(), [], [], [], 0
    order = torch.randperm(len(features), generator=generator)
    position = 0
    for step in range(1, settings.steps + 1):
        if position + settings.batch_size > len(order):
            order, position = torch.randperm(len(features), generator=generator), 0
        batch = order[position : position + settings.batch_size]
        position += settings.batch_size
        decoder.train()
        if step <= settings.steps - settings.full_steps and settings.crop_cells < features.shape[-1]:
            inputs, wanted = _crops(features[batch], targets[batch], settings.crop_cells, generator)
            size = wanted.shape[-2:]
            maps = F.interpolate(decoder(inputs), size, mode="bilinear", align_corners=False)
        else:
            maps, wanted = maps_to_plane(decoder(features[batch]), frame), targets[batch]
        loss = decoder_loss(maps, wanted)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the decoder's loss is {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        recent.append(loss.item())
        stop = stop_file is not None and stop_file.exists()
        if step % settings.log_every == 0 or step == settings.steps or stop:
            mean = float(np.mean(recent))
            history.append(mean)
            line = f"step {step}/{settings.steps} loss {mean:.4f} lr {schedule.get_last_lr()[0]:.2e}"
            if validation is not None:
                validation_losses.append(_validation_loss(decoder, frame, *validation))
                line += f" val {validation_losses[-1]:.4f}"
            _log(f"{line} {time.perf_counter() - start:.0f}s", log)
            recent = []
        if stop:
            _log(f"stopped: {stop_file} exists", log)
            break
    summary = {"steps": step, "seconds": round(time.perf_counter() - start, 1), "loss_history": history,
               "validation_losses": validation_losses}
    return decoder.eval(), summary


def _crops(features: torch.Tensor, targets: torch.Tensor, cells: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``cells`` x ``cells`` window of each embedding ``(B, C, h, w)`` and the pixels
    of its targets ``(B, 3, H, W)`` it covers (``H / h`` pixels per cell; whole-plane frames)."""
    h, w = features.shape[-2:]
    pixels = targets.shape[-2] // h
    corners = torch.stack([torch.randint(0, h - cells + 1, (len(features),), generator=generator),
                           torch.randint(0, w - cells + 1, (len(features),), generator=generator)], 1)
    inputs = torch.stack([f[:, r : r + cells, c : c + cells] for f, (r, c) in zip(features, corners.tolist())])
    span = cells * pixels
    wanted = torch.stack([t[:, r * pixels : r * pixels + span, c * pixels : c * pixels + span]
                          for t, (r, c) in zip(targets, corners.tolist())])
    return inputs, wanted


@torch.inference_mode()
def _validation_loss(decoder: InstanceDecoder, frame: InputFrame, features: torch.Tensor,
                     targets: torch.Tensor) -> float:
    decoder.eval()
    losses = [decoder_loss(maps_to_plane(decoder(features[i : i + 16]), frame), targets[i : i + 16]).item()
              for i in range(0, len(features), 16)]
    return float(np.mean(losses))


# --------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------

TUNING_GRID = {
    "center_distance_threshold": (0.3, 0.4, 0.5, 0.6),
    "boundary_distance_threshold": (0.3, 0.4, 0.5, 0.6),
    "foreground_threshold": (0.4, 0.5, 0.6, 0.7),
    "distance_smoothing": (1.0, 1.6),
    "min_size": (0, 10, 25, 50),
}


def tune_watershed(maps: list[np.ndarray], truths: list[np.ndarray],
                   grid: dict = TUNING_GRID) -> tuple[WatershedOptions, dict]:
    """The :class:`WatershedOptions` of ``grid`` with the best pooled mean AP on the planes.

    Parameters
    ----------
    maps : list of (3, H, W) decoder maps (:func:`~napari_sam.automatic.ais.decoder_maps`)
    truths : list of (H, W) label images, one per map
    grid : option name -> candidate values (the other options keep their defaults)

    Returns
    -------
    (best options, {"mean_ap", "f1"} of the best, pooled over the planes)
    """
    from .scoring import counts

    names = list(grid)
    best = None
    for values in itertools.product(*(grid[name] for name in names)):
        options = WatershedOptions(**dict(zip(names, values)))
        total = None
        for plane_maps, truth in zip(maps, truths):
            found = counts(instances_from_maps(*plane_maps, options), truth)
            total = found if total is None else total + found
        score = (total.mean_ap(), total.f1(0.5))
        if best is None or score > best[0]:
            best = (score, options)
    (mean_ap, f1), options = best
    return options, {"mean_ap": round(mean_ap, 4), "f1": round(f1, 4)}


def tuning_planes(count: int, seed: int, fluorescence_share: float, shape=(256, 256), hazy_share: float = 0.0):
    """Held-out generated planes (larger than one tile, so tiling is part of what is tuned)."""
    return training_images(count, shape, seed=seed + 10_000, fluorescence_share=fluorescence_share,
                           hazy_share=hazy_share)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def labelled_images(paths) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real tuning planes: each ``*_image*`` file with its ``*_labels*`` twin (2D instance labels)."""
    from ..files import read_image

    images, labels = [], []
    for path in map(Path, paths):
        twin = path.with_name(path.name.replace("_image", "_labels"))
        if twin == path or not twin.is_file():
            raise FileNotFoundError(f"no labels beside {path} (expected {twin.name})")
        images.append(np.asarray(read_image(path)))
        labels.append(np.asarray(read_image(twin)).astype(np.int64))
    return images, labels


def tune(model, decoder, settings: DecoderTraining, tune_images=(), log=None) -> tuple[WatershedOptions, dict]:
    """Tune the watershed options on ``settings.tune_planes`` generated planes plus ``tune_images``
    (labelled real files, :func:`labelled_images`), segmented as at inference; counts pooled."""
    from .ais import decoder_maps

    planes, truths = tuning_planes(settings.tune_planes, settings.seed, settings.fluorescence_share,
                                   hazy_share=settings.hazy_share)
    real_planes, real_truths = labelled_images(tune_images)
    maps = [decoder_maps(model, decoder, plane) for plane in planes + real_planes]
    options, tuned = tune_watershed(maps, truths + real_truths, TUNING_GRID)
    tuned["planes"] = {"generated": len(planes), "files": [Path(p).name for p in tune_images]}
    _log(f"watershed tuned on {len(planes)} generated planes and {len(real_planes)} files: "
         f"{options.to_dict()} -> {tuned}", log)
    return options, tuned


def run(model_path: Path, out: Path, settings: DecoderTraining, log=None, tune_images=()) -> dict:
    """Build the set, embed it, train, tune, write ``out``; returns the summary stored in the file."""
    from ..checkpoints import load_model
    from ..checkpoints.download import sha256_of
    from .loading import save_decoder

    start = time.perf_counter()
    model = load_model(str(model_path), device="cpu")
    model.eval()
    shape = (model.image_size, model.image_size)
    total = settings.images + settings.validation_images
    images, labels = training_images(total, shape, settings.seed, settings.fluorescence_share, settings.hazy_share)
    _log(f"generated {total} images of {shape} in {time.perf_counter() - start:.0f}s", log)
    features, frames = embed_images(model, images)
    targets = torch.from_numpy(np.stack([instance_targets(lab) for lab in labels]))
    _log(f"embedded to {tuple(features.shape)}, targets {tuple(targets.shape)}; {time.perf_counter() - start:.0f}s",
         log)
    n = settings.images
    decoder, summary = train_decoder(features[:n], frames[0], targets[:n], settings,
                                     validation=(features[n:], targets[n:]), log=log,
                                     stop_file=out.with_name(out.name + ".stop"))
    options, tuned = tune(model, decoder, settings, tune_images, log)
    summary.update(
        command=COMMAND, settings=settings.__dict__, tuning=tuned,
        total_seconds=round(time.perf_counter() - start, 1), torch=torch.__version__,
    )
    save_decoder(decoder, out, encoder_sha256=sha256_of(model_path), watershed=options,
                 info=json.loads(json.dumps(summary)), object_size=PREFERRED_OBJECT_SIZE)
    _log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {summary['total_seconds']:.0f}s", log)
    return summary


def retune(model_path: Path, decoder_path: Path, out: Path, settings: DecoderTraining, log=None,
           tune_images=()) -> dict:
    """Tune a trained decoder's watershed options again (same weights) and write it to ``out``."""
    from ..checkpoints import load_model
    from ..checkpoints.download import sha256_of
    from .loading import load_decoder, read_decoder_info, save_decoder

    model = load_model(str(model_path), device="cpu")
    decoder = load_decoder(decoder_path, model=model)
    info = read_decoder_info(decoder_path)
    summary = dict(info["training"] or {})
    options, summary["tuning"] = tune(model, decoder, settings, tune_images, log)
    save_decoder(decoder, out, encoder_sha256=sha256_of(model_path), watershed=options,
                 info=json.loads(json.dumps(summary)), object_size=info["object_size"] or PREFERRED_OBJECT_SIZE)
    _log(f"wrote {out} (re-tuned {decoder_path.name})", log)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_sam.automatic.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint of the (frozen) SAM, e.g. the bundled default.pt")
    parser.add_argument("--out", required=True, help="decoder file to write, e.g. beside it as default_decoder.pt")
    parser.add_argument("--log", default=None, help="also append progress lines to this file")
    defaults = DecoderTraining()
    for name in ("images", "steps", "full_steps", "batch_size", "initial_features", "tune_planes", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--hazy-share", type=float, default=defaults.hazy_share,
                        help="share of generated widefield z-stack slices (haze, blur, crowding)")
    parser.add_argument("--tune-images", nargs="*", default=[], metavar="IMAGE",
                        help="labelled real planes (FILE with FILE's '_image' -> '_labels' twin) added to the "
                             "generated ones when tuning the watershed")
    parser.add_argument("--retune", default=None, metavar="DECODER",
                        help="no training: tune this trained decoder's watershed options again and write --out")
    args = parser.parse_args(argv)
    settings = replace(defaults, **{name: getattr(args, name) for name in
                                    ("images", "steps", "full_steps", "batch_size", "initial_features", "tune_planes", "seed",
                                     "lr", "hazy_share")})
    log = open(args.log, "a") if args.log else None
    try:
        _log(f"{' '.join(sys.argv)}\nsettings {settings}", log)
        if args.retune:
            retune(Path(args.model), Path(args.retune), Path(args.out), settings, log, args.tune_images)
        else:
            run(Path(args.model), Path(args.out), settings, log, args.tune_images)
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
