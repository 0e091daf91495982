"""PostgreSQL deadlocks surface as ``DeadlockError`` (SPEC §4, §6)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import DeadlockError


def _fast_detection(session: Any) -> None:
    # The detecting side checks for a deadlock 50 ms into its wait; the other
    # side much later, so which one gets the error is not left to chance.
    session.execute(sa.text("SET LOCAL deadlock_timeout = '50ms'"))


def test_deadlock_in_a_lock_attempt(
    app: Any, db: Any, Counter: Any, raw_engine: Any, admin: Any
) -> None:
    """A lock() that closes a wait cycle raises DeadlockError; the session is usable after."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    with raw_engine.connect() as other:
        other_pid = other.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        other.execute(sa.text("SET LOCAL deadlock_timeout = '10s'"))
        other.execute(sa.text("SELECT 1 FROM lock_counter WHERE id = 2 FOR UPDATE"))
        with pytest.raises(DeadlockError), one.lock():
            _fast_detection(db.session)
            waiter = Worker(
                app,
                lambda: other.execute(
                    sa.text("SELECT 1 FROM lock_counter WHERE id = 1 FOR UPDATE")
                ),
            )
            wait_until_waiting(admin, other_pid)
            with two.lock():
                pass
        waiter.join()
        other.rollback()
    # The outermost block rolled back: the session works again.
    assert db.session.get(Counter, 1).n == 0


def test_deadlock_in_a_flush_inside_a_lock_block(
    app: Any, db: Any, Counter: Any, raw_engine: Any, admin: Any
) -> None:
    """A plain flush inside a lock block that deadlocks raises DeadlockError."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    with raw_engine.connect() as other:
        other_pid = other.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        other.execute(sa.text("SET LOCAL deadlock_timeout = '10s'"))
        other.execute(sa.text("SELECT 1 FROM lock_counter WHERE id = 2 FOR UPDATE"))
        with pytest.raises(DeadlockError) as caught, one.lock():
            _fast_detection(db.session)
            waiter = Worker(
                app,
                lambda: other.execute(
                    sa.text("SELECT 1 FROM lock_counter WHERE id = 1 FOR UPDATE")
                ),
            )
            wait_until_waiting(admin, other_pid)
            two.n = 5
            db.session.flush()
        waiter.join()
        other.rollback()
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
    assert db.session.get(Counter, 2).n == 0


def test_deadlock_at_commit_of_the_block(
    app: Any, db: Any, Counter: Any, raw_engine: Any, admin: Any
) -> None:
    """A deadlock in the flush of the block's commit also raises DeadlockError."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    with raw_engine.connect() as other:
        other_pid = other.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        other.execute(sa.text("SET LOCAL deadlock_timeout = '10s'"))
        other.execute(sa.text("SELECT 1 FROM lock_counter WHERE id = 2 FOR UPDATE"))
        waiter: Worker | None = None
        with pytest.raises(DeadlockError), one.lock():
            _fast_detection(db.session)
            waiter = Worker(
                app,
                lambda: other.execute(
                    sa.text("SELECT 1 FROM lock_counter WHERE id = 1 FOR UPDATE")
                ),
            )
            wait_until_waiting(admin, other_pid)
            two.n = 6
        assert waiter is not None
        waiter.join()
        other.rollback()
    assert db.session.get(Counter, 2).n == 0
    assert backend_pid(db.session()) > 0
