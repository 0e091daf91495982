"""change_info of bulk statements combined with locks, leases, appended info, rollbacks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import (
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    append_change_info,
    suppress_versioning,
)


@pytest.fixture()
def Note(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A leased model with an untracked counter, rows 1-2 committed."""

    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_note"
        __chrononaut_leases__ = True
        __chrononaut_untracked__ = ["hits"]
        id = sa.Column(sa.Integer, primary_key=True)
        body = sa.Column(sa.String(40))
        hits = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add_all([Note(id=1, body="a"), Note(id=2, body="b")])
    db.session.commit()
    yield Note


def _infos(db: VersionedSQLAlchemy, Note: Any, id_: int) -> list[dict[str, Any]]:
    return [v.change_info for v in cast(Any, db.session.get(Note, id_)).versions()]


def test_bulk_update_inside_lock_records_lock(db: VersionedSQLAlchemy, Note: Any) -> None:
    """A bulk UPDATE of a locked record inside its lock block carries change_info["lock"]."""
    note = cast(Any, db.session.get(Note, 1))
    with acting_as("olga"), note.lock():
        db.session.execute(sa.update(Note).where(Note.id.in_([1, 2])).values(body="z"))
    infos = {i: _infos(db, Note, i)[-1] for i in (1, 2)}
    assert infos[1]["lock"]["user_id"] == "olga"
    assert "lock" not in infos[2]


def test_upsert_inside_lock_records_lock(db: VersionedSQLAlchemy, Note: Any) -> None:
    """An upsert of a locked record inside its lock block carries change_info["lock"]."""
    note = cast(Any, db.session.get(Note, 1))
    with acting_as("olga"), note.lock():
        stmt = pg_insert(Note).values(id=1, body="u")
        db.session.execute(
            stmt.on_conflict_do_update(index_elements=[Note.id], set_={"body": stmt.excluded.body})
        )
    assert _infos(db, Note, 1)[-1]["lock"]["mode"] == "update"


def test_appended_info_goes_to_bulk_row(db: VersionedSQLAlchemy, Note: Any) -> None:
    """append_change_info() on a record lands in the history row of a bulk UPDATE."""
    note = cast(Any, db.session.get(Note, 1))
    append_change_info(note, ticket=7)
    db.session.execute(sa.update(Note).where(Note.id == 1).values(body="q"))
    db.session.commit()
    assert _infos(db, Note, 1)[-1]["extra"] == {"ticket": 7}


def test_appended_info_dropped_with_bulk_rollback(db: VersionedSQLAlchemy, Note: Any) -> None:
    """Info appended before a rolled-back bulk UPDATE is not in the next row."""
    note = cast(Any, db.session.get(Note, 1))
    append_change_info(note, ticket=7)
    db.session.execute(sa.update(Note).where(Note.id == 1).values(body="q"))
    db.session.rollback()
    note = cast(Any, db.session.get(Note, 1))
    note.body = "r"
    db.session.commit()
    infos = _infos(db, Note, 1)
    assert len(infos) == 1 and "extra" not in infos[0]


def test_appended_info_kept_past_untracked_bulk(db: VersionedSQLAlchemy, Note: Any) -> None:
    """An untracked-only bulk UPDATE does not consume appended info."""
    note = cast(Any, db.session.get(Note, 1))
    append_change_info(note, ticket=8)
    db.session.execute(sa.update(Note).where(Note.id == 1).values(hits=5))
    note.body = "s"
    db.session.commit()
    assert _infos(db, Note, 1)[-1]["extra"] == {"ticket": 8}


def test_appended_info_kept_past_suppressed_flush(db: VersionedSQLAlchemy, Note: Any) -> None:
    """A change under suppress_versioning() writes no row and so keeps appended info."""
    note = cast(Any, db.session.get(Note, 1))
    append_change_info(note, ticket=9)
    with suppress_versioning():
        note.body = "quiet"
        db.session.flush()
    note.body = "loud"
    db.session.commit()
    infos = _infos(db, Note, 1)
    assert len(infos) == 1 and infos[0]["extra"] == {"ticket": 9}


def test_holder_bulk_update_records_lease(db: VersionedSQLAlchemy, Note: Any) -> None:
    """The holder's bulk UPDATE of a record it leases carries change_info["lease"]."""
    with acting_as("alice"):
        lease = cast(Any, db.session.get(Note, 1)).lease()
        db.session.execute(sa.update(Note).where(Note.id.in_([1, 2])).values(body="h"))
        db.session.commit()
    info1, info2 = _infos(db, Note, 1)[-1], _infos(db, Note, 2)[-1]
    assert info1["lease"]["user_id"] == "alice"
    assert info1["lease"]["expires_at"] is not None and lease.token
    assert "lease" not in info2


def test_holder_bulk_update_not_in_session_records_lease(
    db: VersionedSQLAlchemy, Note: Any
) -> None:
    """The holder's bulk UPDATE from a fresh session carries change_info["lease"]."""
    with acting_as("alice"):
        cast(Any, db.session.get(Note, 1)).lease()
    db.session.close()
    other = db.session.session_factory()
    try:
        with acting_as("alice"):
            other.execute(sa.update(Note).where(Note.id == 1).values(body="f"))
            other.commit()
    finally:
        other.close()
    assert _infos(db, Note, 1)[-1]["lease"]["user_id"] == "alice"


def test_holder_upsert_under_lock_records_both(db: VersionedSQLAlchemy, Note: Any) -> None:
    """The holder's upsert inside a lock block carries both "lock" and "lease"."""
    with acting_as("alice"):
        note = cast(Any, db.session.get(Note, 1))
        note.lease()
        with note.lock():
            stmt = pg_insert(Note).values(id=1, body="b2")
            db.session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[Note.id], set_={"body": stmt.excluded.body}
                )
            )
    info = _infos(db, Note, 1)[-1]
    assert info["lock"]["user_id"] == "alice"
    assert info["lease"]["user_id"] == "alice"
