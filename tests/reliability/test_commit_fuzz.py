"""Commit / undo fuzz of the Qt-free annotation commit path (issue 21).

1,000 random operations (accept one or several masks with preserve / overwrite, into the
selected label, as a refinement of an existing label, split into objects; undo; redo) on a
labels plane, checked after every step against a model: the whole-plane reference of the
commit rules, and the invariants a user relies on (no pixel outside the masks changes but a
refined label's; with preserve no other label loses a pixel; undo restores exactly).
The widget writes the same ``PlaneEdit`` through napari's undoable ``data_setitem``.
More operations: ``NAPARI_SAM_FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_sam.annotate.commit import paint, plan_commit

STEPS = max(1000, int(os.environ.get("NAPARI_SAM_FUZZ_EXAMPLES", "0")))
SHAPE = (40, 56)


def _random_mask(rng):
    kind = rng.integers(3)
    mask = np.zeros(SHAPE, bool)
    if kind == 0:  # an ellipse
        rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
        r0, c0 = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1])
        a, b = rng.integers(1, 15, size=2)
        mask = ((rr - r0) / a) ** 2 + ((cc - c0) / b) ** 2 <= 1
    elif kind == 1:  # a rectangle, maybe at the border, maybe two pieces with the next
        r0, c0 = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1])
        mask[r0 : r0 + rng.integers(1, 20), c0 : c0 + rng.integers(1, 20)] = True
        if rng.random() < 0.5:
            r1, c1 = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1])
            mask[r1 : r1 + 4, c1 : c1 + 4] = True
    else:  # speckle, or (rarely) nothing
        mask = rng.random(SHAPE) < (0.05 if rng.random() < 0.9 else 0.0)
    return mask


def _reference(current, plan):
    """The commit rules on the whole plane, pixel by pixel (no bounding box)."""
    after = current.copy()
    if plan.replace is not None:
        covered = np.logical_or.reduce(plan.masks) if plan.masks else np.zeros(SHAPE, bool)
        after[(after == plan.replace) & ~covered] = 0
    claimed = np.zeros(SHAPE, bool)  # an earlier mask of the accept keeps its pixels (the preview's rule)
    for mask, value in zip(plan.masks, plan.values):
        write = mask & ~claimed
        if plan.preserve:
            free = (after == 0) | (after == value)
            if plan.replace is not None:
                free |= after == plan.replace
            write = write & free
        after[write] = value
        claimed |= mask
    return after


def _check_invariants(before, after, plan):
    union = np.logical_or.reduce(plan.masks) if plan.masks else np.zeros(SHAPE, bool)
    changed = after != before
    outside = changed & ~union
    # Outside the masks only a refined label's pixels may change, and only to background.
    assert plan.replace is not None or not outside.any()
    if outside.any():
        assert (before[outside] == plan.replace).all() and (after[outside] == 0).all()
    if plan.preserve:
        mine = set(plan.values) | ({plan.replace} if plan.replace is not None else set()) | {0}
        others = ~np.isin(before, list(mine))
        assert not (changed & others).any(), "preserve changed another label's pixels"
    written = changed & union
    assert np.isin(after[written], list(plan.values) + [0]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_random_accepts_undos_and_redos_match_the_model(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint32)
    expected = labels.copy()
    undo, redo = [], []  # (edit, labels before, labels after)
    counts = {"accept": 0, "undo": 0, "redo": 0}
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.2 and undo:
            edit, previous, done = undo.pop()
            edit.undo(labels)
            assert np.array_equal(labels, previous), "undo is not exact"
            redo.append((edit, previous, done))
            expected = previous
            counts["undo"] += 1
        elif roll < 0.4 and redo:
            edit, previous, done = redo.pop()
            edit.apply(labels)
            undo.append((edit, previous, done))
            expected = done  # redo gives back exactly what the accept wrote
            counts["redo"] += 1
        else:
            existing = [int(v) for v in np.unique(labels) if v]
            masks = [_random_mask(rng) for _ in range(1 if rng.random() < 0.7 else rng.integers(2, 4))]
            refine = int(rng.choice(existing)) if existing and len(masks) == 1 and rng.random() < 0.25 else None
            plan = plan_commit(
                masks,
                next_id=int(labels.max()) + 1,
                selected_id=int(rng.choice(existing)) if existing else 0,
                use_selected=bool(rng.random() < 0.2),
                refine_label=refine,
                split=bool(rng.random() < 0.2),
                preserve=bool(rng.random() < 0.7),
            )
            before = labels.copy()
            edit = paint(labels, plan)
            assert np.array_equal(labels, before), "paint wrote into the plane"
            edit.apply(labels)
            expected = _reference(before, plan)
            _check_invariants(before, labels, plan)
            undo.append((edit, before, expected))
            redo.clear()
            counts["accept"] += 1
        assert np.array_equal(labels, expected)
    while undo:  # everything taken back: the empty plane again
        edit, previous, _ = undo.pop()
        edit.undo(labels)
        assert np.array_equal(labels, previous)
    assert not labels.any()
    assert min(counts.values()) > 20, counts
