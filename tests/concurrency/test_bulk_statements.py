"""Issue 4 §1: ORM bulk statements that target a versioned row by primary key and
version raise ``StaleWriteError`` when that version is gone.

Such a statement is the hand-written optimistic check (``UPDATE ... WHERE id = :id
AND version = :v``); when it matches no row because the row moved on or was
deleted, the caller's write was based on a stale version, exactly as for a flush.
Statements that do not pin the version, or whose row still has that version but
is excluded by other criteria, keep SQLAlchemy's "0 rows matched" result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import StaleWriteError, VersionedSQLAlchemy, acting_as

Committed = Callable[[str], list[dict[str, Any]]]


def _bob_edits(other: Session, Doc: Any, doc_id: int, **values: Any) -> None:
    """Bob changes ``values`` of the document in his own session and commits."""
    with acting_as("bob"):
        doc = other.get(Doc, doc_id)
        for key, value in values.items():
            setattr(doc, key, value)
        other.commit()


def _stale_doc(db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any) -> int:
    """A document at version 1 (Bob changed its title), not loaded in ``db.session``."""
    doc_id = int(make_doc(title="t0").id)
    _bob_edits(other, Doc, doc_id, title="t1")
    db.session.expunge_all()
    return doc_id


def test_bulk_update_by_key_and_version(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """``update().where(pk, version)`` on a moved-on row raises with the changes since."""
    doc_id = _stale_doc(db, other, Doc, make_doc)
    statement = sa.update(Doc).where(Doc.id == doc_id, Doc.version == 0).values(title="x")
    with pytest.raises(StaleWriteError) as caught:
        db.session.execute(statement)
    error = caught.value
    assert (error.expected_version, error.current_version) == (0, 1)
    assert [(c.version, c.title) for c in error.changes] == [(0, "t0")]
    db.session.rollback()
    assert committed("SELECT title, version FROM doc") == [{"title": "t1", "version": 1}]


def test_bulk_update_names_the_loaded_record(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """When the session holds the record, the error's ``record`` is that object."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    statement = sa.update(Doc).where(Doc.id == doc.id, Doc.version == 0).values(title="x")
    with pytest.raises(StaleWriteError) as caught:
        db.session.execute(statement)
    assert caught.value.record is doc


def test_bulk_delete_by_key_and_version(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """``delete().where(pk, version)`` on a moved-on row raises and deletes nothing."""
    doc_id = _stale_doc(db, other, Doc, make_doc)
    with pytest.raises(StaleWriteError) as caught:
        db.session.execute(sa.delete(Doc).where(Doc.id == doc_id, Doc.version == 0))
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
    db.session.rollback()
    assert committed("SELECT version FROM doc") == [{"version": 1}]
    assert committed("SELECT count(*) AS n FROM doc_history") == [{"n": 1}]


def test_bulk_update_of_deleted_row(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A row deleted meanwhile: ``current_version`` is ``None``."""
    doc_id = int(make_doc().id)
    db.session.expunge_all()
    with acting_as("bob"):
        other.delete(other.get(Doc, doc_id))
        other.commit()
    statement = sa.update(Doc).where(Doc.id == doc_id, Doc.version == 0).values(title="x")
    with pytest.raises(StaleWriteError) as caught:
        db.session.execute(statement)
    assert (caught.value.expected_version, caught.value.current_version) == (0, None)
    assert [c.change_info.get("deleted") for c in caught.value.changes] == [True]


def test_bulk_update_by_primary_key_parameters(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """``execute(update(Doc), [{"id", "version", ...}])`` with a stale version raises too."""
    doc_id = _stale_doc(db, other, Doc, make_doc)
    with pytest.raises(StaleWriteError) as caught:
        db.session.execute(sa.update(Doc), [{"id": doc_id, "version": 0, "title": "x"}])
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
    db.session.rollback()
    assert committed("SELECT title FROM doc") == [{"title": "t1"}]


def test_legacy_query_update_by_key_and_version(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Legacy ``Query.update()`` with a stale pinned version raises too."""
    doc_id = _stale_doc(db, other, Doc, make_doc)
    query = db.session.query(Doc).filter(Doc.id == doc_id, Doc.version == 0)
    with pytest.raises(StaleWriteError):
        query.update({"title": "x"})


def test_bulk_update_current_version_writes_once(
    db: VersionedSQLAlchemy, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A pinned version that is current updates the row and bumps the version by one."""
    doc_id = int(make_doc().id)
    statement = sa.update(Doc).where(Doc.id == doc_id, Doc.version == 0).values(title="x")
    assert db.session.execute(statement).rowcount == 1  # type: ignore[attr-defined]
    db.session.commit()
    assert committed("SELECT title, version FROM doc") == [{"title": "x", "version": 1}]
    assert committed("SELECT version, title FROM doc_history") == [{"version": 0, "title": "draft"}]


def test_other_criteria_excluding_the_row_are_not_a_conflict(
    db: VersionedSQLAlchemy, Doc: Any, make_doc: Any
) -> None:
    """A row still at the pinned version but excluded by another criterion: 0 rows, no error."""
    doc_id = int(make_doc(title="t0").id)
    statement = (
        sa.update(Doc)
        .where(Doc.id == doc_id, Doc.version == 0, Doc.title == "something else")
        .values(body="x")
    )
    assert db.session.execute(statement).rowcount == 0  # type: ignore[attr-defined]


def test_statement_without_version_is_not_checked(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A bulk statement that does not pin a version asked for no check: it just updates."""
    doc_id = _stale_doc(db, other, Doc, make_doc)
    db.session.execute(sa.update(Doc).where(Doc.id == doc_id).values(body="x"))
    db.session.commit()
    assert committed("SELECT body, version FROM doc") == [{"body": "x", "version": 2}]


def test_missing_row_without_version_is_not_checked(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """A key that never existed, no version pinned: 0 rows, no error."""
    result = db.session.execute(sa.update(Doc).where(Doc.id == 999).values(body="x"))
    assert result.rowcount == 0  # type: ignore[attr-defined]
