"""The simulated user: corrective clicks from the error region, and SAM's 11-round schedule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_sam.training.simulation import make_schedule, sample_correction_points


@settings(max_examples=60, deadline=None)
@given(
    targets=arrays(bool, (3, 7, 9)),
    predictions=arrays(bool, (3, 7, 9)),
    seed=st.integers(0, 2**32 - 1),
)
def test_corrective_point_lies_in_the_error_region_with_the_right_sign(targets, predictions, seed):
    points, labels = sample_correction_points(predictions, targets, np.random.default_rng(seed))
    for i in range(3):
        error = predictions[i] != targets[i]
        if not error.any():
            assert labels[i] == -1
            continue
        x, y = points[i]
        row, col = int(y), int(x)
        assert (row, col) == (y, x)
        assert error[row, col]
        # a missed object pixel asks for more (positive), a wrong pixel for less (negative)
        assert labels[i] == (1 if targets[i][row, col] else 0)


@pytest.mark.parametrize("seed", range(20))
def test_schedule_has_11_rounds_two_without_a_new_point_and_multimask_first(seed):
    schedule = make_schedule(np.random.default_rng(seed), rounds=11, first_is_box=False)
    assert len(schedule) == 11
    later = schedule[1:]
    assert sum(not r.new_point for r in later) == 2
    assert not later[-1].new_point
    assert schedule[0].multimask and not any(r.multimask for r in later)
    assert later[0].new_point  # round 2 always corrects round 1
    assert not make_schedule(np.random.default_rng(seed), 11, first_is_box=True)[0].multimask
