"""Operating Chrononaut on existing databases: importing the original Chrononaut's
activity log, pruning history, reading a record's timeline.

The functions below are the Python API; ``flask chrononaut import-activity``,
``prune`` and ``history`` wrap them. The modules of this package are private.
"""

from __future__ import annotations

from chrononaut.maintenance._activity import (
    ActivityConflictError,
    ActivityImportError,
    ImportSummary,
    import_activity,
)
from chrononaut.maintenance._retention import PruneSummary, prune
from chrononaut.maintenance._timeline import Change, Timeline, timeline

__all__ = [
    "ActivityConflictError",
    "ActivityImportError",
    "Change",
    "ImportSummary",
    "PruneSummary",
    "Timeline",
    "import_activity",
    "prune",
    "timeline",
]
