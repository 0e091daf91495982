"""``LockableMixin``: the locking methods every ``Versioned`` record has."""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from chrononaut.errors import LockHolder

_L = TypeVar("_L", bound="LockableMixin")


class LockableMixin:
    """Row locks, advisory locks and lock holders for a mapped class.

    It adds methods only (no mapped attributes), so it can be mixed into any
    declarative model; :class:`~chrononaut.Versioned` includes it.
    """

    __slots__ = ()

    def lock(
        self: _L,
        mode: str = "update",
        *,
        nowait: bool = False,
        timeout: float | None = None,
        commit: bool = True,
    ) -> contextlib.AbstractContextManager[_L]:
        """Lock this record's row for the block and refresh it from the locked row.

        ::

            with account.lock():
                account.balance -= 10
            # committed; the lock ended with the transaction

        On entry pending changes are flushed, the row is locked in the session's
        transaction and every column attribute is reloaded from the locked row.
        The outermost lock block of the session commits on normal exit (when
        ``commit`` is true) and rolls back on an exception; nested blocks do
        neither.

        :param mode: ``"update"`` (FOR UPDATE), ``"no_key_update"``, ``"share"`` or
            ``"key_share"``.
        :param nowait: raise :class:`~chrononaut.RecordLockedError` at once when the
            row is locked by another transaction.
        :param timeout: seconds (> 0) to wait before :class:`~chrononaut.LockTimeoutError`.
        :param commit: commit on normal exit of the outermost lock block.
        :raises ValueError: a bad ``mode`` or ``timeout``, or ``nowait`` with ``timeout``.
        :raises TypeError: a non-bool ``nowait``/``commit``.
        :raises ChrononautException: the record is transient, pending, detached or
            deleted, or its row was deleted by another transaction.
        """
        from chrononaut.locking._rows import lock_record

        return lock_record(self, mode, nowait=nowait, timeout=timeout, commit=commit)

    def lock_holder(self) -> LockHolder | None:
        """Who holds a lock on this record's row now, or ``None``.

        Never waits and takes no lock. A holder that locked through Chrononaut
        comes with its acting user; other holders with ``user_id=None``. Your own
        transaction's lock is reported too.
        """
        from chrononaut.locking._rows import record_holder

        return record_holder(self)

    def advisory_lock(
        self,
        *,
        shared: bool = False,
        nowait: bool = False,
        timeout: float | None = None,
        scope: str = "transaction",
        session: Session | None = None,
        commit: bool = True,
    ) -> contextlib.AbstractContextManager[None]:
        """An advisory lock keyed by this record's table and primary key.

        The key is the string :func:`chrononaut.locking.record_key` ``(self)`` (the
        physical table and the whole primary key as a JSON array) hashed like any
        string key, so ``advisory_lock(record_key(account))`` is the same lock as
        ``account.advisory_lock()``. The row itself is not locked. Options as for
        :func:`chrononaut.advisory_lock`; the session defaults to the record's own.
        """
        from chrononaut.locking._advisory import record_advisory_lock

        return record_advisory_lock(
            self,
            shared=shared,
            nowait=nowait,
            timeout=timeout,
            scope=scope,
            session=session,
            commit=commit,
        )

    @classmethod
    def lock_next(
        cls: type[_L],
        *criteria: Any,
        mode: str = "update",
        order_by: Any = None,
        commit: bool = True,
        session: Session | None = None,
    ) -> contextlib.AbstractContextManager[_L | None]:
        """Claim the first matching row no one else has locked (a work queue).

        ::

            with Job.lock_next(Job.state == "queued") as job:
                if job is not None:
                    run(job)
                    job.state = "done"

        ``FOR UPDATE SKIP LOCKED``: concurrent workers never get the same row; the
        block yields ``None`` when no matching row is free.

        :param criteria: filter expressions.
        :param mode: the row-lock mode.
        :param order_by: which free row comes first (default: primary key).
        :param commit: commit on normal exit of the outermost lock block.
        :param session: default: the model's Flask-SQLAlchemy ``db.session``.
        """
        from chrononaut.locking._rows import lock_next

        return lock_next(
            cls, *criteria, mode=mode, order_by=order_by, commit=commit, session=session
        )
