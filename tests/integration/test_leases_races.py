"""Leases against flushes and bulk statements of other sessions, in threads with real
commits (SPEC §4: a write and a concurrent lease() never both succeed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import (
    RecordLeasedError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    suppress_versioning,
)


@pytest.fixture()
def Sheet(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A leased model with a unique code and an untracked counter; row 1 committed."""

    class Sheet(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_sheet"
        __chrononaut_leases__ = True
        __chrononaut_untracked__ = ["opens"]
        id = sa.Column(sa.Integer, primary_key=True)
        code = sa.Column(sa.String(10), unique=True)
        body = sa.Column(sa.String(20))
        opens = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add(Sheet(id=1, code="c1", body="a"))
    db.session.commit()
    yield Sheet


def _lease_in_thread(db: VersionedSQLAlchemy, Sheet: Any, out: list[Any]) -> threading.Thread:
    from flask import current_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> None:
        with app.app_context():
            session = db.session.session_factory()
            try:
                with acting_as("alice"):
                    out.append(cast(Any, session.get(Sheet, 1)).lease())
            except Exception as error:  # handed back to the test thread
                out.append(error)
            finally:
                session.close()

    return threading.Thread(target=run)


def _waiting(db: VersionedSQLAlchemy) -> bool:
    with db.engine.connect() as conn:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        return bool(conn.execute(sa.text(sql)).scalar())


def _wait_until_blocked(db: VersionedSQLAlchemy) -> None:
    deadline = time.monotonic() + 10
    while not _waiting(db):
        assert time.monotonic() < deadline, "the lease never waited on the row lock"
        time.sleep(0.02)


def test_lease_waits_for_unique_conflict_upsert(db: VersionedSQLAlchemy, Sheet: Any) -> None:
    """A lease taken while an upsert on a unique column holds the row waits, then wins."""
    stmt = pg_insert(Sheet).values(code="c1", body="bob")
    stmt = stmt.on_conflict_do_update(
        index_elements=[Sheet.code], set_={"body": stmt.excluded.body}
    )
    with acting_as("bob"):
        db.session.execute(stmt)
    out: list[Any] = []
    thread = _lease_in_thread(db, Sheet, out)
    thread.start()
    _wait_until_blocked(db)
    db.session.commit()
    thread.join(10)
    assert out and out[0].user_id == "alice"
    cast(Any, db.session.get(Sheet, 1)).body = "bob again"
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()


def test_untracked_flush_passes_lease(db: VersionedSQLAlchemy, Sheet: Any) -> None:
    """Another user's untracked-only flush of a leased record is not refused."""
    out: list[Any] = []
    thread = _lease_in_thread(db, Sheet, out)
    thread.start()
    thread.join(10)
    cast(Any, db.session.get(Sheet, 1)).opens = 3
    with acting_as("bob"):
        db.session.commit()


def test_suppressed_flush_refused_by_lease(db: VersionedSQLAlchemy, Sheet: Any) -> None:
    """suppress_versioning() does not let another user's flush bypass a lease."""
    out: list[Any] = []
    thread = _lease_in_thread(db, Sheet, out)
    thread.start()
    thread.join(10)
    cast(Any, db.session.get(Sheet, 1)).body = "quiet"
    with acting_as("bob"), suppress_versioning(), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
