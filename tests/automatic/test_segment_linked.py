"""``segment-all --link`` and ``segment_linked``: per-plane instances linked into 3D objects and tracks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam.automatic import linked as linked_module
from napari_sam.automatic import segment as segment_module
from napari_sam.automatic.linked import link_planes, read_tracks_csv, segment_linked, tracks_path
from napari_sam.cli import main

from tiny import ellipse

SHAPE = (40, 56)


def volume() -> np.ndarray:
    """Two objects through 6 planes, a third from plane 2 on: ids consistent (the truth)."""
    truth = np.zeros((6, *SHAPE), np.uint32)
    for z in range(6):
        truth[z][ellipse(SHAPE, (12, 12 + z), (6, 6))] = 1
        truth[z][ellipse(SHAPE, (28, 38), (7, 5 + z // 2))] = 2
        if z >= 2:
            truth[z][ellipse(SHAPE, (30, 12), (4, 4))] = 3
    return truth


def dividing() -> np.ndarray:
    """One cell through frames 0-2 that divides into two on frame 3 (frames 3-4)."""
    truth = np.zeros((5, *SHAPE), np.uint32)
    for t in range(3):
        truth[t][ellipse(SHAPE, (20, 26), (8, 10))] = 1
    for t in range(3, 5):
        truth[t][ellipse(SHAPE, (20, 20), (6, 5))] = 2
        truth[t][ellipse(SHAPE, (20, 33), (6, 5))] = 3
    truth[:, 2:8, 45:52] = 9  # a bystander all along
    return truth


def per_plane_ids(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same instances with ids that change on every plane, as per-plane segmentation gives."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(truth)
    for index, plane in enumerate(truth):
        ids = [v for v in np.unique(plane) if v]
        for old, new in zip(ids, rng.permutation(np.arange(1, 100))[: len(ids)]):
            out[index][plane == old] = new
    return out


def relabelling(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """The one-to-one map of ids of ``a`` to ids of ``b`` (asserts there is one)."""
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel())}
    forward = dict(pairs)
    assert len(forward) == len(pairs) == len({y for _, y in pairs}), "not the same objects"
    return forward


class ReplaySegmenter:
    """A segmenter that returns prepared per-plane labels (the plane's first pixel says which)."""

    def __init__(self, per_plane: np.ndarray) -> None:
        self.per_plane = per_plane

    def segment(self, plane, *, progress=None, cancel=None):
        return self.per_plane[int(plane[0, 0])]


def test_instances_of_a_volume_become_one_id_per_3d_object():
    truth = volume()
    planes = np.zeros(truth.shape, np.uint8) + np.arange(len(truth), dtype=np.uint8)[:, None, None]
    result = segment_linked(ReplaySegmenter(per_plane_ids(truth)), planes)
    ids = relabelling(truth, result.labels)
    assert ids[0] == 0 and len(ids) == 4  # background + three objects, each one id on every plane
    assert result.parents == {}


def test_a_division_ends_the_parent_and_gives_both_daughters_new_ids():
    truth = dividing()
    linked = link_planes(per_plane_ids(truth, seed=3), "tracks")
    ids = relabelling(truth, linked.labels)
    parent, left, right, bystander = ids[1], ids[2], ids[3], ids[9]
    assert len({parent, left, right, bystander}) == 4
    assert linked.parents == {left: parent, right: parent}
    # As objects (z), the same stack gives no parents.
    assert link_planes(per_plane_ids(truth), "objects").parents == {}


def test_link_planes_refuses_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        link_planes(volume(), "lineage")
    with pytest.raises(ValueError, match="iou_floor"):
        link_planes(volume(), iou_floor=0.0)
    with pytest.raises(ValueError, match="N, H, W"):
        link_planes(volume()[0])


def test_tracks_csv_is_named_after_the_labels():
    assert tracks_path("/data/cells.tif").name == "cells.tracks.csv"
    assert tracks_path("/data/cells.ome.tiff").name == "cells.ome.tracks.csv"


@pytest.fixture()
def replayed(monkeypatch):
    """segment_stack replaced by prepared per-plane labels (the CLI's linking is what is tested)."""
    prepared = {}

    def fake_segment_stack(job, indices=None, **kwargs):
        return np.stack([prepared["labels"][index] for index in indices])

    monkeypatch.setattr(segment_module, "segment_stack", fake_segment_stack)
    return prepared


def write_stack(path, planes: int, axes: str):
    tifffile.imwrite(path, np.zeros((planes, *SHAPE), np.uint16), imagej=True, metadata={"axes": axes})
    return path


def test_cli_link_writes_one_id_per_3d_object_and_no_tracks_for_z(tmp_path, replayed, model_file):
    truth = volume()
    replayed["labels"] = per_plane_ids(truth)
    image = write_stack(tmp_path / "volume.tif", len(truth), "ZYX")
    out = tmp_path / "objects.tif"
    assert main(["segment-all", str(image), "--out", str(out), "--model", model_file, "--mode", "amg", "--link"]) == 0
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    assert len(relabelling(truth, labels)) == 4
    assert not tracks_path(out).exists()


def test_cli_link_on_a_time_lapse_writes_tracks_with_the_parent(tmp_path, replayed, model_file):
    truth = dividing()
    replayed["labels"] = per_plane_ids(truth, seed=1)
    image = write_stack(tmp_path / "movie.tif", len(truth), "TYX")
    out = tmp_path / "tracks.tif"
    assert main(["segment-all", str(image), "--out", str(out), "--model", model_file, "--mode", "amg", "--link"]) == 0
    labels = tifffile.imread(out)
    ids = relabelling(truth, labels)
    data, graph = read_tracks_csv(tracks_path(out))
    assert graph == {ids[2]: [ids[1]], ids[3]: [ids[1]]}
    # One row per track and frame, centroids where the objects are.
    assert len(data) == 3 + 2 * 2 + 5
    row = data[(data[:, 0] == ids[1]) & (data[:, 1] == 0)][0]
    assert row[2:] == pytest.approx(np.argwhere(truth[0] == 1).mean(axis=0), abs=1e-3)


def test_cli_link_refuses_a_plane_and_keeps_an_existing_tracks_table(tmp_path, replayed, model_file):
    replayed["labels"] = per_plane_ids(dividing())
    image = write_stack(tmp_path / "movie.tif", 5, "TYX")
    out = tmp_path / "tracks.tif"
    with pytest.raises(SystemExit, match="every plane"):
        main(["segment-all", str(image), "--out", str(out), "--model", model_file, "--plane", "1", "--link"])
    tracks_path(out).write_text("keep me")
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["segment-all", str(image), "--out", str(out), "--model", model_file, "--mode", "amg", "--link"])
    assert tracks_path(out).read_text() == "keep me" and not out.exists()


