"""Reliability under real concurrency (issue 3 item 9): no lost updates, contiguous
history, dead holders, failed blocks."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as, history_class


@pytest.fixture()
def Account(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A Versioned counter row."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_rel_account"
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add(Account(id=1, n=0))
    db.session.commit()
    yield Account


def _assert_contiguous_history(db: Any, Account: Any, total: int) -> None:
    history: Any = history_class(Account)
    rows = (
        db.session.execute(sa.select(history).where(history.id == 1).order_by(history.version))
        .scalars()
        .all()
    )
    assert [row.version for row in rows] == list(range(total))
    # Each history row holds the value before its change: the changes chained.
    assert [row.n for row in rows] == list(range(total))
    assert all("lock" in row.change_info for row in rows)


def test_threads_lose_no_update(app: Any, db: Any, Account: Any, new_session: Any) -> None:
    """Four threads x 25 locked increments: n == 100 and history is contiguous."""
    per_thread = 25

    def work(name: str) -> None:
        session = new_session()
        acct = session.get(Account, 1)
        for _ in range(per_thread):
            with acting_as(name), acct.lock():
                acct.n += 1

    workers = [Worker(app, functools.partial(work, f"t{i}")) for i in range(4)]
    for worker in workers:
        worker.join(60)
    acct = db.session.get(Account, 1)
    db.session.refresh(acct)
    assert (acct.n, acct.version) == (4 * per_thread, 4 * per_thread)
    _assert_contiguous_history(db, Account, 4 * per_thread)


def test_processes_lose_no_update(database_url: str, raw_engine: Any) -> None:
    """Three processes x 20 locked increments: n == 60, history contiguous."""
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    try:
        from lock_tally_worker import Base, Tally
    finally:
        sys.path.remove(str(here))
    Base.metadata.create_all(raw_engine)
    try:
        with raw_engine.begin() as conn:
            conn.execute(sa.insert(Tally).values(id=1, n=0, version=0))
        root = str(here.resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, str(here)])}
        procs = [
            subprocess.Popen(
                [sys.executable, str(here / "lock_tally_worker.py"), database_url, "20", f"p{i}"],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        history = Tally.__history_mapper__.local_table
        with raw_engine.connect() as conn:
            n, version = conn.execute(sa.select(Tally.n, Tally.version)).one()
            rows = conn.execute(
                sa.select(history.c.version, history.c.n, history.c.change_info).order_by(
                    history.c.version
                )
            ).all()
        assert (n, version) == (60, 60)
        assert [r.version for r in rows] == list(range(60))
        assert [r.n for r in rows] == list(range(60))
        assert {r.change_info["lock"]["user_id"] for r in rows} == {"p0", "p1", "p2"}
    finally:
        Base.metadata.drop_all(raw_engine)


def test_killing_the_holder_lets_the_waiter_proceed(
    app: Any, db: Any, Account: Any, new_session: Any, admin: Any
) -> None:
    """pg_terminate_backend of the holder: the waiter gets the lock; no partial history."""
    holder = new_session()
    holder_pid = backend_pid(holder)
    held = holder.get(Account, 1)
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    mine = waiter.get(Account, 1)
    seen: list[int] = []

    def wait() -> None:
        with acting_as("survivor"), mine.lock(timeout=10):
            seen.append(mine.n)
            mine.n += 1

    lock_block = held.lock()
    lock_block.__enter__()
    held.n = 50
    holder.flush()  # the holder's history row exists only in its transaction
    worker = Worker(app, wait)
    wait_until_waiting(admin, waiter_pid)
    admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": holder_pid})
    worker.join()
    with pytest.raises(sa.exc.DBAPIError):
        lock_block.__exit__(None, None, None)
    assert seen == [0]
    history: Any = history_class(Account)
    rows = db.session.execute(sa.select(history)).scalars().all()
    assert [(r.version, r.n, r.change_info["lock"]["user_id"]) for r in rows] == [
        (0, 0, "survivor")
    ]
    assert db.session.get(Account, 1).n == 1


def test_exception_in_block_leaves_no_change_and_no_history(
    db: Any, Account: Any, new_session: Any
) -> None:
    """An exception inside lock(): no change and no history row, seen from elsewhere."""
    acct = db.session.get(Account, 1)
    with pytest.raises(LookupError), acct.lock():
        acct.n = 7
        db.session.flush()
        raise LookupError
    other = new_session()
    assert other.get(Account, 1).n == 0
    assert other.execute(sa.select(history_class(Account))).first() is None
