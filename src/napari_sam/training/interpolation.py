"""Interpolate the weights of a model and its fine-tuned copy (WiSE-FT).

Wortsman et al. (2022, "Robust fine-tuning of zero-shot models") found that the weights
``(1 - alpha) * start + alpha * fine_tuned`` keep much of what the starting model did well
on data neither was tuned for while keeping most of the fine-tune's gains. The default
model's stage 4 uses it so that new modalities do not cost the fluorescence images it
already segmented (docs/models.md).
"""

from __future__ import annotations

import torch


def interpolate_weights(start: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """``tuned`` with its floating-point weights set to ``(1 - alpha) * start + alpha * tuned``.

    Parameters
    ----------
    start, tuned : torch.nn.Module
        The same architecture (equal state-dict names and shapes); ``tuned`` is changed in place.
    alpha : float
        In [0, 1]: 0 gives ``start``'s weights, 1 leaves ``tuned`` as it is.

    Returns
    -------
    torch.nn.Module
        ``tuned``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ours, theirs = start.state_dict(), tuned.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ValueError("interpolation needs two models of the same architecture (state-dict names and shapes)")
    mixed = {
        name: torch.lerp(ours[name].to(value), value, alpha) if value.is_floating_point() else value
        for name, value in theirs.items()
    }
    tuned.load_state_dict(mixed)
    return tuned
