"""Every bad argument of SPEC §4 raises the documented error before touching the database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from chrononaut import ChrononautException, advisory_lock, lock_all


@pytest.fixture()
def statements(db: Any, Counter: Any) -> Iterator[list[str]]:
    """SQL statements sent to the app's database after the fixture set up."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    db.session.commit()
    sa.event.listen(db.engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(db.engine, "before_cursor_execute", record)


BAD_LOCK_ARGUMENTS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"mode": "exclusive"}, ValueError),
    ({"mode": "UPDATE"}, ValueError),
    ({"mode": None}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"timeout": -1.5}, ValueError),
    ({"timeout": "1"}, ValueError),
    ({"timeout": True}, ValueError),
    ({"timeout": float("nan")}, ValueError),
    ({"timeout": float("inf")}, ValueError),
    ({"timeout": -float("inf")}, ValueError),
    ({"timeout": Decimal("NaN")}, ValueError),
    ({"timeout": Decimal("Infinity")}, ValueError),
    ({"timeout": Decimal("1e400")}, ValueError),
    ({"nowait": True, "timeout": 1}, ValueError),
    ({"nowait": "yes"}, TypeError),
    ({"commit": None}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_LOCK_ARGUMENTS)
def test_record_lock_rejects_bad_arguments_without_sql(
    db: Any, Counter: Any, statements: list[str], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """record.lock(): ValueError/TypeError before any SQL is sent."""
    rec = db.session.get(Counter, 1)
    statements.clear()
    with pytest.raises(error):
        rec.lock(**kwargs)
    assert statements == []


@pytest.mark.parametrize(("kwargs", "error"), BAD_LOCK_ARGUMENTS)
def test_lock_all_rejects_bad_arguments_without_sql(
    db: Any, Counter: Any, statements: list[str], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """lock_all(): the same argument errors, before any SQL."""
    recs = [db.session.get(Counter, 1), db.session.get(Counter, 2)]
    statements.clear()
    with pytest.raises(error):
        lock_all(recs, **kwargs)
    assert statements == []


BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (2**63, ValueError),
    (-(2**63) - 1, ValueError),
    ((2**31, 0), ValueError),
    ((0, -(2**31) - 1), ValueError),
    (1.5, TypeError),
    (True, TypeError),
    (None, TypeError),
    (b"bytes", TypeError),
    ([1, 2], TypeError),
    ((1, 2, 3), TypeError),
    ((1, "2"), TypeError),
    ((True, 2), TypeError),
]


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
def test_advisory_lock_rejects_bad_keys_without_sql(
    db: Any, statements: list[str], key: Any, error: type[Exception]
) -> None:
    """advisory_lock(): TypeError for other types, ValueError out of range, no SQL."""
    with pytest.raises(error):
        advisory_lock(key)
    assert statements == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scope": "connection"}, ValueError),
        ({"scope": None}, ValueError),
        ({"shared": 1}, TypeError),
        ({"nowait": True, "timeout": 2}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": "soon"}, ValueError),
        ({"session": object()}, TypeError),
        ({"commit": "no"}, TypeError),
    ],
)
def test_advisory_lock_rejects_bad_options_without_sql(
    db: Any, Counter: Any, statements: list[str], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """advisory_lock() and record.advisory_lock(): option errors before any SQL."""
    rec = db.session.get(Counter, 1)
    statements.clear()
    with pytest.raises(error):
        advisory_lock(1, **kwargs)
    if "session" not in kwargs:
        with pytest.raises(error):
            rec.advisory_lock(**kwargs)
    assert statements == []


def _states(db: Any, Counter: Any) -> dict[str, Callable[[], Any]]:
    def transient() -> Any:
        return Counter(id=50)

    def pending() -> Any:
        rec = Counter(id=51)
        db.session.add(rec)
        return rec

    def detached() -> Any:
        rec = db.session.get(Counter, 1)
        db.session.expunge(rec)
        return rec

    def marked_deleted() -> Any:
        rec = db.session.get(Counter, 2)
        db.session.delete(rec)
        return rec

    def flushed_deleted() -> Any:
        rec = db.session.get(Counter, 3)
        db.session.delete(rec)
        db.session.flush()
        return rec

    return {
        "transient": transient,
        "pending": pending,
        "detached": detached,
        "marked_deleted": marked_deleted,
        "flushed_deleted": flushed_deleted,
    }


@pytest.mark.parametrize(
    "state", ["transient", "pending", "detached", "marked_deleted", "flushed_deleted"]
)
def test_lock_rejects_records_without_a_live_row(db: Any, Counter: Any, state: str) -> None:
    """Transient, pending, detached and deleted records: ChrononautException."""
    rec = _states(db, Counter)[state]()
    with pytest.raises(ChrononautException):
        rec.lock()
    with pytest.raises(ChrononautException):
        lock_all([rec])
    with pytest.raises(ChrononautException):
        rec.advisory_lock()
    with pytest.raises(ChrononautException):
        rec.lock_holder()
    db.session.rollback()


def test_lock_all_rejects_non_records(db: Any, Counter: Any) -> None:
    """lock_all() of something that is not a mapped record: TypeError."""
    with pytest.raises(TypeError):
        lock_all([object()])
    with pytest.raises(TypeError):
        lock_all(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lock_all("records")


def test_lock_on_a_non_mapped_object_is_a_type_error(db: Any, Counter: Any) -> None:
    """The mixin's lock() on an object of an unmapped class: TypeError."""
    from chrononaut.locking import LockableMixin

    class Plain(LockableMixin):
        pass

    with pytest.raises(TypeError):
        Plain().lock()


def test_lock_next_rejects_bad_mode_and_commit(db: Any, Counter: Any) -> None:
    """lock_next(): ValueError for a bad mode, TypeError for a non-bool commit."""
    with pytest.raises(ValueError):
        Counter.lock_next(mode="all")
    with pytest.raises(TypeError):
        Counter.lock_next(commit=1)


def test_lock_all_rejects_records_of_two_sessions(db: Any, Counter: Any, new_session: Any) -> None:
    """lock_all() needs one session: records of two sessions raise ChrononautException."""
    mine = db.session.get(Counter, 1)
    theirs = new_session().get(Counter, 2)
    with pytest.raises(ChrononautException, match="one session"):
        lock_all([mine, theirs])


def test_advisory_lock_without_app_context_needs_a_session(app: Any) -> None:
    """Outside an app context and without session=, advisory_lock() says what to pass."""
    caught: list[BaseException] = []

    def run() -> None:
        # A new thread starts without the test's Flask app context.
        try:
            advisory_lock(1)
        except BaseException as error:
            caught.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert len(caught) == 1
    assert isinstance(caught[0], ChrononautException)
    assert "session=" in str(caught[0])


@pytest.mark.parametrize("timeout", [Decimal("1.5"), 1, 0.25])
def test_timeout_accepts_any_real_number(db: Any, Counter: Any, timeout: Any) -> None:
    """A Decimal (or int, float) timeout is a number of seconds like any other."""
    rec = db.session.get(Counter, 1)
    with rec.lock(timeout=timeout):
        rec.n += 1
    with advisory_lock("decimal-timeout", timeout=timeout):
        pass
    assert db.session.get(Counter, 1).n == 1


@pytest.mark.parametrize("timeout", [3_000_000, 10**12, Decimal("1e30")])
def test_timeout_beyond_server_maximum_waits_that_maximum(
    db: Any, Counter: Any, timeout: Any
) -> None:
    """A timeout longer than lock_timeout can hold is taken as that maximum (24.8 days)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append(f"{statement} {parameters}")

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        rec = db.session.get(Counter, 1)
        with rec.lock(timeout=timeout):
            rec.n += 1
        with advisory_lock("huge-timeout", timeout=timeout):
            pass
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert db.session.get(Counter, 1).n == 1
    assert sum("2147483647" in sql for sql in sent) == 2
