"""SPEC §2: the legacy bulk methods never write history without the prior values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import ChrononautException, VersionedSQLAlchemy
from tests.versioning.conftest import HistoryReader


def _statements(db: VersionedSQLAlchemy) -> tuple[list[str], Callable[[], None]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    return seen, lambda: sa.event.remove(db.engine, "before_cursor_execute", record)


def test_bulk_save_objects_update_refused(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any], history_rows: HistoryReader
) -> None:
    """``bulk_save_objects`` of a changed record raises before any statement."""
    user = make_user(name="alice")
    user.name = "bob"
    seen, stop = _statements(db)
    try:
        with pytest.raises(ChrononautException, match="bulk_save_objects"):
            db.session.bulk_save_objects([user])
    finally:
        stop()
    assert seen == []
    db.session.rollback()
    assert history_rows("appuser_history") == []


def test_bulk_update_mappings_refused(
    db: VersionedSQLAlchemy, User: Any, make_user: Callable[..., Any], history_rows: HistoryReader
) -> None:
    """``bulk_update_mappings`` on a Versioned model raises before any statement."""
    key = make_user(name="alice").id
    seen, stop = _statements(db)
    try:
        with pytest.raises(ChrononautException, match="bulk_update_mappings"):
            db.session.bulk_update_mappings(User, [{"id": key, "name": "bob"}])
    finally:
        stop()
    assert seen == []
    db.session.rollback()
    assert history_rows("appuser_history") == []
    assert cast(Any, db.session.get(User, key)).name == "alice"


def test_bulk_save_objects_inserts_new_records(db: VersionedSQLAlchemy, User: Any) -> None:
    """``bulk_save_objects`` of new records inserts them at version 0 (no history needed)."""
    db.session.bulk_save_objects([User(name="a", email="a@x"), User(name="b", email="b@x")])
    db.session.commit()
    rows = db.session.scalars(sa.select(User).order_by(User.name)).all()
    assert [(u.name, u.version) for u in rows] == [("a", 0), ("b", 0)]


def test_bulk_update_mappings_of_unversioned_model_passes(db: VersionedSQLAlchemy) -> None:
    """Models that are not Versioned keep SQLAlchemy's bulk methods unchanged."""

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "note"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(20))

    db.create_all()
    db.session.add(Note(id=1, text="a"))
    db.session.commit()
    db.session.bulk_update_mappings(Note, [{"id": 1, "text": "b"}])
    db.session.commit()
    assert cast(Any, db.session.get(Note, 1)).text == "b"


REINSERTS: dict[str, Callable[[Any, Any], None]] = {
    "bulk_insert_mappings": lambda s, User: s.bulk_insert_mappings(
        User, [{"id": 1, "name": "again", "email": "a@x"}]
    ),
    "bulk_save_objects": lambda s, User: s.bulk_save_objects(
        [User(id=1, name="again", email="a@x")]
    ),
}


@pytest.mark.parametrize("method", list(REINSERTS))
def test_legacy_insert_continues_version_sequence(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any], User: Any, method: str
) -> None:
    """A key deleted earlier and inserted again by a legacy bulk method continues
    its version sequence, and its next change is recorded."""
    user = make_user(id=1, name="first")
    db.session.delete(user)
    db.session.commit()
    REINSERTS[method](db.session, User)
    db.session.commit()
    again = db.session.get(User, 1)
    assert again is not None and again.version == 1
    again.name = "third"
    db.session.commit()
    assert [(h.version, h.name) for h in again.versions()] == [(0, "first"), (1, "again")]


def test_bulk_insert_mappings_version_refused(db: VersionedSQLAlchemy, User: Any) -> None:
    """``bulk_insert_mappings`` rows that carry ``version`` are refused before any statement."""
    seen, stop = _statements(db)
    try:
        with pytest.raises(ChrononautException, match="version is set by Chrononaut"):
            db.session.bulk_insert_mappings(User, [{"id": 1, "name": "x", "version": 5}])
    finally:
        stop()
    assert seen == []
