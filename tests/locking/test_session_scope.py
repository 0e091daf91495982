"""Session-scope advisory locks keep one server session for the block (SPEC §4)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import LockError, VersionedSQLAlchemy, acting_as, advisory_lock
from chrononaut.locking import _advisory as advisory_module
from chrononaut.locking._keys import advisory_key, pg_locks_ids


def _holder_pid(admin: sa.Connection, key: str) -> int:
    normalised = advisory_key(key)
    classid, objid, objsubid = pg_locks_ids(normalised)
    pid = admin.execute(
        sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = :c AND objid::bigint = :o AND objsubid = :s"
        ),
        {"c": classid, "o": objid, "s": objsubid},
    ).scalar()
    assert isinstance(pid, int)
    return pid


def test_held_connection_keeps_an_open_transaction(db: Any, admin: sa.Connection) -> None:
    """During the block the lock's backend is idle in a transaction (one server session)."""
    with advisory_lock("open-txn", scope="session"):
        pid = _holder_pid(admin, "open-txn")
        state = admin.execute(
            sa.text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
        ).scalar()
    assert state == "idle in transaction"


def test_application_name_ends_with_the_block(db: Any, admin: sa.Connection) -> None:
    """The holder tag is transaction-local: the pooled connection gets its own name back."""
    with acting_as("carol"), advisory_lock("tagged", scope="session"):
        pid = _holder_pid(admin, "tagged")
        during = admin.execute(
            sa.text("SELECT application_name FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
        ).scalar()
    assert during == "chrononaut:carol|tagged"  # the user, then the key text
    after = admin.execute(
        sa.text("SELECT application_name FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
    ).scalar()
    assert after is None or not after.startswith("chrononaut")


def test_unlock_finding_no_lock_raises_lock_error(db: Any) -> None:
    """pg_advisory_unlock returning false at exit (lock gone) is a LockError, not silence."""
    with pytest.raises(LockError, match="returned false"):
        with advisory_lock("vanishing", scope="session"):
            held = advisory_module._held.get()
            assert held is not None
            (entry,) = held.values()
            # What a transaction pooler does: the unlock runs where no lock is held.
            entry.conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    with advisory_lock("vanishing", scope="session", nowait=True):
        pass


def test_lost_lock_leaves_nothing_on_the_pool(db: Any, admin: sa.Connection) -> None:
    """After a lost lock its backend keeps neither a lock nor the chrononaut tag."""
    with pytest.raises(LockError):
        with acting_as("dave"), advisory_lock("gone", scope="session"):
            pid = _holder_pid(admin, "gone")
            held = advisory_module._held.get()
            assert held is not None
            (entry,) = held.values()
            entry.conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    deadline = time.monotonic() + 5
    while True:
        row = admin.execute(
            sa.text(
                "SELECT a.application_name, (SELECT count(*) FROM pg_locks l "
                "WHERE l.pid = a.pid AND l.locktype = 'advisory') "
                "FROM pg_stat_activity a WHERE a.pid = :p"
            ),
            {"p": pid},
        ).first()
        clean = row is None or (not str(row[0]).startswith("chrononaut") and row[1] == 0)
        if clean or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert clean


def test_pool_without_a_second_connection_is_a_clear_lock_error(database_url: str) -> None:
    """With a pool of one in use by the ORM session, entry fails at once with LockError."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 30},
    )
    with app.app_context():
        db = VersionedSQLAlchemy(app)
        try:
            db.session.execute(sa.text("SELECT 1"))
            started = time.monotonic()
            with pytest.raises(LockError, match="connection of its own"):
                with advisory_lock("lonely", scope="session"):
                    pass
            assert time.monotonic() - started < 5
        finally:
            db.session.remove()
            db.engine.dispose()


def test_context_copied_into_another_thread_is_not_reentrant(db: Any, app: Flask) -> None:
    """A thread started with a copy of the block's context (``asyncio.to_thread``)
    takes the key on a connection of its own, so it is not granted while the block
    holds it."""
    import contextvars
    import threading

    from chrononaut import LockNotAvailableError

    outcome: dict[str, Any] = {}

    def other() -> None:
        with app.app_context():
            session = db.session.session_factory()
            try:
                with advisory_lock("copied", scope="session", nowait=True, session=session):
                    outcome["granted"] = True
            except LockNotAvailableError:
                outcome["granted"] = False
            finally:
                session.close()

    with advisory_lock("copied", scope="session"):
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(other,))
        thread.start()
        thread.join()
    assert outcome == {"granted": False}
