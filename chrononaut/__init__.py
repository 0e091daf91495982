"""Chrononaut: record locking, optimistic concurrency and version history for
Flask-SQLAlchemy applications on PostgreSQL.

Only the names in ``__all__`` are public API; everything in underscore modules,
and any name not re-exported here, may change without notice.
"""

from __future__ import annotations

from chrononaut._context import acting_as, extra_change_info, rationale, suppress_versioning
from chrononaut._flask_ext import VersionedSQLAlchemy
from chrononaut._session import versioned_session
from chrononaut.errors import (
    ActivityImportError,
    ChrononautException,
    DeadlockError,
    HiddenAttributeError,
    Lease,
    LockError,
    LockHolder,
    LockNotAvailableError,
    LockTimeoutError,
    RecordLeasedError,
    RecordLockedError,
    StaleWriteError,
    UntrackedAttributeError,
)
from chrononaut.http import register_error_handlers
from chrononaut.locking import advisory_lock, lock_all
from chrononaut.versioning._as_of import as_of
from chrononaut.versioning._change_info import append_change_info
from chrononaut.versioning._model import Versioned, history_class

__version__ = "0.5.0.dev0"

__all__ = [
    "ActivityImportError",
    "ChrononautException",
    "DeadlockError",
    "HiddenAttributeError",
    "Lease",
    "LockError",
    "LockHolder",
    "LockNotAvailableError",
    "LockTimeoutError",
    "RecordLeasedError",
    "RecordLockedError",
    "StaleWriteError",
    "UntrackedAttributeError",
    "Versioned",
    "VersionedSQLAlchemy",
    "acting_as",
    "advisory_lock",
    "append_change_info",
    "as_of",
    "extra_change_info",
    "history_class",
    "lock_all",
    "rationale",
    "register_error_handlers",
    "suppress_versioning",
    "versioned_session",
]
