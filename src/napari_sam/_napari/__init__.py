"""The napari plugin: the Annotate widget, layer <-> prompt mapping and sample data.

The only code in napari-sam that imports napari or Qt; it translates layers to prompts
and results to layers, and leaves segmentation to the core.
"""
