"""Lazy TIFF access: axes from metadata, one plane read at a time, nothing else touched."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_sam.io import LazyStack, open_stack


def stack_data(shape=(3, 4, 40, 50), seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def test_imagej_hyperstack_is_memory_mapped_with_its_axes(tmp_path):
    data = stack_data()
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    stack = open_stack(path)
    assert stack.axes == "ZCYX" and stack.shape == data.shape and stack.stack_axes == "ZC"
    assert stack.memory_mapped
    np.testing.assert_array_equal(stack.plane((2, 1)), data[2, 1])
    np.testing.assert_array_equal(stack.plane(5), data.reshape(12, 40, 50)[5])  # flat plane number
    assert stack.reads == 2


def test_bigtiff_written_plane_by_plane_is_read_lazily(tmp_path):
    data = stack_data((6, 30, 20))
    path = tmp_path / "big.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(iter(data), shape=data.shape, dtype=data.dtype, photometric="minisblack",
                  metadata={"axes": "TYX"})
    stack = open_stack(path)
    assert stack.axes == "TYX" and stack.n_planes == 6 and stack.memory_mapped
    np.testing.assert_array_equal(stack.plane(4), data[4])
    np.testing.assert_array_equal(stack.data[1:5:2, 3:9, ::3].compute(), data[1:5:2, 3:9, ::3])


def test_big_endian_file_reads_in_native_byte_order(tmp_path):
    data = stack_data((2, 10, 12))
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">", photometric="minisblack")
    plane = open_stack(path).plane(1)
    assert plane.dtype == np.uint16 and plane.dtype.isnative
    np.testing.assert_array_equal(plane, data[1])


def test_tiled_rgb_ome_tiff_goes_through_the_zarr_store(tmp_path):
    data = stack_data((2, 3, 64, 64, 3), dtype=np.uint8)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "TZYXS"}, photometric="rgb", tile=(32, 32), compression="zlib")
    stack = open_stack(path)
    assert stack.axes == "TZYXS" and stack.rgb and stack.plane_shape == (64, 64, 3)
    assert not stack.memory_mapped
    np.testing.assert_array_equal(stack.plane((1, 2)), data[1, 2])


def test_planar_rgb_becomes_channel_last(tmp_path):
    data = stack_data((3, 16, 16), dtype=np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate")
    stack = open_stack(path)
    assert stack.axes == "YXS" and stack.rgb and stack.n_planes == 1
    np.testing.assert_array_equal(stack.plane(0), np.moveaxis(data, 0, -1))


def corrupt_all_pages_but(path, keep: int) -> None:
    """Overwrite the compressed bytes of every page except ``keep`` with garbage."""
    with tifffile.TiffFile(path) as tif:
        spans = [(offset, count) for i, page in enumerate(tif.pages) if i != keep
                 for offset, count in zip(page.dataoffsets, page.databytecounts)]
    with open(path, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            handle.write(b"\xff" * count)


def test_reading_one_plane_never_touches_the_other_planes(tmp_path):
    data = stack_data((5, 48, 48))
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    corrupt_all_pages_but(path, keep=3)
    stack = open_stack(path)
    np.testing.assert_array_equal(stack.plane(3), data[3])
    assert stack.reads == 1
    with pytest.raises(Exception):
        stack.plane(2)  # the other planes really are unreadable


def test_a_prompt_on_one_plane_does_not_read_the_others(tmp_path):
    import torch

    from napari_sam.inference.embeddings import EmbeddingStore
    from napari_sam.model import build_sam
    from napari_sam.inference.predictor import Predictor
    from napari_sam.inference.tiling import TiledPredictor

    data = stack_data((4, 300, 200))
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    corrupt_all_pages_but(path, keep=1)
    torch.manual_seed(0)
    model = build_sam({"encoder": "vit", "img_size": 128, "patch_size": 8, "embed_dim": 32, "depth": 2,
                       "num_heads": 2, "mlp_ratio": 2.0, "window_size": 4, "global_attn_indexes": [1],
                       "prompt_embed_dim": 64, "decoder_mlp_dim": 128})
    predictor = Predictor(model)
    tiled = TiledPredictor(predictor, EmbeddingStore(predictor.model), tile_size=128, halo=16)
    stack = open_stack(path)
    tiled.set_plane(stack.plane(1))
    candidates = tiled.predict(points=[(150, 100)])
    assert candidates.masks.shape == (3, 300, 200)
    assert stack.reads == 1 and tiled.store.encoder_calls == 1


def test_plane_of_a_dask_array_computes_only_its_chunk():
    def block(block_id=None):
        if block_id[0] != 2:
            raise AssertionError(f"chunk {block_id} was read")
        return np.full((1, 8, 9), 7, np.uint8)

    lazy = da.map_blocks(block, chunks=((1,) * 5, (8,), (9,)), dtype=np.uint8)
    stack = LazyStack(lazy, "ZYX")
    np.testing.assert_array_equal(stack.plane(2), np.full((8, 9), 7))
    assert stack.reads is None


def test_default_axes_and_index_errors():
    assert LazyStack(np.zeros((10, 12))).axes == "YX"
    assert LazyStack(np.zeros((10, 12, 3))).axes == "YXS"
    stack = LazyStack(np.zeros((2, 3, 10, 12)))
    assert stack.axes == "QQYX" and stack.n_planes == 6
    assert stack.plane_index(4) == (1, 1)
    with pytest.raises(IndexError, match="needs 2 values"):
        stack.plane((1,))
    with pytest.raises(IndexError, match="out of range"):
        stack.plane((2, 0))
    with pytest.raises(ValueError, match="axes"):
        LazyStack(np.zeros((2, 10, 12)), "YX")


def test_the_lazy_array_pickles_without_open_files(tmp_path):
    data = stack_data((3, 20, 20))
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    stack = open_stack(path)
    stack.plane(0)  # opens the zarr store
    clone = pickle.loads(pickle.dumps(stack.data))
    np.testing.assert_array_equal(clone[2].compute(), data[2])


def test_missing_file_and_bad_series_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_stack(tmp_path / "nope.tif")
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, stack_data((10, 10)))
    with pytest.raises(ValueError, match="series 3"):
        open_stack(path, series=3)


def test_napari_reader_returns_the_lazy_array(tmp_path):
    from napari_sam._napari._reader import napari_get_reader

    data = stack_data((3, 20, 30))
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    reader = napari_get_reader(str(path))
    [(layer_data, meta, kind)] = reader(str(path))
    assert kind == "image" and isinstance(layer_data, da.Array) and layer_data.shape == data.shape
    assert meta["name"] == "cells" and meta["metadata"]["axes"] == "ZYX" and not meta["rgb"]
    assert meta["contrast_limits"] == (float(data[0].min()), float(data[0].max()))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_window_of_a_large_plane_reads_only_the_blocks_under_it(tmp_path, compression):
    data = stack_data((2, 300, 500))
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack", tile=(64, 64) if compression else None)
    stack = open_stack(path, block=100)
    assert stack.data.chunks[1:] == ((100,) * 3, (100,) * 5)
    window = stack.data[1][120:180, 210:290]
    np.testing.assert_array_equal(np.asarray(window), data[1, 120:180, 210:290])
    assert stack.reads == 1  # one 100 x 100 block of 15
