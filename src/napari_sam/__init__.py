"""napari-sam: Segment Anything for scientific and microscopy images."""

__version__ = "0.1.0"