def test_cli_link_runs_the_real_per_plane_segmentation(tmp_path, model_file, monkeypatch):
    from napari_sam.automatic import amg

    original = amg.AmgOptions.__post_init__

    def fewer(self):  # the tiny random model needs only a few grid points to be exercised
        object.__setattr__(self, "points_per_side", 4)
        original(self)

    monkeypatch.setattr(amg.AmgOptions, "__post_init__", fewer)
    planes = (np.stack([ellipse(SHAPE, (20, 20 + t), (8, 8)) for t in range(3)]) * 200).astype(np.uint8)
    image = tmp_path / "movie.tif"
    tifffile.imwrite(image, planes, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "linked.tif"
    assert main(["segment-all", str(image), "--out", str(out), "--model", model_file, "--mode", "amg", "--link"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == planes.shape and labels.dtype == np.uint32
    # The random model may find anything (or nothing): the table matches the labels it wrote.
    data, _ = read_tracks_csv(tracks_path(out))
    assert {int(t) for t in data[:, 0]} == {int(v) for v in np.unique(labels) if v}
    assert tifffile.TiffFile(out).pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK


def with_specks(truth: np.ndarray) -> np.ndarray:
    """``truth`` plus a speck on plane 1 only and another on planes 3-4 (ids 20, 21)."""
    specked = truth.copy()
    specked[1, 2:5, 50:53] = 20
    specked[3:5, 35:38, 2:5] = 21
    return specked


def test_objects_on_fewer_than_three_planes_are_dropped_by_default():
    truth = with_specks(volume())
    linked = link_planes(per_plane_ids(truth), "objects")
    ids = relabelling(volume(), linked.labels)  # the specks are gone, the three objects stay whole
    assert len(ids) == 4
    assert set(np.unique(linked.tracks[:, 0]).astype(int)) == set(ids.values()) - {0}
    kept = link_planes(per_plane_ids(truth), "objects", min_planes=1)
    assert len(relabelling(truth, kept.labels)) == 6
    two = link_planes(per_plane_ids(truth), "objects", min_planes=2)
    assert len(relabelling(with_specks(volume()) * (truth != 20), two.labels)) == 5  # the 2-plane speck stays
    # a stack of two planes keeps what is on both (the default never asks more than the stack has)
    assert len(np.unique(link_planes(per_plane_ids(volume()[:2]), "objects").labels)) == 3


def test_tracks_keep_short_ones_by_default_and_drop_parents_with_them():
    truth = dividing()
    assert len(np.unique(link_planes(per_plane_ids(with_specks(truth)), "tracks").labels)) == 7
    linked = link_planes(per_plane_ids(truth, seed=3), "tracks", min_planes=3)
    assert not linked.labels[(truth == 2) | (truth == 3)].any()  # the daughters (2 frames) are gone ...
    parent, bystander = np.unique(linked.labels[truth == 1]), np.unique(linked.labels[truth == 9])
    assert len(parent) == len(bystander) == 1 and 0 not in (parent[0], bystander[0]) and parent[0] != bystander[0]
    assert linked.parents == {}  # ... and so is their parent record
    shorter = link_planes(per_plane_ids(truth, seed=3), "tracks", min_planes=2)
    assert len(shorter.parents) == 2
    with pytest.raises(ValueError, match="min_planes"):
        link_planes(truth, "tracks", min_planes=0)


def test_the_cli_refuses_a_bad_min_planes_before_any_work(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume().astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(SystemExit, match="min-planes"):
        main(["segment-all", str(path), "--out", str(tmp_path / "out.tif"), "--link", "--min-planes", "0"])
    assert not (tmp_path / "out.tif").exists()
