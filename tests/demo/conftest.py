"""Make the ``demo`` package importable when pytest is run as a bare ``pytest``.

The demo is run from the repository root (``python -m demo``) and is not part of
the installed distribution. ``python -m pytest`` puts the root on ``sys.path``; a
bare ``pytest`` only adds ``tests/``, so add the root here.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
