"""SPEC §2 ``valid_from`` on ORM bulk statements and upserts, and ``as_of`` after them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import ChrononautException, VersionedSQLAlchemy, as_of

WIRED_AT_MERGE = pytest.mark.xfail(
    reason="valid_from in bulk statements: wired at merge", strict=False
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture()
def users(db: VersionedSQLAlchemy, make_user: Any) -> list[Any]:
    """Two committed users."""
    return [make_user(name="alice"), make_user(name="bob")]


@WIRED_AT_MERGE
def test_bulk_update_continues_ranges(
    db: VersionedSQLAlchemy, User: Any, users: list[Any], history_rows: Any
) -> None:
    """An ORM bulk UPDATE ends each old version at the new one's ``valid_from``."""
    first = {u.id: u.valid_from for u in users}
    db.session.execute(sa.update(User).values(name="renamed"))
    db.session.commit()
    rows = history_rows("appuser_history")
    with db.engine.connect() as conn:
        live: dict[int, Any] = dict(
            conn.execute(sa.text("SELECT id, valid_from FROM appuser")).all()
        )
    assert {r["id"]: r["valid_from"] for r in rows} == first
    assert {r["id"]: r["changed"] for r in rows} == live


@WIRED_AT_MERGE
def test_bulk_update_then_as_of(db: VersionedSQLAlchemy, User: Any, users: list[Any]) -> None:
    """``as_of`` between the insert and a bulk UPDATE sees the old values."""
    before = _now()
    db.session.execute(sa.update(User).values(name="renamed"))
    db.session.commit()
    Past = as_of(User, before)
    assert sorted(r.name for r in db.session.scalars(sa.select(Past))) == ["alice", "bob"]
    Now = as_of(User, _now())
    assert [r.name for r in db.session.scalars(sa.select(Now))] == ["renamed", "renamed"]


@WIRED_AT_MERGE
def test_bulk_set_valid_from_refused(db: VersionedSQLAlchemy, User: Any, users: list[Any]) -> None:
    """A bulk ``SET valid_from`` raises before any statement."""
    with pytest.raises(ChrononautException, match="valid_from"):
        db.session.execute(sa.update(User).values(valid_from=_now()))


@WIRED_AT_MERGE
def test_upsert_set_valid_from_refused(
    db: VersionedSQLAlchemy, User: Any, users: list[Any]
) -> None:
    """An upsert's ``set_`` naming ``valid_from`` raises before any statement."""
    statement = pg_insert(User).values(id=users[0].id, name="x", email="x@x")
    statement = statement.on_conflict_do_update(
        index_elements=[User.id], set_={"valid_from": _now()}
    )
    with pytest.raises(ChrononautException, match="valid_from"):
        db.session.execute(statement)


@WIRED_AT_MERGE
def test_upsert_update_branch_continues_ranges(
    db: VersionedSQLAlchemy, User: Any, users: list[Any], history_rows: Any
) -> None:
    """An upsert row taking the update branch starts a new range where the old ended."""
    first = users[0].valid_from
    statement = pg_insert(User).values(id=users[0].id, name="upserted", email="u@x")
    statement = statement.on_conflict_do_update(
        index_elements=[User.id], set_={"name": statement.excluded.name}
    )
    db.session.execute(statement)
    db.session.commit()
    (row,) = history_rows("appuser_history")
    with db.engine.connect() as conn:
        live = conn.execute(
            sa.text("SELECT valid_from FROM appuser WHERE id = :i"), {"i": users[0].id}
        ).scalar()
    assert row["valid_from"] == first and row["changed"] == live
