"""Shared test setup.

The reference SAM packages (used only by parity tests) import torchvision and timm, which
do not import here; the stand-ins must be in sys.modules before any test imports them.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).parent)
if _TESTS not in sys.path:  # so tests can `import reference` under any pytest import mode
    sys.path.insert(0, _TESTS)

import reference_shims  # noqa: E402

reference_shims.import_references()
