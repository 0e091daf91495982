"""``lock_all()``: one deterministic order, all-or-nothing attempts (SPEC §4)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import DeadlockError, LockTimeoutError, RecordLockedError, acting_as, lock_all


def test_locks_every_record_refreshes_and_commits(db: Any, Counter: Any, new_session: Any) -> None:
    """Every row is locked and refreshed; the block commits on exit."""
    recs = [db.session.get(Counter, i) for i in (3, 1, 2)]
    writer = new_session()
    writer.get(Counter, 3).n = 30
    writer.commit()
    others = [new_session().get(Counter, i) for i in (1, 2, 3)]
    with lock_all(recs) as locked:
        assert [r.id for r in locked] == [1, 2, 3]
        assert recs[0].n == 30
        for other in others:
            with pytest.raises(RecordLockedError), other.lock(nowait=True):
                pass
        for rec in recs:
            rec.n += 1
    check = new_session()
    assert [check.get(Counter, i).n for i in (1, 2, 3)] == [1, 1, 31]


def test_locks_in_primary_key_order_whatever_the_given_order(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """Asked for [3, 1], lock_all waits on 1 before it has touched 3."""
    holder = new_session()
    held = holder.get(Counter, 1)
    waiter = new_session()
    pid = backend_pid(waiter)
    mine = [waiter.get(Counter, 3), waiter.get(Counter, 1)]

    def lock_them() -> None:
        with lock_all(mine):
            pass

    with held.lock():
        worker = Worker(app, lock_them)
        wait_until_waiting(admin, pid)
        # Row 3 comes after row 1, so it is not locked yet.
        assert new_session().get(Counter, 3).lock_holder() is None
    worker.join()


def test_opposite_orders_deadlock_without_lock_all(
    app: Any, db: Any, Counter: Any, new_session: Any
) -> None:
    """Control: nested lock() in opposite orders deadlocks (DeadlockError for one)."""
    outcomes = _opposite_orders(app, Counter, new_session, use_lock_all=False)
    assert sorted(outcomes) == ["deadlock", "ok"]


def test_opposite_orders_do_not_deadlock_with_lock_all(
    app: Any, db: Any, Counter: Any, new_session: Any
) -> None:
    """The same two callers through lock_all() both succeed."""
    outcomes = _opposite_orders(app, Counter, new_session, use_lock_all=True)
    assert outcomes == ["ok", "ok"]


def _opposite_orders(app: Any, Counter: Any, new_session: Any, *, use_lock_all: bool) -> list[str]:
    sessions = [new_session(), new_session()]
    for session in sessions:
        # Detect the deadlock fast (superuser setting; the test server allows it).
        session.execute(sa.text("SET deadlock_timeout = '50ms'"))
        session.commit()
    barrier = threading.Barrier(2, timeout=5)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(session: Any, order: tuple[int, int]) -> None:
        recs = [session.get(Counter, i) for i in order]
        try:
            if use_lock_all:
                barrier.wait()
                with lock_all(recs):
                    pass
            else:
                with recs[0].lock():
                    # Both hold their first row before either asks for the second.
                    barrier.wait()
                    with recs[1].lock():
                        pass
            result = "ok"
        except DeadlockError:
            result = "deadlock"
        with lock:
            outcomes.append(result)

    workers = [
        Worker(app, lambda: run(sessions[0], (1, 2))),
        Worker(app, lambda: run(sessions[1], (2, 1))),
    ]
    for worker in workers:
        worker.join()
    return outcomes


def test_nowait_is_all_or_nothing(db: Any, Counter: Any, new_session: Any) -> None:
    """nowait: one locked row fails the call, no row stays locked, transaction usable."""
    held = new_session().get(Counter, 2)
    recs = [db.session.get(Counter, i) for i in (1, 2, 3)]
    with acting_as("gina"), held.lock():
        with pytest.raises(RecordLockedError) as caught, lock_all(recs, nowait=True):
            pass
        assert caught.value.holder is not None
        assert caught.value.holder.user_id == "gina"
        assert "Counter(2)" in str(caught.value)
        # Row 1 was locked by the failed call's savepoint and released with it.
        with new_session().get(Counter, 1).lock(nowait=True):
            pass
        assert db.session.execute(sa.text("SELECT 1")).scalar() == 1
    db.session.rollback()


def test_timeout_raises_and_restores_lock_timeout(db: Any, Counter: Any, new_session: Any) -> None:
    """timeout: LockTimeoutError; lock_timeout is back to its previous value."""
    held = new_session().get(Counter, 3)
    recs = [db.session.get(Counter, i) for i in (1, 3)]
    with held.lock():
        with pytest.raises(LockTimeoutError), lock_all(recs, timeout=0.1):
            pass
    assert db.session.execute(sa.text("SHOW lock_timeout")).scalar() == "0"
    with lock_all(recs, timeout=1, commit=False):
        assert db.session.execute(sa.text("SHOW lock_timeout")).scalar() == "0"
    db.session.rollback()


def test_holders_are_visible_for_every_locked_row(db: Any, Counter: Any, new_session: Any) -> None:
    """Other sessions see the acting user on each row locked by lock_all()."""
    recs = [db.session.get(Counter, i) for i in (1, 2, 3)]
    watcher = new_session()
    with acting_as("hank"), lock_all(recs):
        holders = [watcher.get(Counter, i).lock_holder() for i in (1, 2, 3)]
    assert [h.user_id if h else None for h in holders] == ["hank", "hank", "hank"]


def test_empty_list_is_a_plain_block(db: Any, Counter: Any, new_session: Any) -> None:
    """lock_all([]) locks nothing and still commits on exit."""
    rec = db.session.get(Counter, 1)
    locked: list[Any]
    with lock_all([]) as locked:
        assert locked == []
        rec.n = 12
    assert new_session().get(Counter, 1).n == 12
