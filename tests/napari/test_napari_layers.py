"""Layer <-> plane mapping, mask prompts and encoder watching, without a viewer or Qt window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")

from napari.layers import Image, Labels, Points, Shapes  # noqa: E402

from napari_sam.inference import transforms  # noqa: E402
from napari_sam._napari import layers as L  # noqa: E402
from napari_sam._napari.encoding import EncodingCancelled, encoder_blocks, watch_encoder  # noqa: E402
from napari_sam.inference.transforms import mask_to_low_res_logits  # noqa: E402
from napari_sam.model import build_sam  # noqa: E402
from tiny import TINY



def ellipse(shape, centre, radii):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


# --------------------------------------------------------------------------- mask prompt


@pytest.mark.parametrize(
    ("shape", "image_size", "low_res"),
    [((300, 200), 1024, (256, 256)), ((90, 140), 128, (32, 32)), ((3000, 1800), 1024, (256, 256))],
)
def test_mask_prompt_logits_upscale_back_to_the_mask(shape, image_size, low_res):
    mask = ellipse(shape, (shape[0] * 0.45, shape[1] * 0.55), (shape[0] * 0.3, shape[1] * 0.25))
    logits = mask_to_low_res_logits(mask, image_size, low_res)
    assert logits.shape == low_res and logits.dtype == np.float32
    input_size = transforms.resized_shape(shape, image_size)
    back = transforms.upscale_logits(torch.from_numpy(logits)[None, None], input_size, shape, image_size)[0, 0] > 0
    iou = (back.numpy() & mask).sum() / (back.numpy() | mask).sum()
    assert iou > 0.93
    # The padding (outside the resized plane) is background.
    rows = int(np.ceil(input_size[0] * low_res[0] / image_size)) + 1
    assert (logits[rows:] < 0).all()


def test_mask_prompt_rejects_non_2d_masks():
    with pytest.raises(ValueError, match="2D"):
        mask_to_low_res_logits(np.zeros((2, 3, 4), bool), 128, (32, 32))


# --------------------------------------------------------------------------- encoder progress


def test_watch_encoder_reports_every_block_and_cleans_up():
    torch.manual_seed(0)
    model = build_sam(TINY)
    x = torch.zeros(1, 3, 128, 128)
    seen = []
    with watch_encoder(model, lambda done, total: seen.append((done, total))):
        model.encode(x)
    total = len(encoder_blocks(model))
    assert total == TINY["depth"] and seen == [(i, total) for i in range(1, total + 1)]
    model.encode(x)  # hooks were removed
    assert len(seen) == total


def test_watch_encoder_cancels_at_the_next_block():
    torch.manual_seed(0)
    model = build_sam(TINY)
    cancel = __import__("threading").Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        cancel.set()  # ask to stop after the first block

    with pytest.raises(EncodingCancelled):
        with watch_encoder(model, progress, cancel):
            model.encode(torch.zeros(1, 3, 128, 128))
    assert seen == [1]
    model.encode(torch.zeros(1, 3, 128, 128))  # usable afterwards


# --------------------------------------------------------------------------- plane and prompts


def test_plane_ref_follows_world_position_and_fixed_channel():
    data = np.zeros((2, 5, 30, 40), np.uint16)  # CZYX
    image = Image(data, scale=(1, 3.0, 0.5, 0.5), translate=(0, 6.0, 0, 0))
    ref = L.plane_ref(image, world_point=(1, 6.0 + 2 * 3.0 + 1.0, 0, 0))  # rounds to z = 2
    assert ref.index == (1, 2, slice(None), slice(None)) and ref.shape == (30, 40)
    fixed = L.plane_ref(image, world_point=(1, 6.0, 0, 0), channel_axis=0, channel=0)
    assert fixed.index[:2] == (0, 0) and fixed.key != ref.key
    with pytest.raises(ValueError, match="outside"):
        L.plane_ref(image, world_point=(0, 6.0 + 9 * 3.0, 0, 0))
    with pytest.raises(ValueError, match="channel axis"):
        L.plane_ref(image, world_point=(0, 6.0, 0, 0), channel_axis=2)
    with pytest.raises(ValueError, match="channel 5"):
        L.plane_ref(image, world_point=(0, 6.0, 0, 0), channel_axis=0, channel=5)


def test_rgb_plane_keeps_its_colour_axis():
    image = Image(np.zeros((3, 20, 30, 3), np.uint8), rgb=True)
    ref = L.plane_ref(image, world_point=(2, 0, 0))
    assert ref.index == (2, slice(None), slice(None), slice(None))
    assert L.read_plane(image, ref).shape == (20, 30, 3)


def test_points_in_world_units_map_to_plane_pixels_and_other_slices_are_ignored():
    image = Image(np.zeros((4, 50, 60), np.uint8), scale=(5.0, 2.0, 0.5), translate=(0, 100.0, -10.0))
    ref = L.plane_ref(image, world_point=(10.0, 0, 0))  # z = 2
    points = Points(
        np.array([[10.0, 100.0 + 2 * 7, -10.0 + 0.5 * 33], [15.0, 110.0, 0.0], [10.0, 0.0, 0.0]]),
        features=L.empty_sign_features().reindex(range(3)).fillna(L.POSITIVE),
    )
    points.features.loc[0, L.SIGN_FEATURE] = L.NEGATIVE
    rc, labels = L.points_prompt(points, image, ref, (10.0, 0, 0))
    # point 1 is on slice 3, point 2 is outside the image
    np.testing.assert_allclose(rc, [[7, 33]])
    np.testing.assert_array_equal(labels, [0])


def test_a_2d_points_layer_applies_to_every_slice():
    image = Image(np.zeros((3, 20, 20), np.uint8))
    points = Points(np.array([[4.0, 5.0]]))  # no sign feature: positive
    for z in range(3):
        ref = L.plane_ref(image, world_point=(z, 0, 0))
        rc, labels = L.points_prompt(points, image, ref, (z, 0, 0))
        np.testing.assert_allclose(rc, [[4, 5]])
        np.testing.assert_array_equal(labels, [1])


def test_boxes_are_bounding_boxes_clipped_to_the_plane():
    image = Image(np.zeros((2, 40, 50), np.uint8), scale=(1, 2.0, 2.0))
    ref = L.plane_ref(image, world_point=(1, 0, 0))
    def rectangle(z, r0, c0, r1, c1):
        return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)

    shapes = Shapes(ndim=3)
    shapes.add_rectangles(rectangle(1, 20.0, 30.0, 40.0, 60.0))  # world -> rows 10..20, cols 15..30
    shapes.add_rectangles(rectangle(1, -10.0, 90.0, 10.0, 120.0))  # clipped at the top and right
    shapes.add_rectangles(rectangle(0, 20.0, 30.0, 40.0, 60.0))  # other slice
    shapes.add_lines(np.array([[1, 0.0, 0.0], [1, 20.0, 20.0]]))  # no area: ignored
    boxes = L.boxes_prompt(shapes, image, ref, (1, 0, 0))
    np.testing.assert_allclose(boxes, [[10, 15, 20, 30], [-0.5, 45, 5, 49.5]])
    np.testing.assert_array_equal(L.prompts_on_plane(shapes, image, ref, (1, 0, 0)), [0, 1, 3])


# --------------------------------------------------------------------------- writing labels


def test_write_masks_preserves_replaces_and_undoes_in_one_step():
    data = np.zeros((3, 10, 10), np.int32)
    data[1, 0:3, 0:3] = 4  # another object
    data[1, 6:9, 6:9] = 9  # the object being refined
    labels = Labels(data.copy())
    image = Image(np.zeros((3, 10, 10), np.uint8))
    ref = L.plane_ref(image, world_point=(1, 0, 0))
    index = L.labels_plane_index(labels, image, ref, (1, 0, 0))
    assert index == (1,)
    mask = np.zeros((10, 10), bool)
    mask[1:8, 1:8] = True
    changed = L.write_masks(labels, index, [mask], [9], preserve=True, replace=9)
    after = labels.data[1]
    assert (after[0:3, 0:3][data[1, 0:3, 0:3] == 4] == 4).all()  # preserved
    assert (after[mask & (data[1] != 4)] == 9).all()
    assert after[8, 8] == 0  # the part of 9 outside the new mask is cleared
    assert changed == int((after != data[1]).sum())
    assert not labels.data[[0, 2]].any()
    labels.undo()
    np.testing.assert_array_equal(labels.data, data)
    assert L.next_label_id(labels) == 10


def test_labels_layer_must_cover_the_image_plane():
    image = Image(np.zeros((10, 12), np.uint8), scale=(2, 2))
    with pytest.raises(ValueError, match="must match"):
        L.labels_plane_index(Labels(np.zeros((10, 10), np.int32)), image, L.plane_ref(image, (0, 0)), (0, 0))
    with pytest.raises(ValueError, match="placed differently"):
        L.labels_plane_index(Labels(np.zeros((10, 12), np.int32)), image, L.plane_ref(image, (0, 0)), (0, 0))
