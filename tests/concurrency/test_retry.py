"""``chrononaut.retry``: re-running a unit of work after a retryable conflict.

Concurrency is real: threads with their own app context and session, a barrier
to make them collide, PostgreSQL's own deadlock detection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from chrononaut import (
    ChrononautException,
    DeadlockError,
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
)
from chrononaut.retry import is_retryable, retry_on_conflict, retrying

Committed = Callable[[str], list[dict[str, Any]]]


@pytest.fixture()
def Counter(db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned counter with two rows (ids 1 and 2) at ``n = 0``, committed."""

    class Counter(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "counter"
        id = db.Column(db.Integer, primary_key=True)
        n = db.Column(db.Integer, nullable=False)

    db.create_all()
    db.session.add_all([Counter(id=1, n=0), Counter(id=2, n=0)])
    db.session.commit()
    db.session.expunge_all()
    return Counter


def _in_threads(app: Flask, *targets: Callable[[], None]) -> None:
    """Run each target in a thread of its own app context; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            with app.app_context():
                target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def _bump_elsewhere(other: Session, Counter: Any, counter_id: int = 1) -> None:
    """Another session increments the counter and commits."""
    cast(Any, other.get(Counter, counter_id)).n += 1
    other.commit()


def test_stale_write_is_retried(
    app: Flask, db: VersionedSQLAlchemy, Counter: Any, committed: Committed
) -> None:
    """Two threads collide; the loser runs again on fresh data and no update is lost."""
    barrier = threading.Barrier(2, timeout=10)
    retries: list[tuple[int, type[BaseException]]] = []

    @retry_on_conflict(db.session, on_retry=lambda n, e: retries.append((n, type(e))))
    def increment(first: list[bool]) -> None:
        counter = db.session.get(Counter, 1)
        assert counter is not None
        value = counter.n
        if first.pop() if first else False:
            barrier.wait()  # both have read n = 0 before either writes
        counter.n = value + 1

    _in_threads(app, lambda: increment([True]), lambda: increment([True]))
    assert retries == [(1, StaleWriteError)]
    assert committed("SELECT n, version FROM counter WHERE id = 1") == [{"n": 2, "version": 2}]


def test_many_threads_lose_no_update(
    app: Flask, db: VersionedSQLAlchemy, Counter: Any, committed: Committed
) -> None:
    """Three threads incrementing ten times each end at 30 with contiguous history."""

    @retry_on_conflict(db.session, attempts=200, backoff=0.001, max_backoff=0.01)
    def increment() -> None:
        cast(Any, db.session.get(Counter, 1)).n += 1

    def worker() -> None:
        for _ in range(10):
            increment()

    _in_threads(app, worker, worker, worker)
    assert committed("SELECT n, version FROM counter WHERE id = 1") == [{"n": 30, "version": 30}]
    rows = committed("SELECT version, n FROM counter_history WHERE id = 1 ORDER BY version")
    assert rows == [{"version": v, "n": v} for v in range(30)]


def test_deadlock_is_retried(
    app: Flask, db: VersionedSQLAlchemy, Counter: Any, committed: Committed
) -> None:
    """Two threads locking rows in opposite orders: PostgreSQL aborts one, it runs again."""
    barrier = threading.Barrier(2, timeout=10)
    retried: list[BaseException] = []

    def both(first_id: int, second_id: int) -> Callable[[], None]:
        attempts: list[int] = []

        @retry_on_conflict(db.session, on_retry=lambda n, e: retried.append(e))
        def work() -> None:
            attempts.append(1)
            cast(Any, db.session.get(Counter, first_id)).n += 1
            db.session.flush()  # row lock on the first row
            if len(attempts) == 1:
                barrier.wait()
            cast(Any, db.session.get(Counter, second_id)).n += 1
            db.session.flush()

        return work

    _in_threads(app, both(1, 2), both(2, 1))
    assert len(retried) == 1
    assert is_retryable(retried[0])
    assert isinstance(retried[0], (DeadlockError, sa.exc.DBAPIError))
    assert committed("SELECT id, n, version FROM counter ORDER BY id") == [
        {"id": 1, "n": 2, "version": 2},
        {"id": 2, "n": 2, "version": 2},
    ]


def test_gives_up_after_the_last_attempt(
    db: VersionedSQLAlchemy, other: Session, Counter: Any, committed: Committed
) -> None:
    """A conflict on every attempt: ``attempts`` runs, then the last error propagates."""
    calls: list[int] = []
    delays: list[float] = []

    @retry_on_conflict(db.session, attempts=3, sleep=delays.append)
    def increment() -> None:
        calls.append(1)
        counter = db.session.get(Counter, 1)
        assert counter is not None
        _ = counter.n
        _bump_elsewhere(other, Counter)  # someone always gets there first
        counter.n += 1

    with pytest.raises(StaleWriteError) as caught:
        increment()
    assert len(calls) == 3
    assert len(delays) == 2
    assert caught.value.expected_version == 2
    assert committed("SELECT n FROM counter WHERE id = 1") == [{"n": 3}]
    assert db.session.execute(sa.select(sa.literal(1))).scalar() == 1  # usable again


def test_other_errors_propagate_at_once(db: VersionedSQLAlchemy, Counter: Any) -> None:
    """An error a retry can't fix is raised on the first attempt, untouched."""
    calls: list[int] = []

    @retry_on_conflict(db.session)
    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        broken()
    assert calls == [1]


def test_returns_the_function_result(db: VersionedSQLAlchemy, Counter: Any) -> None:
    """The decorated function's return value comes back, after the commit."""

    @retry_on_conflict(db.session)
    def read() -> int:
        counter = db.session.get(Counter, 2)
        assert counter is not None
        counter.n = 7
        return int(counter.id)

    assert read() == 2
    assert cast(Any, db.session.get(Counter, 2)).version == 1


def test_backoff_grows_with_jitter(db: VersionedSQLAlchemy) -> None:
    """Delays double from ``backoff`` up to ``max_backoff``, each half random."""
    delays: list[float] = []

    @retry_on_conflict(db.session, attempts=4, backoff=0.1, max_backoff=0.25, sleep=delays.append)
    def always() -> None:
        raise StaleWriteError("conflict")

    with pytest.raises(StaleWriteError):
        always()
    assert len(delays) == 3
    for delay, cap in zip(delays, (0.1, 0.2, 0.25), strict=True):
        assert cap / 2 <= delay <= cap


def test_iterator_form(db: VersionedSQLAlchemy, other: Session, Counter: Any) -> None:
    """``for attempt in retrying(...): with attempt:`` retries the block."""
    runs = 0
    for attempt in retrying(db.session, sleep=lambda _: None):
        with attempt:
            runs += 1
            counter = db.session.get(Counter, 1)
            assert counter is not None
            _ = counter.n
            if runs == 1:
                _bump_elsewhere(other, Counter)
            counter.n += 10
    assert runs == 2
    assert cast(Any, db.session.get(Counter, 1)).n == 11


def test_attempt_must_be_entered(db: VersionedSQLAlchemy) -> None:
    """Forgetting ``with attempt:`` is reported instead of looping silently."""
    with pytest.raises(ChrononautException, match="with attempt"):
        for _attempt in retrying(db.session):
            pass


def test_nested_use_defers_to_the_outermost(
    db: VersionedSQLAlchemy, other: Session, Counter: Any, committed: Committed
) -> None:
    """An inner retried function neither commits nor retries: the outer one redoes all."""
    calls = {"outer": 0, "inner": 0}
    no_wait: Callable[[float], None] = lambda _: None  # noqa: E731

    @retry_on_conflict(db.session, sleep=no_wait)
    def inner() -> None:
        calls["inner"] += 1
        counter = db.session.get(Counter, 1)
        assert counter is not None
        _ = counter.n
        if calls["inner"] == 1:
            _bump_elsewhere(other, Counter)
        counter.n += 1
        db.session.flush()

    @retry_on_conflict(db.session, sleep=no_wait)
    def outer() -> None:
        calls["outer"] += 1
        cast(Any, db.session.get(Counter, 2)).n += 1
        inner()

    outer()
    assert calls == {"outer": 2, "inner": 2}
    assert committed("SELECT id, n FROM counter ORDER BY id") == [
        {"id": 1, "n": 2},
        {"id": 2, "n": 1},
    ]


def test_refuses_unflushed_changes(db: VersionedSQLAlchemy, Counter: Any) -> None:
    """Changes pending before the unit of work would be rolled back: refused, kept."""
    counter = db.session.get(Counter, 1)
    assert counter is not None
    counter.n = 5

    @retry_on_conflict(db.session)
    def work() -> None:
        pass

    with pytest.raises(ChrononautException, match="unflushed"):
        work()
    assert counter in db.session.dirty


def test_commit_false_retries_the_functions_own_commit(
    db: VersionedSQLAlchemy, other: Session, Counter: Any
) -> None:
    """With ``commit=False`` the function commits; a conflict there is retried too."""
    runs: list[int] = []

    @retry_on_conflict(db.session, commit=False, sleep=lambda _: None)
    def work() -> None:
        runs.append(1)
        counter = db.session.get(Counter, 1)
        assert counter is not None
        _ = counter.n
        if len(runs) == 1:
            _bump_elsewhere(other, Counter)
        counter.n += 1
        db.session.commit()

    work()
    assert len(runs) == 2
    assert cast(Any, db.session.get(Counter, 1)).n == 2


def test_plain_session(db: VersionedSQLAlchemy, other: Session, Counter: Any) -> None:
    """A plain ``Session`` works as well as ``db.session``."""
    session = db.session.session_factory()
    runs: list[int] = []
    try:

        @retry_on_conflict(session, sleep=lambda _: None)
        def work() -> None:
            runs.append(1)
            counter = session.get(Counter, 1)
            assert counter is not None
            _ = counter.n
            if len(runs) == 1:
                _bump_elsewhere(other, Counter)
            counter.n += 1

        work()
    finally:
        session.close()
    assert len(runs) == 2


@pytest.mark.parametrize(
    ("attempts", "backoff", "max_backoff"), [(0, 0.1, 1.0), (2.5, 0.1, 1.0), (2, -1, 1.0)]
)
def test_bad_arguments(
    db: VersionedSQLAlchemy, attempts: Any, backoff: Any, max_backoff: Any
) -> None:
    """Invalid counts and delays are refused when the decorator is made."""
    with pytest.raises(ValueError):
        retry_on_conflict(db.session, attempts=attempts, backoff=backoff, max_backoff=max_backoff)


def test_bad_session_is_type_error() -> None:
    """Something that is not a session is refused when the unit of work starts."""
    with pytest.raises(TypeError):
        next(retrying("db.session"))  # type: ignore[arg-type]


def test_serialization_failure_is_retryable(db: VersionedSQLAlchemy, Counter: Any) -> None:
    """A real serialization failure (REPEATABLE READ) counts as retryable."""
    engine = db.engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as reader:
        reader.execute(sa.text("SELECT n FROM counter WHERE id = 1")).scalar()
        with db.engine.begin() as writer:
            writer.execute(sa.text("UPDATE counter SET n = n + 1 WHERE id = 1"))
        with pytest.raises(sa.exc.DBAPIError) as caught:
            reader.execute(sa.text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    assert is_retryable(caught.value)


def test_plain_errors_are_not_retryable() -> None:
    """Programming errors and integrity errors are not conflicts."""
    assert not is_retryable(ValueError("x"))
    assert not is_retryable(ChrononautException("x"))
    assert is_retryable(StaleWriteError("x"))
    assert is_retryable(DeadlockError("x"))
