"""SPEC §2 ``valid_from`` on ORM bulk statements and upserts, and ``as_of`` after them."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import (
    ChrononautException,
    VersionedSQLAlchemy,
    as_of,
    history_class,
    suppress_versioning,
)


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


REINSERT_FORMS: dict[str, Any] = {
    "parameters": lambda s, U: s.execute(sa.insert(U), [{"id": 1, "name": "b", "email": "b@x"}]),
    "values": lambda s, U: s.execute(sa.insert(U).values(id=1, name="b", email="b@x")),
    "upsert-insert-branch": lambda s, U: s.execute(
        pg_insert(U)
        .values([{"id": 1, "name": "b", "email": "b@x"}])
        .on_conflict_do_update(index_elements=[U.id], set_={"name": "c"})
    ),
}


@pytest.mark.parametrize("form", list(REINSERT_FORMS))
def test_reinsert_in_same_transaction_does_not_overlap(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, form: str
) -> None:
    """A key deleted and inserted again by a bulk INSERT in one transaction begins
    its new version no earlier than the old one ended: as_of() finds one row."""
    make_user(id=1, name="a")
    db.session.execute(sa.select(1))  # the transaction began before the delete
    time.sleep(0.05)
    db.session.delete(db.session.get(User, 1))
    db.session.flush()
    REINSERT_FORMS[form](db.session, User)
    db.session.commit()
    history = cast(Any, history_class(User))
    ended: dt.datetime = db.session.execute(
        sa.select(history.changed).where(history.id == 1)
    ).scalar_one()
    began: dt.datetime = db.session.execute(
        sa.select(User.valid_from).where(User.id == 1)
    ).scalar_one()
    assert began >= ended
    past = as_of(User, ended - dt.timedelta(microseconds=1))
    assert len(db.session.scalars(sa.select(past).where(past.id == 1)).all()) == 1


@pytest.mark.parametrize(
    "statement",
    [
        lambda U: (sa.insert(U), [{"id": 9, "name": "n", "email": "n@x", "version": 5}]),
        lambda U: (
            sa.insert(U).values(id=9, name="n", email="n@x", valid_from=dt.datetime(2000, 1, 1)),
            None,
        ),
        lambda U: (
            pg_insert(U)
            .values([{"id": 9, "name": "n", "email": "n@x", "version": 5}])
            .on_conflict_do_nothing(),
            None,
        ),
    ],
    ids=["parameters-version", "values-valid-from", "upsert-values-version"],
)
def test_insert_of_managed_columns_refused(
    db: VersionedSQLAlchemy, User: Any, statement: Any
) -> None:
    """An INSERT whose rows carry ``version`` or ``valid_from`` is refused."""
    stmt, params = statement(User)
    with pytest.raises(ChrononautException, match="is set by Chrononaut"):
        db.session.execute(stmt, params)
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_insert_of_managed_columns_allowed_when_suppressed(
    db: VersionedSQLAlchemy, User: Any
) -> None:
    """Under ``suppress_versioning()`` an INSERT may carry ``version`` (imports)."""
    with suppress_versioning():
        db.session.execute(sa.insert(User), [{"id": 9, "name": "n", "email": "n@x", "version": 5}])
    db.session.commit()
    assert db.session.scalar(sa.select(User.version)) == 5
