"""The transaction semantics shared by every transaction-scoped lock block.

The outermost lock block of a session owns the transaction: a normal exit
commits (``commit=True``), an exception rolls back and re-raises. Inner blocks
neither commit nor roll back, so a helper that locks can be called from code
that already holds locks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chrononaut.errors import DeadlockError
from chrononaut.locking._common import DEPTH_KEY, deadlock_from

T = TypeVar("T")

# A failable lock attempt (nowait / timeout) runs in a savepoint we send as SQL
# ourselves instead of ``begin_nested()``:
# - ``Session.begin_nested()`` flushes first and, when rolled back, expires what
#   changed inside it; a lock attempt must leave the session's objects and pending
#   state exactly as they were (the caller's transaction "remains usable").
# - ``Connection.begin_nested()`` on the session's connection is bookkept by
#   SQLAlchemy as part of the session's transaction; when the attempt's connection
#   died (a terminated backend), its rollback raises SQLAlchemy's own error, while
#   undo() below can raise the driver error that says what happened.
# - It costs the same round trips (SAVEPOINT, then RELEASE or ROLLBACK TO), so
#   there is nothing to win by switching. The fixed name nests safely: PostgreSQL
#   resolves a repeated savepoint name to the newest one.
SAVEPOINT = "chrononaut_lock_attempt"


def as_deadlock(error: BaseException) -> DeadlockError | None:
    """``error`` as a :class:`DeadlockError` when it is one or PostgreSQL reported one."""
    if isinstance(error, DeadlockError):
        return error
    return deadlock_from(error)


def _rollback_quietly(session: Session) -> None:
    # The original exception matters more than a failing rollback (e.g. on a
    # connection the server already closed): SQLAlchemy invalidates it anyway.
    with contextlib.suppress(Exception):
        session.rollback()


def depth(session: Session) -> int:
    """How many transaction-scoped lock blocks of this session are open."""
    value = session.info.get(DEPTH_KEY, 0)
    return value if isinstance(value, int) else 0


@contextlib.contextmanager
def transaction_block(session: Session, commit: bool, acquire: Callable[[], T]) -> Iterator[T]:
    """Run ``acquire()`` and yield its result inside a lock block of ``session``.

    :param session: the ORM session whose transaction holds the locks.
    :param commit: commit on normal exit of the outermost block.
    :param acquire: takes the locks; an exception from it leaves the transaction
        as it was (lock attempts run in a savepoint), except for a deadlock, which
        aborted the transaction: the outermost block then rolls back.
    """
    level = depth(session)
    outermost = level == 0
    try:
        value = acquire()
    except BaseException as error:
        deadlock = as_deadlock(error)
        if deadlock is None:
            raise
        if outermost:
            _rollback_quietly(session)
        if deadlock is error:
            raise
        raise deadlock from error
    session.info[DEPTH_KEY] = level + 1
    try:
        yield value
    except BaseException as error:
        session.info[DEPTH_KEY] = level
        if outermost:
            _rollback_quietly(session)
        deadlock = deadlock_from(error)
        if deadlock is not None:
            raise deadlock from error
        raise
    session.info[DEPTH_KEY] = level
    if outermost and commit:
        try:
            session.commit()
        except BaseException as error:
            _rollback_quietly(session)
            deadlock = deadlock_from(error)
            if deadlock is not None:
                raise deadlock from error
            raise


def savepoint(conn: Connection) -> None:
    """Start the savepoint a failable lock attempt runs in."""
    conn.exec_driver_sql(f"SAVEPOINT {SAVEPOINT}")


def release(conn: Connection) -> None:
    """Keep what the attempt did (its locks) and drop the savepoint."""
    conn.exec_driver_sql(f"RELEASE SAVEPOINT {SAVEPOINT}")


def undo(conn: Connection, original: BaseException | None = None) -> None:
    """Undo a failed attempt: the transaction is usable again, settings restored.

    :param original: the error the attempt failed with. When the undo itself
        fails — the connection died during the attempt (its backend was
        terminated) — that error is raised instead of the undo's own
        (SQLAlchemy's ``PendingRollbackError`` would hide why).
    """
    try:
        conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        conn.exec_driver_sql(f"RELEASE SAVEPOINT {SAVEPOINT}")
    except Exception:
        if original is None:
            raise
        raise original from None
