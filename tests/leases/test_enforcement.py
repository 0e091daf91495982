"""Leases enforced on every write: flushes, bulk statements, upserts (SPEC §4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from chrononaut import (
    RecordLeasedError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    history_class,
    suppress_versioning,
)
from chrononaut._leases import LEASE_TABLE


@pytest.fixture()
def alice_leases(db: VersionedSQLAlchemy, Doc: Any) -> Callable[..., Any]:
    """Let alice lease records of Doc (committed) from a session of her own."""

    def take(*ids: int) -> list[Any]:
        session = db.session.session_factory()
        try:
            with acting_as("alice"):
                return [cast(Any, session.get(Doc, i)).lease() for i in ids]
        finally:
            session.close()

    return take


def _title(db: VersionedSQLAlchemy, id_: int) -> str:
    with db.engine.connect() as conn:
        return str(conn.execute(sa.text(f"SELECT title FROM lease_doc WHERE id = {id_}")).scalar())


def _history_count(db: VersionedSQLAlchemy, Doc: Any) -> int:
    with db.engine.connect() as conn:
        table = cast(Any, history_class(Doc)).__table__
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_other_users_flush_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """Bob's change of a record Alice leases fails with her lease; nothing is written."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    doc.title = "bob's"
    with acting_as("bob"), pytest.raises(RecordLeasedError) as info:
        db.session.commit()
    db.session.rollback()
    assert info.value.lease is not None and info.value.lease.user_id == "alice"
    assert info.value.lease.token is None
    assert _title(db, 1) == "t1" and _history_count(db, Doc) == 0


def test_nobody_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """A change on behalf of nobody is refused too."""
    alice_leases(1)
    cast(Any, db.session.get(Doc, 1)).title = "x"
    with pytest.raises(RecordLeasedError):
        db.session.commit()


