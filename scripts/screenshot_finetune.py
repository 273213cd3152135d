"""Render docs/images/finetune.png: the Fine-tune widget after a short run on the sample nuclei.

Needs a display; headless, run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_finetune.py

The sample image and its ground-truth labels are the training data; the bundled default
model is fine-tuned (decoder only) for a few epochs into a temporary folder, so the picture
shows the progress, the loss / validation plot and the status line of a finished run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "finetune.png")
    parser.add_argument("--size", default="1500x900", help="window size WxH in pixels")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication
    from screenshot import save  # scripts/screenshot.py, beside this file

    viewer = napari.Viewer(show=True, title="napari-sam")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    viewer.open_sample("napari-samscope", "nuclei")
    truth = viewer.layers["nuclei ground truth"]
    truth.visible = True
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Fine-tune (Segment Anything)")
    app = QApplication.instance()
    widget.labels_combo.set_layer(truth)
    widget.base_combo.setCurrentText("default")
    widget.epochs_spin.setValue(args.epochs)
    widget.lr_spin.setValue(1e-4)
    widget.device_combo.setCurrentText("cpu")
    with tempfile.TemporaryDirectory() as folder:
        widget.out_path.setText(str(Path(folder) / "nuclei-finetuned.pt"))
        widget.start()
        deadline = time.monotonic() + 900
        while widget.busy:
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() > deadline:
                raise TimeoutError("training did not finish")
        app.processEvents()
        if widget.model_path is None:
            print(f"training failed: {widget.status_label.text()}", file=sys.stderr)
            return 1
        save(viewer, app, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
