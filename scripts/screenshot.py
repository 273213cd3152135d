"""Render docs/images/widget.png: the Annotate widget in use on the sample nuclei.

Needs a display; headless, run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py

Three nuclei are committed from boxes, then a fourth is previewed from a positive and a
negative point, so the picture shows prompts, the live preview, the candidate list and
committed labels. The model is the bundled default unless ``--model`` names another.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def wait(widget, app, timeout: float = 300.0) -> None:
    """Run the Qt event loop until the widget has nothing pending."""
    deadline = time.monotonic() + timeout
    while True:
        app.processEvents()
        if not widget.busy:
            # one more round: results may queue follow-up work
            time.sleep(0.05)
            app.processEvents()
            if not widget.busy:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the widget did not become idle")
        time.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "widget.png")
    parser.add_argument("--size", default="1500x900", help="window size WxH in pixels")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam.checkpoints import load_model

    try:
        model = load_model(args.model, device=args.device)
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f"cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 1

    viewer = napari.Viewer(show=True, title="napari-sam")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    viewer.open_sample("napari-samscope", "nuclei")
    truth = viewer.layers["nuclei ground truth"].data
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Annotate (Segment Anything)")
    app = QApplication.instance()
    widget.use_model(model, name=str(args.model))
    wait(widget, app)

    # Commit three nuclei from boxes in one batch.
    ids = [value for value in np.unique(truth)[1:] if (truth == value).sum() > 300][:4]
    rectangles = []
    for value in ids[:3]:
        rows, cols = np.nonzero(truth == value)
        rectangles.append(np.array([[rows.min() - 2, cols.min() - 2], [rows.max() + 2, cols.max() + 2]], float))
    widget.boxes_layer.add_rectangles(rectangles)
    wait(widget, app)
    widget.accept()
    wait(widget, app)

    # Preview a fourth from a positive point and a negative one just outside it.
    rows, cols = np.nonzero(truth == ids[3])
    centre = np.array([rows.mean(), cols.mean()])
    points = widget.points_layer
    points.add(centre)
    wait(widget, app)
    widget.toggle_sign()  # what the T key does
    points.add(np.array([rows.min() - 6.0, centre[1]]))
    wait(widget, app)
    viewer.layers.selection.active = points
    save(viewer, app, args.out)
    return 0


def save(viewer, app, out: Path) -> None:
    """Fit the view, write the whole window to ``out`` and close the viewer."""
    viewer.reset_view()
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
