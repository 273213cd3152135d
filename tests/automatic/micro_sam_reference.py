"""Import micro-sam and torch-em (the reference for the automatic segmentation parity tests).

Both are installed test-only without their dependencies (``pip install --no-deps
micro_sam==1.8.14 torch_em``, see scripts/test.sh): their torchvision would replace the
pinned CPU torch. They import ``torchvision.ops.boxes`` (the stand-ins of
``reference_shims`` have it) and ``torchvision.utils.make_grid`` (tensorboard logging of
their trainers, never called here), so this adds a stand-in for the latter while they
import, then takes the stand-ins away again as ``reference_shims.import_references`` does.

Tests only. ``import_micro_sam()`` raises ImportError when the packages are missing, so
tests ``pytest.importorskip`` through it.
"""

from __future__ import annotations

import importlib
import sys

import reference_shims

MICRO_SAM_MODULES = (
    "torch_em.model.unetr",
    "torch_em.util.segmentation",
    "micro_sam.util",
    "micro_sam.instance_segmentation",
)


def _make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision.utils.make_grid is a test stand-in (tensorboard logging only)")


def import_micro_sam():
    """Import the micro-sam / torch-em modules the parity tests use; returns ``micro_sam.instance_segmentation``."""
    before = set(sys.modules)
    reference_shims.install()
    torchvision = sys.modules.get("torchvision")
    added_utils = False
    if torchvision is not None and getattr(torchvision, reference_shims._STAND_IN_FLAG, False) \
            and "torchvision.utils" not in sys.modules:
        utils = reference_shims._module("torchvision.utils", make_grid=_make_grid)
        sys.modules["torchvision.utils"] = utils
        torchvision.utils = utils
        added_utils = True
    try:
        for name in MICRO_SAM_MODULES:
            importlib.import_module(name)
    finally:
        for name in [n for n in sys.modules if n not in before]:
            if getattr(sys.modules[name], reference_shims._STAND_IN_FLAG, False):
                del sys.modules[name]
        if added_utils and "torchvision" in sys.modules:
            sys.modules.pop("torchvision.utils", None)
    return sys.modules["micro_sam.instance_segmentation"]
