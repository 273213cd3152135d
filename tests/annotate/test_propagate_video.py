"""Propagation with a SAM 2.1 model: ``Propagator`` runs on its memory (``VideoTracker``).

The masks equal those of the tracker called directly on the same planes; memory stays
bounded on long stacks; ``napari-sam propagate --model <SAM 2 file>`` runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from napari_sam import cli
from napari_sam.annotate import propagate_video
from napari_sam.annotate.propagate import PlaneSource, PropagationSettings, Propagator, Seed
from napari_sam.annotate.stack_objects import Division, PlaneMask, Stop
from napari_sam.imaging import to_rgb_uint8
from napari_sam.inference.predictor import Predictor
from napari_sam.model.sam2 import VideoTracker
from tiny import build_tiny_sam2, ellipse

SHAPE = (48, 64)
# Random weights: keep every plane (no stop on the predicted IoU or the area) to compare
# plane by plane.
KEEP_ALL = PropagationSettings(min_score=0.0, min_area=0)


def _stack(count: int) -> np.ndarray:
    """uint16 planes: a bright disc drifting right, a dimmer one still, over a ramp."""
    stack = np.empty((count, *SHAPE), np.uint16)
    ramp = np.linspace(100, 300, SHAPE[1])[None, :]
    for z in range(count):
        plane = np.broadcast_to(ramp, SHAPE).copy()
        plane[ellipse(SHAPE, (20, 16 + z), (9, 10))] = 4000
        plane[ellipse(SHAPE, (34, 46), (8, 8))] = 2000
        stack[z] = plane
    return stack


@pytest.fixture(scope="module")
def sam2_model():
    return build_tiny_sam2()


def _direct(model, stack, prompts, start):
    """The tracker called directly: prompts on ``start``, forward then backward; plane masks."""
    inputs = [model.prepare(to_rgb_uint8(plane))[0] for plane in stack]
    tracker = VideoTracker(model, inputs)
    for obj_id, kind, value in prompts:
        if kind == "mask":
            tracker.add_mask(start, obj_id, value)
        elif kind == "points":
            tracker.add_points(start, obj_id, points_xy=value, labels=[1] * len(value))
        else:
            tracker.add_points(start, obj_id, box_xyxy=value)
    masks = {}
    for reverse in (False, True):
        for frame, logits in tracker.propagate(start, reverse=reverse):
            for obj_id, low in logits.items():
                full = F.interpolate(low, SHAPE, mode="bilinear", align_corners=False)[0, 0] > 0
                masks[(obj_id, frame)] = full.numpy()
    return masks


def test_propagator_with_sam2_gives_the_tracker_s_masks(sam2_model):
    stack = _stack(7)
    disc = ellipse(SHAPE, (34, 46), (8, 8))
    seeds = [Seed(1, 3, points=np.array([[20.0, 19.0]]), point_labels=np.array([1])),
             Seed(2, 3, box=np.array([24.0, 36.0, 44.0, 56.0])),
             Seed(3, 3, mask=disc)]
    result = Propagator(Predictor(sam2_model), settings=KEEP_ALL).run(PlaneSource(stack), seeds)

    # The same prompts in model-input xy (the plane stretched to 128 x 128).
    sy, sx = 128 / SHAPE[0], 128 / SHAPE[1]
    prompts = [(1, "points", [[19.0 * sx, 20.0 * sy]]), (2, "box", [36.0 * sx, 24.0 * sy, 56.0 * sx, 44.0 * sy]),
               (3, "mask", disc)]
    with torch.inference_mode():
        expected = _direct(sam2_model, stack, prompts, start=3)
    assert result.stops == [] and result.labels_ids == [1, 2, 3]
    for label in (1, 2, 3):
        expected[(3, 3)] = disc  # a mask seed is kept as given
        assert result.planes(label) == [p for p in range(7) if expected[(label, p)].any()]
        for plane in result.planes(label):
            np.testing.assert_array_equal(result.masks[label][plane].full(), expected[(label, plane)],
                                          err_msg=f"object {label}, plane {plane}")
    assert sum(len(result.planes(label)) for label in (1, 2, 3)) >= 12  # not trivially empty
    # Labels painted from those masks, plane by plane.
    labels = result.labels()
    assert labels.shape == stack.shape and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_directions_spans_and_max_planes(sam2_model, monkeypatch):
    """Which planes each sweep tracks (the random model's masks may be empty: count visits)."""
    visits = []
    track = VideoTracker.track
    monkeypatch.setattr(VideoTracker, "track", lambda self, frame, reverse=False, obj_ids=None: (
        visits.append(-frame if reverse else frame), track(self, frame, reverse, obj_ids))[1])
    stack = _stack(9)
    seeds = [Seed(1, 4, points=np.array([[20.0, 20.0]])), Seed(1, 6, points=np.array([[20.0, 22.0]]))]

    def run(**options):
        visits.clear()
        settings = PropagationSettings(**{"min_score": 0.0, "min_area": 0, **options})
        return Propagator(Predictor(sam2_model), settings=settings).run(PlaneSource(stack), seeds)

    run(direction="forward")
    assert visits == [5, 7, 8]  # between and beyond the seeds, forward from the first
    run(direction="backward")
    assert visits == [-5, -3, -2, -1, -0]  # backward from the last
    run(max_planes=1)
    assert visits == [5, 7, -3]
    # An object stopping (every predicted IoU is below 1.01) is reported per direction,
    # and restarts at its next seed.
    stopped = run(min_score=1.01)
    assert visits == [5, 7, -3]
    assert stopped.planes(1) == [4, 6]
    assert sorted((s.direction, s.plane) for s in stopped.stops) == [(-1, 3), (1, 5), (1, 7)]


def test_memory_is_bounded_whatever_the_stack_length(monkeypatch):
    reads = []
    original = propagate_video._Frames._read
    monkeypatch.setattr(propagate_video._Frames, "_read", lambda self, plane: (reads.append(plane),
                                                                              original(self, plane))[1])
    model = build_tiny_sam2(image_size=64)  # fast: 160 planes
    peaks = []
    for count in (64, 96):  # past 2 x 32 planes the bound is reached
        reads.clear()
        runner = propagate_video.MemoryPropagation(Predictor(model), KEEP_ALL)
        runner.run(PlaneSource(_stack(count)), [Seed(1, count // 2, points=np.array([[20.0, 20.0]]))])
        peaks.append(runner.peak_stored)
        # Each plane read (and encoded) once: the seed plane for its prompts, the others by a sweep.
        assert sorted(reads) == list(range(count))
        assert runner.tracker._cached is not None and len(runner.tracker._cached[1]) == 4  # one plane's features
    # Per object: its seed, the 2 x 15 planes around the seed (a sweep turns there), the
    # 16 behind the current plane.
    assert peaks[0] == peaks[1] <= 1 + 2 * 15 + 16


@pytest.mark.parametrize("division", ["stop", "daughters"])
def test_a_division_along_t_stops_the_track_or_starts_daughters(sam2_model, monkeypatch, division):
    """The mask on plane 1 is two equal pieces (stand-in masks: the random model's are not)."""
    left, right = ellipse(SHAPE, (20, 16), (6, 6)), ellipse(SHAPE, (20, 44), (6, 6))
    masks = iter([left | right])  # the first tracked mask, then single pieces
    monkeypatch.setattr(propagate_video.MemoryPropagation, "plane_mask",
                        lambda self, logits: PlaneMask.from_mask(next(masks, left)))
    settings = PropagationSettings(min_score=0.0, min_area=1, division=division)
    runner = propagate_video.MemoryPropagation(Predictor(sam2_model), settings)
    result = runner.run(PlaneSource(_stack(4)), [Seed(1, 0, mask=left | right)])
    assert result.planes(1) == [0]
    assert Stop(1, 1, 1, "divided") in result.stops
    if division == "stop":
        assert result.divisions == [Division(1, 1, ())] and result.labels_ids == [1]
        return
    assert result.divisions == [Division(1, 1, (2, 3))] and result.parents == {2: 1, 3: 1}
    np.testing.assert_array_equal(result.masks[2][1].full(), left)
    np.testing.assert_array_equal(result.masks[3][1].full(), right)
    assert result.planes(2) == result.planes(3) == [1, 2, 3]
    assert 1 in runner.tracker.objects[3].conditioning  # a daughter starts from its piece as a mask prompt


def test_cli_propagates_with_a_sam2_file(tmp_path, sam2_model, capsys):
    model_path = tmp_path / "tiny_sam2.pt"
    torch.save({"model": sam2_model.state_dict()}, model_path)
    (tmp_path / "tiny_sam2.json").write_text(json.dumps({"config": sam2_model.config}))
    stack_path, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    stack = _stack(6)
    tifffile.imwrite(stack_path, stack)
    code = cli.main(["propagate", str(stack_path), "--point", "2,20,18", "--box", "2,26,38,42,54",
                     "--min-score", "0", "--out", str(out), "--model", str(model_path), "--device", "cpu"])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == stack.shape and labels.dtype == np.uint16
    expected = Propagator(Predictor(sam2_model), settings=PropagationSettings(min_score=0.0)).run(
        PlaneSource(stack), [Seed(1, 2, points=np.array([[20.0, 18.0]]), point_labels=np.array([1])),
                             Seed(2, 2, box=np.array([26.0, 38.0, 42.0, 54.0]))])
    np.testing.assert_array_equal(labels, expected.labels(np.uint16))
    assert "object 1: planes" in capsys.readouterr().out


def test_an_empty_seed_mask_is_reported_not_followed(sam2_model):
    stack = _stack(5)
    seeds = [Seed(1, 2, mask=np.zeros(SHAPE, bool)), Seed(2, 2, box=np.array([24.0, 36.0, 44.0, 56.0]))]
    result = Propagator(Predictor(sam2_model), settings=KEEP_ALL).run(PlaneSource(stack), seeds)
    assert sorted((s.label, s.direction, s.plane, s.reason) for s in result.stops if s.label == 1) == [
        (1, -1, 1, "the seed's mask is empty"), (1, 1, 3, "the seed's mask is empty")]
    assert not result.masks[1][2].area and result.planes(2)  # the other object is followed
    only_empty = Propagator(Predictor(sam2_model), settings=KEEP_ALL).run(PlaneSource(stack), seeds[:1])
    assert len(only_empty.stops) == 2
    with pytest.raises(ValueError, match="seed mask of label 1"):
        Propagator(Predictor(sam2_model)).run(PlaneSource(stack), [Seed(1, 2, mask=np.zeros((3, 3), bool))])
