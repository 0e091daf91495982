"""SPEC §2/§5 under concurrency: ORM bulk statements racing ORM flushes and
inserts of other transactions (threads, separate connections, real commits)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from chrononaut import StaleWriteError, Versioned, VersionedSQLAlchemy

ROWS = 5
ROUNDS = 15


@pytest.fixture()
def Counter(db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned counter row, tables created."""

    class Counter(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "counter"
        id = db.Column(db.Integer, primary_key=True)
        n = db.Column(db.Integer, nullable=False, default=0)

    db.create_all()
    return Counter


def _in_app(app: Flask, target: Any, *args: Any) -> threading.Thread:
    """A thread running ``target(*args)`` inside an app context of its own."""

    def run() -> None:
        with app.app_context():
            target(*args)

    return threading.Thread(target=run)


def _seed(db: VersionedSQLAlchemy, Counter: Any) -> None:
    db.session.add_all([Counter(id=i, n=0) for i in range(1, ROWS + 1)])
    db.session.commit()


def _bulk_increments(factory: Any, Counter: Any, errors: list[BaseException]) -> None:
    """ROUNDS bulk statements adding 1 to every row, each in its own transaction."""
    try:
        for _ in range(ROUNDS):
            with factory() as session:
                session.execute(sa.update(Counter).values(n=Counter.n + 1))
                session.commit()
    except BaseException as exc:
        errors.append(exc)


def _flush_increments(factory: Any, Counter: Any, done: list[int], errors: list[Any]) -> None:
    """ROUNDS ORM read-modify-write cycles per row, retried on StaleWriteError."""
    try:
        for _ in range(ROUNDS):
            for row_id in range(1, ROWS + 1):
                while True:
                    session: Session = factory()
                    try:
                        counter: Any = session.get(Counter, row_id)
                        counter.n = counter.n + 1
                        session.commit()
                        done[0] += 1
                        break
                    except StaleWriteError:
                        session.rollback()
                    finally:
                        session.close()
    except BaseException as exc:
        errors.append(exc)


def test_bulk_update_racing_flushes(db: VersionedSQLAlchemy, Counter: Any, app: Flask) -> None:
    """Bulk UPDATEs and ORM flushes on the same rows: no lost update, contiguous history."""
    _seed(db, Counter)
    factory = db.session.session_factory
    errors: list[BaseException] = []
    done = [0]
    threads = [
        _in_app(app, _bulk_increments, factory, Counter, errors),
        _in_app(app, _flush_increments, factory, Counter, done, errors),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with db.engine.connect() as conn:
        live: dict[int, int] = dict(conn.execute(sa.text("SELECT id, n FROM counter")).all())
        versions: dict[int, int] = dict(
            conn.execute(sa.text("SELECT id, version FROM counter")).all()
        )
        history = conn.execute(
            sa.text("SELECT id, version, n FROM counter_history ORDER BY id, version")
        ).all()
    assert done[0] == ROUNDS * ROWS
    for row_id in range(1, ROWS + 1):
        assert live[row_id] == 2 * ROUNDS  # every increment of both writers arrived
        assert versions[row_id] == 2 * ROUNDS
        mine = [(v, n) for i, v, n in history if i == row_id]
        # one history row per version, each holding the value that version had
        assert mine == [(v, v) for v in range(2 * ROUNDS)]


def test_bulk_delete_racing_flush(db: VersionedSQLAlchemy, Counter: Any, app: Flask) -> None:
    """A bulk DELETE waiting on a flush's row lock records the flushed final state."""
    _seed(db, Counter)
    factory = db.session.session_factory
    writer: Session = factory()
    counter: Any = writer.get(Counter, 1)
    counter.n = 41
    writer.flush()  # holds the row lock, uncommitted
    errors: list[BaseException] = []

    def delete_all() -> None:
        try:
            with factory() as session:
                session.execute(sa.delete(Counter))
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    thread = _in_app(app, delete_all)
    thread.start()
    time.sleep(0.3)
    writer.commit()
    writer.close()
    thread.join(30)
    assert errors == []
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT version, n FROM counter_history WHERE id = 1 ORDER BY version")
        ).all()
    assert [tuple(r) for r in rows] == [(0, 0), (1, 41)]


def test_upsert_of_row_inserted_concurrently(
    db: VersionedSQLAlchemy, Counter: Any, app: Flask
) -> None:
    """An upsert whose update branch hits a row another transaction inserted after the
    statement began raises StaleWriteError and writes nothing."""
    factory = db.session.session_factory
    inserter: Session = factory()
    inserter.add(Counter(id=7, n=1))
    inserter.flush()  # the key is taken, uncommitted
    caught: list[BaseException] = []

    def upsert() -> None:
        session: Session = factory()
        try:
            statement = insert(Counter).values(id=7, n=5)
            statement = statement.on_conflict_do_update(
                index_elements=[Counter.id], set_={"n": statement.excluded.n}
            )
            session.execute(statement)
            session.commit()
        except BaseException as exc:
            caught.append(exc)
            session.rollback()
        finally:
            session.close()

    thread = _in_app(app, upsert)
    thread.start()
    time.sleep(0.3)  # the upsert waits on the uncommitted key
    inserter.commit()
    inserter.close()
    thread.join(30)
    assert len(caught) == 1 and isinstance(caught[0], StaleWriteError)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n, version FROM counter")).all() == [(1, 0)]
        assert conn.execute(sa.text("SELECT count(*) FROM counter_history")).scalar() == 0


def test_upsert_after_concurrent_commit_is_captured(db: VersionedSQLAlchemy, Counter: Any) -> None:
    """A row committed before the upsert began takes the update branch with history."""
    _seed(db, Counter)
    statement = insert(Counter).values(id=1, n=9)
    statement = statement.on_conflict_do_update(
        index_elements=[Counter.id], set_={"n": statement.excluded.n}
    )
    db.session.execute(statement)
    db.session.commit()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n, version FROM counter WHERE id = 1")).one() == (9, 1)
        rows = conn.execute(sa.text("SELECT version, n FROM counter_history")).all()
    assert [tuple(r) for r in rows] == [(0, 0)]


def _flush_until_deleted(
    factory: Any, Counter: Any, committed: dict[int, int], errors: list[Any]
) -> None:
    """ORM read-modify-write cycles on every row until a concurrent DELETE removed it
    (retried on StaleWriteError); ``committed`` counts each row's committed increments."""
    try:
        alive = set(range(1, ROWS + 1))
        for _ in range(ROUNDS * 4):
            for row_id in sorted(alive):
                while True:
                    session: Session = factory()
                    try:
                        counter: Any = session.get(Counter, row_id)
                        if counter is None:
                            alive.discard(row_id)
                            break
                        counter.n = counter.n + 1
                        session.commit()
                        committed[row_id] += 1
                        break
                    except StaleWriteError:
                        session.rollback()
                    finally:
                        session.close()
            if not alive:
                return
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("mode", ["auto", "fetch"])
def test_bulk_delete_racing_flushes(
    db: VersionedSQLAlchemy, Counter: Any, app: Flask, mode: str
) -> None:
    """A bulk DELETE amid ORM flushes on the same rows: every committed increment is in
    history, versions contiguous, the last row the deleted state ("auto": the DELETE
    ... RETURNING form; "fetch": the lock-first form)."""
    _seed(db, Counter)
    factory = db.session.session_factory
    errors: list[BaseException] = []
    committed = {row_id: 0 for row_id in range(1, ROWS + 1)}

    def delete_all() -> None:
        try:
            while sum(committed.values()) < ROWS * 3:
                time.sleep(0.005)
            with factory() as session:
                statement = sa.delete(Counter).where(Counter.id <= ROWS)
                session.execute(statement.execution_options(synchronize_session=mode))
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        _in_app(app, _flush_until_deleted, factory, Counter, committed, errors),
        _in_app(app, delete_all),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM counter")).scalar() == 0
        history = conn.execute(
            sa.text("SELECT id, version, n, change_info FROM counter_history ORDER BY id, version")
        ).all()
    for row_id in range(1, ROWS + 1):
        mine = [(v, n) for i, v, n, _ in history if i == row_id]
        # one row per version, each holding that version's value; the last is the
        # final state, holding every committed increment
        assert mine == [(v, v) for v in range(committed[row_id] + 1)]
        infos = [info for i, _, _, info in history if i == row_id]
        assert [info.get("deleted") for info in infos] == [None] * committed[row_id] + [True]
