"""How fast the Annotate widget answers: click -> preview visible, accept -> labels written.

Drives the real widget in a shown napari viewer (run under Xvfb on a headless machine)
through its public controls only: a point added to the widget's points layer, then
``accept()``. Images are real fluorescence nuclei (CTC HeLa, ../shared/eval): a 512 x 512
crop, and a 2048 x 2048 plane made by mirroring the 700 x 1100 frame. The default model,
warm: each target's tile is embedded by an untimed click first, so the timed clicks
measure the loop itself (scheduling, decode, layer updates, repaint), not the encoder.

    xvfb-run -a -s "-screen 0 1280x1024x24" env -u QT_QPA_PLATFORM OMP_NUM_THREADS=2 \\
        python benchmarks/bench_widget.py --clicks 20 --out docs/benchmarks_widget.json

- click -> preview: from adding the point until the widget's ``predicted`` signal and
  the next drawn frame of the canvas;
- accept -> labels: from ``accept()`` until ``committed`` and the next drawn frame;
- decode: the model's own click on the same tile (``TiledPredictor.predict``), for scale.

Medians (and 10-90 % range) over ``--clicks`` objects, one point at each object's centre.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"


def planes(eval_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"512": (image, labels), "2048": (image, labels)}`` from the CTC HeLa frame."""
    import tifffile

    image = tifffile.imread(eval_dir / "ctc_hela" / "ctc_hela_t19_image.tif")
    labels = tifffile.imread(eval_dir / "ctc_hela" / "ctc_hela_t19_labels.tif")
    crop = (slice(94, 606), slice(294, 806))
    big = tuple(np.pad(a, ((0, 2048 - a.shape[0]), (0, 2048 - a.shape[1])), mode="symmetric") for a in (image, labels))
    return {"512": (image[crop], labels[crop]), "2048": big}


def targets(labels: np.ndarray, count: int, seed: int = 0) -> list[tuple[float, float]]:
    """Centres (row, col) of ``count`` objects at least 20 px from the border."""
    from scipy import ndimage

    values = [v for v in np.unique(labels)[1:] if (labels == v).sum() > 50]
    centres = ndimage.center_of_mass(labels > 0, labels, values)
    inside = [c for c in centres if min(c) > 20 and max(c[0] - labels.shape[0], c[1] - labels.shape[1]) < -20]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(inside), size=min(count, len(inside)), replace=False)
    return [tuple(float(v) for v in inside[i]) for i in chosen]


class Frames:
    """Counts frames the canvas draws (the viewer's vispy canvas ``draw`` event)."""

    def __init__(self, viewer) -> None:
        self.times: list[float] = []
        canvas = viewer.window._qt_viewer.canvas._scene_canvas  # benchmark only: no public hook
        canvas.events.draw.connect(self._on_draw)

    def _on_draw(self, event) -> None:
        self.times.append(time.perf_counter())

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.times if t >= moment), None)


def wait(app, condition, timeout: float = 60.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        app.processEvents()
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not answer in time")
        time.sleep(0.0005)


def run_plane(name: str, image: np.ndarray, labels: np.ndarray, model, clicks: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._napari.widget import AnnotateWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name=name)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model, name="default")
    wait(app, lambda: not widget.busy)
    frames = Frames(viewer)
    done = {"predicted": [], "committed": []}  # when each signal came
    widget.predicted.connect(lambda: done["predicted"].append(time.perf_counter()))
    widget.committed.connect(lambda n: done["committed"].append(time.perf_counter()))

    def until_drawn(signal: str, start: float) -> float:
        """Seconds from ``start`` to the first frame drawn after ``signal`` came."""
        wait(app, lambda: done[signal] and done[signal][-1] >= start and not widget.busy)
        moment = done[signal][-1]
        viewer.window._qt_viewer.canvas._scene_canvas.update()  # a frame is drawn even if nothing changed
        wait(app, lambda: frames.first_after(moment) is not None)
        return frames.first_after(moment) - start

    def click(rc) -> float:
        start = time.perf_counter()
        widget.points_layer.add(np.asarray(rc, dtype=float))
        return until_drawn("predicted", start)

    def accept() -> float:
        start = time.perf_counter()
        widget.accept()
        return until_drawn("committed", start)

    points = targets(labels, clicks)
    for rc in points:  # warm: embed each target's tile, untimed
        click(rc)
        widget.clear()
        wait(app, lambda: not widget.busy)
    click_s, accept_s = [], []
    for rc in points:
        click_s.append(click(rc))
        accept_s.append(accept())

    from napari_sam import Predictor
    from napari_sam.inference.tiling import TiledPredictor

    tiled = TiledPredictor(Predictor(model))
    tiled.set_plane(image)
    decode_s = []
    for rc in points:
        tiled.predict(points=[rc])  # embeds its tile
        start = time.perf_counter()
        tiled.predict(points=[rc])
        decode_s.append(time.perf_counter() - start)
    viewer.close()
    return {"plane": list(image.shape), "clicks": len(points), "click_to_preview_ms": summary(click_s),
            "accept_to_labels_ms": summary(accept_s), "model_decode_ms": summary(decode_s)}


def summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"median": round(float(statistics.median(ms)), 1), "p10": round(float(np.percentile(ms, 10)), 1),
            "p90": round(float(np.percentile(ms, 90)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--planes", nargs="+", default=["512", "2048"], choices=["512", "2048"])
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from napari_sam import load_model

    model = load_model("default", device="cpu")
    data = planes(args.eval_dir)
    results = {name: run_plane(name, *data[name], model, args.clicks) for name in args.planes}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = {"commit": commit.stdout.strip(), "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "model": "default", "image": "CTC HeLa t19 (512 crop; 2048 mirrored)", "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