def test_holder_writes_with_change_info(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The holder's change goes through and its history row carries change_info["lease"]."""
    (lease,) = alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.title = "alice's"
        db.session.commit()
    info = doc.versions()[-1].change_info["lease"]
    assert info["user_id"] == "alice"
    assert dt.datetime.fromisoformat(info["expires_at"]) == lease.expires_at
    assert set(info) == {"user_id", "acquired_at", "expires_at"}


def test_non_holder_change_info_has_no_lease(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """A change of an unleased record carries no change_info["lease"]."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("bob"):
        doc.title = "free"
        db.session.commit()
    assert "lease" not in doc.versions()[-1].change_info


def test_untracked_change_not_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """Changing only untracked columns of a leased record is allowed."""
    alice_leases(1)
    cast(Any, db.session.get(Doc, 1)).views = 3
    with acting_as("bob"):
        db.session.commit()


def test_hidden_change_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """Changing a hidden column of a leased record is refused."""
    alice_leases(1)
    cast(Any, db.session.get(Doc, 1)).secret = "pw"
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()


def test_delete_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """Deleting a record someone else leases is refused."""
    alice_leases(1)
    db.session.delete(db.session.get(Doc, 1))
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_holder_delete_deletes_lease(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The holder deleting the record deletes the lease too."""
    alice_leases(1)
    db.session.delete(db.session.get(Doc, 1))
    with acting_as("alice"):
        db.session.commit()
    assert db.session.execute(sa.text(f"SELECT count(*) FROM {LEASE_TABLE}")).scalar() == 0


def test_suppress_versioning_does_not_bypass(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """suppress_versioning() does not switch leases off."""
    alice_leases(1)
    cast(Any, db.session.get(Doc, 1)).title = "x"
    with acting_as("bob"), suppress_versioning(), pytest.raises(RecordLeasedError):
        db.session.commit()


def test_lowest_pk_lease_reported(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """With several leased records in one flush the lease of the lowest key is raised."""
    alice_leases(3, 2)
    docs: list[Any] = [db.session.get(Doc, i) for i in (1, 2, 3)]
    for doc in docs:
        doc.title = "bulk"
    with acting_as("bob"), pytest.raises(RecordLeasedError, match=r"Doc\(2\)"):
        db.session.commit()


def test_expired_lease_not_enforced(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An expired lease does not refuse anything."""
    alice_leases(1)
    db.session.execute(sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = now()"))
    db.session.commit()
    cast(Any, db.session.get(Doc, 1)).title = "late"
    with acting_as("bob"):
        db.session.commit()
    assert _title(db, 1) == "late"


def test_takeover_recorded(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """After a forced takeover the new holder's next change records took_over_from."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("bob"):
        doc.lease(force=True)
        doc.title = "bob took over"
        db.session.commit()
    assert doc.versions()[-1].change_info["lease"]["took_over_from"] == "alice"


def test_old_holder_refused_after_takeover(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """Alice's write after Bob took her lease over is refused."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.lease()
    other = new_session()
    with acting_as("bob"):
        cast(Any, other.get(Doc, 1)).lease(force=True)
    doc.title = "alice again"
    with acting_as("alice"), pytest.raises(RecordLeasedError):
        db.session.commit()


def test_bulk_update_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An ORM bulk UPDATE touching a leased record is refused before it runs."""
    alice_leases(2)
    with acting_as("bob"), pytest.raises(RecordLeasedError, match=r"Doc\(2\)"):
        db.session.execute(sa.update(Doc).where(Doc.id >= 1).values(title="all"))
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_bulk_update_by_pk_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An ORM bulk UPDATE by primary key parameters is refused too."""
    alice_leases(2)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Doc), [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}])


def test_bulk_untracked_allowed(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """A bulk UPDATE of untracked columns only is not refused."""
    alice_leases(2)
    with acting_as("bob"):
        db.session.execute(sa.update(Doc).values(views=Doc.views + 1))
        db.session.commit()


def test_bulk_delete_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An ORM bulk DELETE of a leased record is refused."""
    alice_leases(3)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.delete(Doc).where(Doc.id == 3))


def test_bulk_by_holder_allowed(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The holder's bulk UPDATE goes through."""
    alice_leases(1, 2)
    with acting_as("alice"):
        db.session.execute(sa.update(Doc).where(Doc.id <= 2).values(title="mine"))
        db.session.commit()
    assert _title(db, 2) == "mine"


def test_upsert_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An upsert that would update a leased record is refused."""
    alice_leases(1)
    stmt = pg_insert(Doc).values(id=1, title="up", views=0)
    stmt = stmt.on_conflict_do_update(index_elements=[Doc.id], set_={"title": "up"})
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(stmt)
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_upsert_with_parameters_refused(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """An ORM bulk upsert with a parameter list is refused for a leased key."""
    alice_leases(1)
    stmt = pg_insert(Doc)
    stmt = stmt.on_conflict_do_update(index_elements=[Doc.id], set_={"title": stmt.excluded.title})
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(stmt, [{"id": 1, "title": "u", "views": 0}])


def test_plain_model_sends_no_lease_statement(
    db: VersionedSQLAlchemy, Plain: Any, statements: list[str]
) -> None:
    """Models without leases send no extra statement (flush and bulk)."""
    statements.clear()
    with acting_as("bob"):
        cast(Any, db.session.get(Plain, 1)).title = "x"
        db.session.commit()
        db.session.execute(sa.update(Plain).where(Plain.id == 2).values(title="y"))
        db.session.commit()
    assert not [s for s in statements if LEASE_TABLE in s]


def test_leased_flush_one_statement_when_known(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any], statements: list[str]
) -> None:
    """A holder whose transaction knows the lease pays one lease statement per flush."""
    (lease,) = alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.renew_lease(lease.token, commit=False)
        statements.clear()
        doc.title = "known"
        db.session.flush()
    assert len([s for s in statements if LEASE_TABLE in s]) == 1
    db.session.commit()


def test_unleased_write_one_statement(
    db: VersionedSQLAlchemy, Doc: Any, statements: list[str]
) -> None:
    """A write of a leased model's free record costs one lease statement per flush."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    statements.clear()
    with acting_as("bob"):
        doc.title = "free"
        db.session.commit()
    assert len([s for s in statements if LEASE_TABLE in s]) == 1


def test_holder_change_info_on_slow_path(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """A holder's change flushed with an INSERT (history written after the flush)
    carries change_info["lease"] too."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.title = "with a new one"
        db.session.add(Doc(id=9, title="new"))
        db.session.commit()
    assert doc.versions()[-1].change_info["lease"]["user_id"] == "alice"


def test_holder_delete_change_info(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The history row of a holder's delete carries change_info["lease"]."""
    alice_leases(2)
    doc = db.session.get(Doc, 2)
    with acting_as("alice"):
        db.session.delete(doc)
        db.session.commit()
    history: Any = history_class(Doc)
    row = db.session.execute(sa.select(history).where(history.id == 2)).scalars().one()
    assert row.change_info["deleted"] is True
    assert row.change_info["lease"]["user_id"] == "alice"


def test_holder_lease_recorded_once(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any], statements: list[str]
) -> None:
    """A holder's second flush in one transaction knows the lease: one statement."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.title = "one"
        db.session.flush()
        statements.clear()
        doc.title = "two"
        db.session.flush()
        db.session.commit()
    assert len([s for s in statements if LEASE_TABLE in s]) == 1
    assert all("lease" in v.change_info for v in doc.versions()[-2:])


def test_holder_bulk_change_info(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The holder's bulk UPDATE of rows the session does not hold records the lease."""
    alice_leases(1)
    db.session.expunge_all()
    with acting_as("alice"):
        db.session.execute(sa.update(Doc).where(Doc.id == 1).values(title="bulk by alice"))
        db.session.commit()
    history: Any = history_class(Doc)
    row = db.session.execute(sa.select(history).where(history.id == 1)).scalars().one()
    assert row.change_info["lease"]["user_id"] == "alice"


def test_joined_subclass_bulk_refused(db: VersionedSQLAlchemy) -> None:
    """A bulk UPDATE of a joined-inheritance subclass checks the base table's leases."""

    class Item(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lease_item"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        kind = sa.Column(sa.String(10), nullable=False)
        name = sa.Column(sa.String(20), nullable=False, default="")
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "item"}

    class Book(Item):
        __tablename__ = "lease_book"
        id = sa.Column(sa.Integer, sa.ForeignKey("lease_item.id"), primary_key=True)
        pages = sa.Column(sa.Integer, nullable=False, default=0)
        __mapper_args__ = {"polymorphic_identity": "book"}

    db.create_all()
    db.session.add_all([Book(id=1, name="a", pages=1), Book(id=2, name="b", pages=2)])
    db.session.commit()
    with acting_as("alice"):
        cast(Any, db.session.get(Book, 2)).lease()
    with acting_as("bob"), pytest.raises(RecordLeasedError, match=r"Book\(2\)"):
        db.session.execute(
            sa.update(Book).where(cast("sa.ColumnElement[bool]", Book.pages > 1)).values(pages=9)
        )
    db.session.rollback()
    with acting_as("bob"):
        db.session.execute(sa.update(Book).where(Book.pages == 1).values(pages=5))
        db.session.commit()


def test_takeover_recorded_once(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """took_over_from is on the new holder's next change only."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("bob"):
        doc.lease(force=True)
        doc.title = "first"
        db.session.commit()
        doc.title = "second"
        db.session.commit()
    first, second = doc.versions()[-2:]
    assert first.change_info["lease"]["took_over_from"] == "alice"
    assert "took_over_from" not in second.change_info["lease"]
