"""Put this folder on sys.path so tests import its helpers (``stand_ins``, ``micro_sam_reference``)
under pytest's importlib import mode."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
