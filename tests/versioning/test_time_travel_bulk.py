"""SPEC §2 ``valid_from`` on ORM bulk statements and upserts, and ``as_of`` after them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import ChrononautException, VersionedSQLAlchemy, as_of


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture()
def users(db: VersionedSQLAlchemy, make_user: Any) -> list[Any]:
    """Two committed users."""
    return [make_user(name="alice"), make_user(name="bob")]


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


def test_bulk_update_then_as_of(db: VersionedSQLAlchemy, User: Any, users: list[Any]) -> None:
    """``as_of`` between the insert and a bulk UPDATE sees the old values."""
    before = _now()
    db.session.execute(sa.update(User).values(name="renamed"))
    db.session.commit()
    Past = as_of(User, before)
    assert sorted(r.name for r in db.session.scalars(sa.select(Past))) == ["alice", "bob"]
    Now = as_of(User, _now())
    assert [r.name for r in db.session.scalars(sa.select(Now))] == ["renamed", "renamed"]


def test_bulk_set_valid_from_refused(db: VersionedSQLAlchemy, User: Any, users: list[Any]) -> None:
    """A bulk ``SET valid_from`` raises before any statement."""
    with pytest.raises(ChrononautException, match="valid_from"):
        db.session.execute(sa.update(User).values(valid_from=_now()))


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


def test_bulk_update_by_primary_key_continues_ranges(
    db: VersionedSQLAlchemy, User: Any, users: list[Any], history_rows: Any
) -> None:
    """An ORM bulk UPDATE by primary key (the two-statement path) continues ranges."""
    first = {u.id: u.valid_from for u in users}
    db.session.execute(sa.update(User), [{"id": u.id, "name": f"n{u.id}"} for u in users])
    db.session.commit()
    rows = history_rows("appuser_history")
    with db.engine.connect() as conn:
        live: dict[Any, Any] = dict(
            conn.execute(sa.text("SELECT id, valid_from FROM appuser")).all()
        )
    assert {r["id"]: r["valid_from"] for r in rows} == first
    assert {r["id"]: r["changed"] for r in rows} == live


def test_volatile_bulk_update_continues_ranges(
    db: VersionedSQLAlchemy, User: Any, users: list[Any], history_rows: Any
) -> None:
    """A bulk UPDATE with a volatile SET (the two-statement path) continues ranges."""
    first = {u.id: u.valid_from for u in users}
    db.session.execute(sa.update(User).values(name=sa.func.md5(sa.cast(sa.func.random(), sa.Text))))
    db.session.commit()
    rows = history_rows("appuser_history")
    with db.engine.connect() as conn:
        live: dict[Any, Any] = dict(
            conn.execute(sa.text("SELECT id, valid_from FROM appuser")).all()
        )
    assert {r["id"]: r["valid_from"] for r in rows} == first
    assert {r["id"]: r["changed"] for r in rows} == live


def test_bulk_delete_ends_the_last_range(
    db: VersionedSQLAlchemy, User: Any, users: list[Any], history_rows: Any
) -> None:
    """A bulk DELETE's history rows cover [valid_from, delete); as_of after it is empty."""
    first = {u.id: u.valid_from for u in users}
    before = _now()
    db.session.execute(sa.delete(User))
    db.session.commit()
    rows = history_rows("appuser_history")
    assert {r["id"]: r["valid_from"] for r in rows} == first
    assert all(r["changed"] >= before for r in rows)
    assert db.session.scalars(sa.select(as_of(User, _now()))).all() == []
    assert len(db.session.scalars(sa.select(as_of(User, before))).all()) == 2


def test_bulk_update_by_primary_key_refuses_valid_from(
    db: VersionedSQLAlchemy, User: Any, users: list[Any]
) -> None:
    """A parameter set of an UPDATE by primary key naming ``valid_from`` is refused."""
    with pytest.raises(ChrononautException, match="valid_from"):
        db.session.execute(sa.update(User), [{"id": users[0].id, "valid_from": _now()}])
