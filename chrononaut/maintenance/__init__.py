"""Operating Chrononaut on existing databases: importing the original Chrononaut's
activity log, pruning history, reading a record's timeline.

The functions below are the Python API; ``flask chrononaut import-activity``,
``prune``, ``history``, ``as-of`` and ``backfill-valid-from`` wrap them. The
modules of this package are private.
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
from chrononaut.maintenance._timetravel import BackfillSummary, backfill_valid_from, parse_instant

__all__ = [
    "ActivityConflictError",
    "ActivityImportError",
    "BackfillSummary",
    "Change",
    "ImportSummary",
    "PruneSummary",
    "Timeline",
    "backfill_valid_from",
    "import_activity",
    "parse_instant",
    "prune",
    "timeline",
]
