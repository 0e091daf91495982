"""Every feature works with ``pool_size=1, max_overflow=0`` (SPEC §4, "Connection poolers").

The pool's timeout is 2 s: a feature that needed a second connection would
fail with ``sqlalchemy.exc.TimeoutError`` instead of its documented result.
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
    LockError,
    LockNotAvailableError,
    LockTimeoutError,
    RecordLockedError,
    StaleWriteError,
    VersionedSQLAlchemy,
    acting_as,
    advisory_lock,
    lock_all,
)
from chrononaut.retry import retry_on_conflict

Other = Callable[[], Session]


def _bump_elsewhere(elsewhere: Other, Item: Any, item_id: int = 1) -> None:
    session = elsewhere()
    with acting_as("bob"):
        cast(Any, session.get(Item, item_id)).n += 1
        session.commit()


def test_stale_write_is_explained(
    small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other
) -> None:
    """A stale flush raises StaleWriteError with the changes, not a pool TimeoutError."""
    mine = small_db.session.get(Item, 1)
    assert mine is not None
    _bump_elsewhere(elsewhere, Item)
    mine.n = 10
    with pytest.raises(StaleWriteError) as caught:
        small_db.session.commit()
    assert caught.value.expected_version == 0 and caught.value.current_version == 1
    assert [c.change_info["user_id"] for c in caught.value.changes] == ["bob"]
    small_db.session.rollback()
    assert cast(Any, small_db.session.get(Item, 1)).n == 1


def test_expect_version_is_explained(
    small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other
) -> None:
    """expect_version() of an old version explains the change on the session's connection."""
    _bump_elsewhere(elsewhere, Item)
    mine = small_db.session.get(Item, 1)
    assert mine is not None
    with pytest.raises(StaleWriteError) as caught:
        mine.expect_version(0)
    assert caught.value.current_version == 1 and len(caught.value.changes) == 1
    small_db.session.rollback()


def test_holders_are_found(small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other) -> None:
    """lock(nowait) names the holder and lock_holder() answers on the one connection."""
    theirs = elsewhere()
    with acting_as("bob"), cast(Any, theirs.get(Item, 1)).lock(commit=False):
        mine = small_db.session.get(Item, 1)
        assert mine is not None
        holder = mine.lock_holder()
        assert holder is not None and holder.user_id == "bob"
        with pytest.raises(RecordLockedError) as caught:
            with mine.lock(nowait=True):
                pass
        assert caught.value.holder is not None and caught.value.holder.user_id == "bob"
        with pytest.raises(LockTimeoutError):
            with mine.lock(timeout=0.1):
                pass
        theirs.rollback()


def test_lock_all(small_db: VersionedSQLAlchemy, Item: Any) -> None:
    """lock_all() locks and commits on the pool of one."""
    items: list[Any] = [small_db.session.get(Item, i) for i in (3, 1, 2)]
    with lock_all(items) as locked:
        for item in locked:
            item.n += 1
    assert [cast(Any, small_db.session.get(Item, i)).n for i in (1, 2, 3)] == [1, 1, 1]


def test_lock_next(small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other) -> None:
    """lock_next() skips a row another server holds."""
    theirs = elsewhere()
    with cast(Any, theirs.get(Item, 1)).lock(commit=False):
        with Item.lock_next(Item.state == "queued") as job:
            assert job is not None and job.id == 2
            job.state = "done"
        theirs.rollback()


def test_bulk_statements(small_db: VersionedSQLAlchemy, Item: Any) -> None:
    """An ORM bulk UPDATE writes history on the pool of one."""
    small_db.session.execute(sa.update(Item).where(Item.id <= 2).values(n=Item.n + 5))
    small_db.session.commit()
    count = small_db.session.execute(sa.text("SELECT count(*) FROM fleet_item_history")).scalar()
    assert count == 2


def test_bulk_update_by_primary_key_with_a_stale_version(
    small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other
) -> None:
    """A bulk UPDATE pinned to an old version is a StaleWriteError on the pool of one."""
    _bump_elsewhere(elsewhere, Item)
    with pytest.raises(StaleWriteError):
        small_db.session.execute(sa.update(Item), [{"id": 1, "version": 0, "n": 50}])
    small_db.session.rollback()


def test_retries(
    small_app: Flask, small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other
) -> None:
    """retry_on_conflict re-runs after a stale write on the pool of one."""
    attempts: list[int] = []

    @retry_on_conflict(small_db.session, attempts=3, backoff=0.001)
    def increment() -> None:
        item = small_db.session.get(Item, 1)
        assert item is not None
        attempts.append(item.version)
        if len(attempts) == 1:
            _bump_elsewhere(elsewhere, Item)
        item.n += 1

    increment()
    assert attempts == [0, 1]
    small_db.session.remove()
    assert cast(Any, small_db.session.get(Item, 1)).n == 2


def test_transaction_advisory_lock(
    small_db: VersionedSQLAlchemy, Item: Any, elsewhere: Other
) -> None:
    """Transaction-scope advisory locks and their holders work on the pool of one."""
    theirs = elsewhere()
    with acting_as("bob"), advisory_lock("pool-one", session=theirs, commit=False):
        with pytest.raises(LockNotAvailableError) as caught:
            with advisory_lock("pool-one", nowait=True):
                pass
        assert caught.value.holder is not None and caught.value.holder.user_id == "bob"
        theirs.rollback()
    with advisory_lock("pool-one", nowait=True):
        pass


def test_session_scope_lock_says_it_needs_a_second_connection(
    small_db: VersionedSQLAlchemy, Item: Any
) -> None:
    """Session scope with the only connection in use: a clear LockError at once."""
    small_db.session.get(Item, 1)
    with pytest.raises(LockError, match="connection of its own"):
        with advisory_lock("needs-two", scope="session"):
            pass
    small_db.session.rollback()


def test_four_threads_on_a_pool_of_four(database_url: str) -> None:
    """Four threads on a pool of four all get StaleWriteError, never TimeoutError."""
    from sqlalchemy.orm import sessionmaker

    from chrononaut import Versioned, versioned_session

    engine = sa.create_engine(database_url, pool_size=4, max_overflow=0, pool_timeout=2)

    class Base(sa.orm.DeclarativeBase):
        metadata = sa.MetaData()

    class Row(Base, Versioned):
        __tablename__ = "fleet_four"
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False)

    Base.metadata.create_all(engine)
    maker = versioned_session(sessionmaker(engine))
    with maker() as setup:
        setup.add(Row(id=1, n=0))
        setup.commit()
    barrier = threading.Barrier(4, timeout=10)
    results: list[str] = []

    def work() -> None:
        with maker() as session:
            row: Any = session.get(Row, 1)  # n is a plain Column, not Mapped[int]
            assert row is not None
            barrier.wait()
            row.n += 1
            try:
                session.commit()
                results.append("ok")
            except StaleWriteError:
                results.append("stale")
            except Exception as error:  # recorded for the assertion below
                results.append(type(error).__name__)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(results) == ["ok", "stale", "stale", "stale"]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
