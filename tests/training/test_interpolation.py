"""Weight interpolation between a model and its fine-tuned copy (the default model's stage 4)."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY, build_tiny, randomized

from napari_sam.training.interpolation import interpolate_weights


def test_the_ends_are_the_two_models_and_the_middle_is_their_mean():
    start, tuned = randomized(build_tiny(), seed=1), randomized(build_tiny(), seed=2)
    tuned_weights = {k: v.clone() for k, v in tuned.state_dict().items()}
    for alpha in (0.0, 1.0, 0.3):
        model = interpolate_weights(start, build_tiny(), 0.0)  # a fresh copy of start
        model.load_state_dict(tuned_weights)
        interpolate_weights(start, model, alpha)
        for name, value in model.state_dict().items():
            want = (1 - alpha) * start.state_dict()[name] + alpha * tuned_weights[name]
            torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=name)


def test_interpolation_refuses_other_architectures_and_alphas_outside_0_1():
    start = build_tiny()
    with pytest.raises(ValueError, match="same architecture"):
        interpolate_weights(start, build_tiny({**TINY, "depth": 3, "global_attn_indexes": [2]}), 0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_weights(start, build_tiny(), 1.5)
