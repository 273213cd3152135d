"""How candidates are ranked: predicted IoU, or predicted IoU + stability for models that ask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import build_tiny, randomized

from napari_sam.inference.predictor import Predictor, ranking_keys, stability_scores


def _logits() -> torch.Tensor:
    """Three candidates: a crisp small disc, a soft large disc, everything faintly."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = ((rows - 16) ** 2 + (cols - 16) ** 2).sqrt()
    crisp = torch.where(radius < 6, 8.0, -8.0)
    soft = 12.0 - 1.2 * radius  # > +1 within 9.2 px, > -1 within 10.8 px
    faint = torch.full((32, 32), 0.5)
    return torch.stack([crisp, soft, faint])


def test_stability_is_the_iou_of_the_masks_at_both_offsets():
    stable = stability_scores(_logits())
    assert stable[0] == 1.0  # a step edge: the same mask at -1 and +1
    assert 0.6 < stable[1] < 0.8  # (9.2 / 10.8)^2 in pixels
    assert stable[2] == 0.0  # nothing above +1
    assert stability_scores(torch.full((1, 4, 4), -5.0))[0] == 0.0  # empty at -1: 0, not a division by zero


class _Model:
    mask_threshold = 0.0

    def __init__(self, ranking=None):
        self.metadata = {} if ranking is None else {"ranking": ranking}


def test_ranking_keys_follow_the_sidecar():
    scores = torch.tensor([0.30, 0.32, 0.10])
    torch.testing.assert_close(ranking_keys(_Model(), _logits(), scores), scores)
    keys = ranking_keys(_Model("iou+stability"), _logits(), scores)
    torch.testing.assert_close(keys, scores + stability_scores(_logits()))
    assert int(torch.argmax(keys)) == 0  # near-tied IoU: the stabler mask wins
    with pytest.raises(ValueError, match="ranking 'size'"):
        ranking_keys(_Model("size"), _logits(), scores)


@pytest.mark.parametrize("ranking", ["iou", "iou+stability"])
def test_the_predictor_ranks_candidates_as_the_model_asks(ranking):
    model = randomized(build_tiny(), seed=4).eval()
    with torch.no_grad():  # near-tied predicted IoUs, so that stability decides
        head = model.mask_decoder.iou_prediction_head.layers[-1]
        head.weight.mul_(1e-6)
        head.bias.copy_(torch.tensor([0.5, 0.33, 0.32, 0.31]))
    model.metadata = {"ranking": ranking}
    image = np.random.default_rng(0).integers(0, 255, (100, 120), dtype=np.uint8)
    predictor = Predictor(model)
    predictor.set_image(image)
    candidates = predictor.predict(points=[(50, 60)])
    keys = ranking_keys(model, torch.as_tensor(candidates.logits), torch.as_tensor(candidates.scores))
    assert np.all(np.diff(keys.numpy()) <= 1e-6)  # best first by the model's own rule
    by_iou = np.all(np.diff(candidates.scores) <= 0)
    assert by_iou == (ranking == "iou")  # here the stablest mask has the lowest predicted IoU


def test_the_bundled_default_model_ranks_by_iou_and_stability_unless_its_sidecar_says_otherwise():
    from napari_sam.inference.predictor import RANKING_PRESETS

    assert RANKING_PRESETS == {"default": "iou+stability"}  # default-broad's sidecar says it itself
    scores = torch.tensor([0.30, 0.32, 0.10])
    default = _Model()
    default.metadata = {"name": "default"}
    torch.testing.assert_close(ranking_keys(default, _logits(), scores), scores + stability_scores(_logits()))
    default.metadata = {"name": "default", "ranking": "iou"}
    torch.testing.assert_close(ranking_keys(default, _logits(), scores), scores)
    other = _Model()
    other.metadata = {"name": "vit_b"}
    torch.testing.assert_close(ranking_keys(other, _logits(), scores), scores)
