"""The exceptions Chrononaut raises.

Every error says what happened and what to do about it. All of them derive from
:class:`ChrononautException`, so ``except ChrononautException`` catches anything
this library raises on purpose.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm.exc import StaleDataError

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
]


class ChrononautException(Exception):
    """Base class of every error Chrononaut raises on purpose."""


class HiddenAttributeError(ChrononautException, AttributeError):
    """A hidden column (``__chrononaut_hidden__``) was read from a history record.

    Hidden values are never stored in history; read the live record instead.
    """


class UntrackedAttributeError(ChrononautException, AttributeError):
    """An untracked column (``__chrononaut_untracked__``) was read from a history record.

    Untracked columns are not copied into history; read the live record instead.
    """


class ActivityImportError(ChrononautException):
    """The original Chrononaut's activity table could not be imported as it is.

    The message names the table, column or value at fault; fix it (or leave the
    rows out) and run the import again: nothing was written.
    """


# The one word for "no user" (a change_info or lock holder whose user_id is None)
# in messages, the CLI and the demo.
_NO_USER = "anonymous"


class StaleWriteError(ChrononautException, StaleDataError):
    """A write was based on a version of the record that is no longer current.

    Nothing of the failed flush was written. Reload the record (for example with
    ``session.rollback()`` and a fresh query), show the user :attr:`changes`, and let
    them apply their edit again.

    :param message: the human-readable explanation.
    :param record: the record whose write was stale.
    :param expected_version: the version the session based its write on.
    :param current_version: the row's version now, ``None`` when it was deleted.
    :param changes: history records from ``expected_version`` up to
        ``current_version``: who changed what, and when.
    :param changed_fields: for each of ``changes``, the names of the fields that
        change touched (hidden columns by name only; empty for a delete).
    """

    def __init__(
        self,
        message: str,
        *,
        record: Any = None,
        expected_version: int | None = None,
        current_version: int | None = None,
        changes: Sequence[Any] = (),
        changed_fields: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.record = record
        self.expected_version = expected_version
        self.current_version = current_version
        self.changes: list[Any] = list(changes)
        self.changed_fields: list[list[str]] | None = (
            None if changed_fields is None else [list(names) for names in changed_fields]
        )


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock that could not be taken.

    :param user_id: the acting user (see :doc:`/change_info`) of the transaction holding the lock
        when it was taken through Chrononaut, else ``None``.
    :param pid: the PostgreSQL server process id of the holder.
    :param since: when the holder took the lock (or, when that is not recorded,
        when its transaction began); ``None`` when unknown.
    """

    user_id: str | None
    pid: int | None
    since: _dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The holder as JSON-ready values (``since`` in ISO 8601)."""
        return {
            "user_id": self.user_id,
            "pid": self.pid,
            "since": self.since.isoformat() if self.since is not None else None,
        }


class LockError(ChrononautException):
    """Base class of the locking errors.

    :param message: the human-readable explanation.
    :param holder: who holds the lock, when it could be determined.
    """

    def __init__(self, message: str, *, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class LockNotAvailableError(LockError):
    """A lock requested with ``nowait=True`` is held by another transaction.

    Try again later, or wait for it with ``timeout=`` instead of ``nowait=``.
    """


class RecordLockedError(LockNotAvailableError):
    """A record's row is locked by another transaction (``record.lock(nowait=True)``)."""


class LockTimeoutError(LockError):
    """The lock was not granted within ``timeout`` seconds.

    The transaction is still usable; retry, or tell the user who holds the lock.
    """


class DeadlockError(LockError):
    """PostgreSQL detected a deadlock and aborted this transaction.

    Roll back and run the unit of work again; lock records in one order
    (:func:`chrononaut.lock_all`) to avoid it.
    """


def _utc_iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).isoformat()


@dataclass(frozen=True)
class Lease:
    """An edit lease on a record.

    :param user_id: the holder (the acting user who took it), as a string.
    :param acquired_at: when the holder took it (aware datetime).
    :param expires_at: when it ends unless renewed (decided by the database clock).
    :param note: free text the holder gave, e.g. ``"editing the address"``.
    :param token: the secret that renews or releases the lease; only the holder's
        own :class:`Lease` (returned by ``record.lease()``) has it, every other
        view of a lease has ``None``.
    """

    user_id: str
    acquired_at: _dt.datetime
    expires_at: _dt.datetime
    note: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The lease as JSON-ready values (times in ISO 8601 UTC), never the token."""
        return {
            "user_id": self.user_id,
            "acquired_at": _utc_iso(self.acquired_at),
            "expires_at": _utc_iso(self.expires_at),
            "note": self.note,
        }


class RecordLeasedError(LockError):
    """Someone else holds an edit lease on the record.

    :attr:`lease` tells who and until when (without its token). Show it to the
    user, wait until it expires, or take it over with ``record.lease(force=True)``.

    :param message: the human-readable explanation.
    :param lease: the holder's lease.
    """

    def __init__(self, message: str, *, lease: Lease | None = None) -> None:
        super().__init__(message)
        self.lease = lease
