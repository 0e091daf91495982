"""Races between leases and writes, with real concurrent sessions (SPEC §4)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from chrononaut import RecordLeasedError, VersionedSQLAlchemy, acting_as
from chrononaut.retry import is_retryable

LEVELS = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


@pytest.fixture()
def admin(database_url: str) -> Iterator[sa.Connection]:
    """An autocommit connection for watching pg_stat_activity."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn
    engine.dispose()


def _wait_until_waiting(admin: sa.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = admin.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
        ).scalar()
        if state == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


class _Thread:
    """Run ``target`` in a thread with the app's context; ``join()`` returns or re-raises."""

    def __init__(self, app: Flask, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with app.app_context():
                    self.result = target()
            except BaseException as error:  # handed over by join()
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def _session(db: VersionedSQLAlchemy, level: str = "READ COMMITTED") -> tuple[Session, int]:
    session = db.session.session_factory()
    conn = session.connection(execution_options={"isolation_level": level})
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    return session, int(pid)


def test_threads_exactly_one_lease_wins(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """Four threads taking the same lease at once: exactly one wins."""
    barrier = threading.Barrier(4)

    def take(user: str) -> Callable[[], str]:
        def run() -> str:
            session = db.session.session_factory()
            try:
                doc = session.get(Doc, 1)
                assert doc is not None
                session.rollback()
                barrier.wait(10)
                with acting_as(user):
                    doc.lease()
                return "won"
            except RecordLeasedError:
                return "lost"
            finally:
                session.close()

        return run

    threads = [_Thread(app, take(f"u{i}")) for i in range(4)]
    results = sorted(t.join() for t in threads)
    assert results == ["lost", "lost", "lost", "won"]


def test_processes_exactly_one_lease_wins(database_url: str) -> None:
    """Four processes taking the same lease at the same moment: exactly one wins."""
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    try:
        from lease_race_worker import (  # type: ignore[import-not-found]  # sys.path above
            Base,
            Page,
        )
    finally:
        sys.path.remove(str(here))
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    Base.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(Page).values(id=1, title="", version=0))
        root = str(here.resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, str(here)])}
        start_at = str(time.time() + 3.0)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(here / "lease_race_worker.py"),
                    database_url,
                    f"p{i}",
                    start_at,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            outputs.append(out.strip())
        assert sorted(outputs) == ["lost", "lost", "lost", "won"]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


@pytest.mark.parametrize("level", LEVELS)
def test_write_waiting_on_lease_fails(
    app: Flask, db: VersionedSQLAlchemy, Doc: Any, admin: sa.Connection, level: str
) -> None:
    """A write that waits on a lease being taken fails once the lease commits."""
    bob, bob_pid = _session(db, level)
    bob_doc: Any = bob.get(Doc, 1)  # bob's snapshot starts before the lease exists
    alice, _ = _session(db)
    with acting_as("alice"):
        cast(Any, alice.get(Doc, 1)).lease(commit=False)

    def write() -> None:
        with acting_as("bob"):
            bob_doc.title = "bob"
            bob.commit()

    writer = _Thread(app, write)
    _wait_until_waiting(admin, bob_pid)
    alice.commit()
    with pytest.raises(Exception) as info:
        writer.join()
    error = info.value
    if level == "READ COMMITTED":
        assert isinstance(error, RecordLeasedError)
    else:
        assert isinstance(error, RecordLeasedError) or is_retryable(error)
    bob.rollback()
    assert cast(Any, db.session.get(Doc, 1)).title == "t1"
    alice.close()
    bob.close()


@pytest.mark.parametrize("level", LEVELS)
def test_lease_waiting_on_write(
    app: Flask, db: VersionedSQLAlchemy, Doc: Any, admin: sa.Connection, level: str
) -> None:
    """A lease that waits on a write gets the record after the write commits (or a
    serialization failure at REPEATABLE READ / SERIALIZABLE): never both over each other."""
    alice, alice_pid = _session(db, level)
    alice_doc = alice.get(Doc, 1)
    assert alice_doc is not None
    bob, _ = _session(db)
    with acting_as("bob"):
        cast(Any, bob.get(Doc, 1)).title = "bob"
        bob.flush()

    def take() -> Any:
        with acting_as("alice"):
            return alice_doc.lease()

    taker = _Thread(app, take)
    _wait_until_waiting(admin, alice_pid)
    bob.commit()
    try:
        lease = taker.join()
    except Exception as error:
        assert level != "READ COMMITTED" and is_retryable(error), error
    else:
        assert lease.user_id == "alice"
    assert cast(Any, db.session.get(Doc, 1)).title == "bob"
    alice.close()
    bob.close()


@pytest.mark.parametrize("level", LEVELS)
def test_bulk_waiting_on_lease_fails(
    app: Flask, db: VersionedSQLAlchemy, Doc: Any, admin: sa.Connection, level: str
) -> None:
    """A bulk UPDATE that waits on a lease being taken fails once the lease commits."""
    bob, bob_pid = _session(db, level)
    alice, _ = _session(db)
    with acting_as("alice"):
        cast(Any, alice.get(Doc, 2)).lease(commit=False)

    def write() -> None:
        with acting_as("bob"):
            bob.execute(sa.update(Doc).values(title="all"))
            bob.commit()

    writer = _Thread(app, write)
    _wait_until_waiting(admin, bob_pid)
    alice.commit()
    with pytest.raises(Exception) as info:
        writer.join()
    if level == "READ COMMITTED":
        assert isinstance(info.value, RecordLeasedError)
    else:
        assert isinstance(info.value, RecordLeasedError) or is_retryable(info.value)
    bob.rollback()
    assert cast(Any, db.session.get(Doc, 1)).title == "t1"
    alice.close()
    bob.close()
