"""Large images: memory of batch embedding, cached reopening, one click on a 10k x 10k plane.

Run (minutes; writes ~5 GB under --workdir and deletes it afterwards)::

    nice -n 10 python benchmarks/bench_large.py --workdir /tmp/napari-sam-bench

Three measurements, each in a fresh child process so peak RSS is that of the task alone:

1. ``embed``: ``napari-sam embed`` over generated BigTIFF stacks of two lengths (the long
   one >= 4 GB), written plane by plane; peak RSS of the embedding process.
2. ``reopen``: a new process opens the fully cached long stack, prompts one plane;
   encoder calls (must be 0) and time from opening the file to the first mask.
3. ``huge``: one click on a 10k x 10k uint16 plane; tiles embedded (1 of many) and time
   to first mask, split into set_plane, embedding the tile (read, normalise, hash, encode), decoding.

Models: the stack runs use a tiny random-weight ViT (the measurement is about I/O and
memory, not the encoder); the 10k click uses the MobileSAM (vit_t) architecture at
1024 px with random weights (timing does not depend on the weights), or ``--huge-model``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TINY = {"encoder": "vit", "img_size": 128, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "mlp_ratio": 2.0, "window_size": 4, "global_attn_indexes": [1], "prompt_embed_dim": 64,
        "decoder_mlp_dim": 128}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_stack(path: Path, planes: int, side: int) -> float:
    """A ZYX uint16 BigTIFF written plane by plane (never more than one plane in memory)."""
    import tifffile

    rng = np.random.default_rng(0)
    base = rng.integers(100, 2000, (side, side), dtype=np.uint16)

    def generate():
        for k in range(planes):
            yield base + np.uint16(k % 1000)  # every plane has its own content hash

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(generate(), shape=(planes, side, side), dtype=np.uint16, photometric="minisblack",
                  metadata={"axes": "ZYX"})
    return path.stat().st_size / 1e9


def child(args: list[str]) -> dict:
    """Run this script's child mode in a fresh interpreter; return its JSON result."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- child modes ------------------------------------------------------------------------


