"""AMG settings per model: SAM's defaults for official models, tuned presets by model name,
a sidecar's "amg" entry above both, and the caller's values above everything."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_sam.automatic import amg
from napari_sam.automatic.amg import AMG_PRESETS, SAM_AMG_DEFAULTS, AmgOptions, amg_defaults


def model_named(name, **metadata):
    return SimpleNamespace(metadata={"name": name, **metadata})


def test_official_models_and_unnamed_ones_keep_segment_anythings_defaults():
    for model in (model_named("vit_b"), model_named("vit_b_lm"), SimpleNamespace(metadata={}), None):
        assert AmgOptions().resolved(model).to_dict() == SAM_AMG_DEFAULTS
    assert SAM_AMG_DEFAULTS["pred_iou_thresh"] == 0.88 and SAM_AMG_DEFAULTS["stability_score_thresh"] == 0.95


def test_the_default_model_has_its_own_tuned_preset():
    assert "default" in AMG_PRESETS
    resolved = AmgOptions().resolved(model_named("default"))
    assert resolved.to_dict() == {**SAM_AMG_DEFAULTS, **AMG_PRESETS["default"]}
    assert resolved.to_dict() != SAM_AMG_DEFAULTS


def test_caller_values_win_then_sidecar_then_preset(monkeypatch):
    monkeypatch.setitem(amg.AMG_PRESETS, "mine", {"pred_iou_thresh": 0.5, "nms_iou_thresh": 0.4})
    model = model_named("mine", amg={"nms_iou_thresh": 0.3, "unknown": 1})
    assert amg_defaults(model)["pred_iou_thresh"] == 0.5 and amg_defaults(model)["nms_iou_thresh"] == 0.3
    resolved = AmgOptions(nms_iou_thresh=0.9, min_area=7).resolved(model)
    assert (resolved.pred_iou_thresh, resolved.nms_iou_thresh, resolved.min_area) == (0.5, 0.9, 7)
    assert None not in resolved.to_dict().values()


def test_bad_values_are_refused_and_none_means_the_models_default():
    with pytest.raises(ValueError, match="points_per_side"):
        AmgOptions(points_per_side=0)
    with pytest.raises(ValueError, match="min_area"):
        AmgOptions(min_area=-1)
    assert AmgOptions().points_per_side is None
