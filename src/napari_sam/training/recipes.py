"""Named training settings (light: no torch import, so the CLI can list them quickly)."""

from __future__ import annotations

from typing import Any

#: Named TrainConfig settings. ``"sam"`` is the SAM paper's training (the dataclass
#: defaults). ``"fast"`` is what gained most per CPU-minute in the BBBC007 decoder
#: fine-tuning benchmark (docs/benchmarks.md): dice alone at lr 1e-3, the loss at the
#: model input, and 3 interaction rounds (first prompt, one correction, one refinement
#: without a new point) instead of 11, so a step costs about a third as much and the
#: first-round (multimask) candidates and the IoU head are trained three times as often.
RECIPES: dict[str, dict[str, Any]] = {
    "sam": {},
    "fast": {"lr": 1e-3, "focal_weight": 0.0, "rounds": 3, "loss_resolution": "input"},
}