def run_embed(stack: str, model: str, cache: str, tile: int, halo: int) -> dict:
    from napari_sam.inference.batch import EmbedJob, embed_stack

    start = time.perf_counter()
    reports = embed_stack(EmbedJob(stack, model, cache, tile_size=tile, halo=halo, device="cpu"), progress=False)
    return {"planes": len(reports), "embeddings": sum(r.tiles for r in reports),
            "computed": sum(r.computed for r in reports), "seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb()}


def run_reopen(stack: str, model: str, cache: str, tile: int, halo: int) -> dict:
    from napari_sam.inference.embeddings import EmbeddingStore
    from napari_sam.io import open_stack
    from napari_sam.checkpoints import load_model
    from napari_sam.inference.predictor import Predictor
    from napari_sam.inference.tiling import TiledPredictor

    predictor = Predictor(load_model(model, device="cpu"))
    store = EmbeddingStore(predictor.model, predictor.normalization, cache_dir=cache)
    start = time.perf_counter()
    stack = open_stack(stack)
    tiled = TiledPredictor(predictor, store, tile_size=tile, halo=halo)
    plane = stack.data[stack.plane_index(stack.n_planes // 2)]  # lazy: only the clicked tile is read
    tiled.set_plane(plane)
    mask = tiled.predict(points=[(plane.shape[0] / 2, plane.shape[1] / 2)]).best
    first_mask_s = time.perf_counter() - start
    return {"encoder_calls": store.encoder_calls, "disk_hits": store.disk_hits, "first_mask_s": first_mask_s,
            "planes_read": stack.reads, "mask_px": int(mask.sum()), "peak_rss_mb": peak_rss_mb()}


def run_huge(model: str, side: int) -> dict:
    import torch

    from napari_sam.inference.embeddings import EmbeddingStore, weights_hash
    from napari_sam.model import build_sam
    from napari_sam.inference.predictor import Predictor
    from napari_sam.inference.tiling import TiledPredictor

    if model in ("vit_t-random", "vit_b-random"):
        torch.manual_seed(0)
        sam = build_sam(model.split("-")[0])
    else:
        from napari_sam.checkpoints import load_model

        sam = load_model(model, device="cpu")
    predictor = Predictor(sam)
    weights_hash(sam)  # once per model, at load time in an application
    rng = np.random.default_rng(0)
    plane = rng.integers(100, 2000, (side, side), dtype=np.uint16)
    store = EmbeddingStore(sam, predictor.normalization)
    tiled = TiledPredictor(predictor, store)
    # warm-up of the decoder, as an application would have done with an earlier click
    warm = TiledPredictor(predictor)
    warm.set_plane(plane[:64, :64])
    warm.predict(points=[(32, 32)])

    start = time.perf_counter()
    tiled.set_plane(plane)
    prepared = time.perf_counter()
    tile = tiled.tiles_for(points=[(side * 0.53, side * 0.41)])[0]
    tiled.embedding(tile)
    embedded = time.perf_counter()
    mask = tiled.predict(points=[(side * 0.53, side * 0.41)]).best
    done = time.perf_counter()
    return {"side": side, "tiles_total": len(tiled.grid), "tiles_embedded": store.encoder_calls,
            "tile_size": tiled.tile_size, "halo": tiled.halo, "model": model,
            "set_plane_s": prepared - start, "embed_tile_s": embedded - prepared, "decode_s": done - embedded,
            "first_mask_s": done - start, "mask_shape": list(mask.shape), "peak_rss_mb": peak_rss_mb()}


# ---- driver -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/napari-sam-bench")
    parser.add_argument("--planes", default="64,520", help="two stack lengths (the second >= 4 GB)")
    parser.add_argument("--side", type=int, default=2048, help="plane side of the stacks (uint16)")
    parser.add_argument("--tile", type=int, default=1024, help="tile size for the stacks")
    parser.add_argument("--halo", type=int, default=128)
    parser.add_argument("--huge-side", type=int, default=10_000)
    parser.add_argument("--huge-model", default="vit_t-random",
                        help="vit_t-random, vit_b-random, or a model name / checkpoint for load_model")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, *rest = args.child
        result = {"embed": lambda: run_embed(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4])),
                  "reopen": lambda: run_reopen(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4])),
                  "huge": lambda: run_huge(rest[0], int(rest[1]))}[mode]()
        print(json.dumps(result))
        return

    import torch

    from napari_sam.model import build_sam
    from napari_sam.checkpoints import save_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = str(save_model(build_sam(TINY), work / "tiny.pt"))
    results: dict = {"embed": []}
    try:
        for planes in (int(p) for p in args.planes.split(",")):
            stack = work / f"stack-{planes}.tif"
            start = time.perf_counter()
            size_gb = write_stack(stack, planes, args.side)
            write_s = time.perf_counter() - start
            cache = work / f"cache-{planes}"
            shutil.rmtree(cache, ignore_errors=True)
            embed = child(["--child", "embed", str(stack), model, str(cache), str(args.tile), str(args.halo)])
            embed.update(size_gb=size_gb, write_s=write_s, side=args.side)
            results["embed"].append(embed)
            print(json.dumps(embed), flush=True)
            results["reopen"] = child(["--child", "reopen", str(stack), model, str(cache), str(args.tile),
                                       str(args.halo)])
            print(json.dumps(results["reopen"]), flush=True)
            if not args.keep:
                stack.unlink()
        results["huge"] = child(["--child", "huge", args.huge_model, str(args.huge_side)])
        print(json.dumps(results["huge"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_markdown(results, args)


def print_markdown(results: dict, args) -> None:
    print("\n| stack | file | planes | embeddings (computed) | time | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in results["embed"]:
        print(f"| {r['planes']} x {r['side']}x{r['side']} uint16 | {r['size_gb']:.2f} GB | {r['planes']} | "
              f"{r['embeddings']} ({r['computed']}) | {r['seconds']:.0f} s | {r['peak_rss_mb']:.0f} MB |")
    o = results["reopen"]
    print(f"\nReopen fully cached stack + one click: encoder calls {o['encoder_calls']}, planes read "
          f"{o['planes_read']}, first mask {o['first_mask_s'] * 1000:.0f} ms, peak RSS {o['peak_rss_mb']:.0f} MB")
    h = results["huge"]
    print(f"\n{h['side']}x{h['side']} plane, one click ({h['model']}, tile {h['tile_size']}, halo {h['halo']}): "
          f"{h['tiles_embedded']} of {h['tiles_total']} tiles embedded; first mask {h['first_mask_s']:.2f} s "
          f"= set_plane {h['set_plane_s']:.2f} s + tile read, normalise, hash and encode {h['embed_tile_s']:.2f} s + decode "
          f"{h['decode_s'] * 1000:.0f} ms; peak RSS {h['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
