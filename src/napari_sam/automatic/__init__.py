"""Automatic instance segmentation: a learned instance decoder (AIS) and segment everything (AMG).

Headless (no napari / Qt). See :mod:`.decoder`, :mod:`.watershed`, :mod:`.ais`, :mod:`.amg`,
:mod:`.loading`; the Python API is :class:`AutomaticSegmenter` (:mod:`.segment`).
"""

from .segment import MODES, AutomaticSegmenter, SegmentAllJob, segment_stack
from .amg import AmgOptions, MaskCandidate, generate_masks, mask_nms, paint, segment_everything
from .ais import SegmentationCancelled, decoder_maps, minmax_uint8, segment_instances, tile_grid
from .decoder import MAP_NAMES, InstanceDecoder, decoder_from_state, maps_to_plane
from .watershed import WatershedOptions, instances_from_maps
from .linked import link_planes, segment_linked, write_tracks_csv

__all__ = [
    "MODES", "AutomaticSegmenter", "SegmentAllJob", "segment_stack",
    "AmgOptions", "MaskCandidate", "generate_masks", "mask_nms", "paint", "segment_everything",
    "MAP_NAMES", "InstanceDecoder", "SegmentationCancelled", "WatershedOptions", "decoder_from_state",
    "decoder_maps", "instances_from_maps", "maps_to_plane", "minmax_uint8", "segment_instances", "tile_grid",
    "link_planes", "segment_linked", "write_tracks_csv",
]
