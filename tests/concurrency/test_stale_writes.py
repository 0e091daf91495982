"""SPEC §5: stale updates and deletes from ORM flushes raise an explained
``StaleWriteError``, and nothing of the failed flush is written.

Alice works in ``db.session``, Bob in ``other``; both commit for real.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import pytest
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


def _bob_deletes(other: Session, Doc: Any, doc_id: int) -> None:
    """Bob deletes the document in his own session and commits."""
    with acting_as("bob"):
        other.delete(other.get(Doc, doc_id))
        other.commit()


def _alice_commit(db: VersionedSQLAlchemy) -> StaleWriteError:
    """Alice commits; return the ``StaleWriteError`` it must raise."""
    with acting_as("alice"), pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    return caught.value


def test_stale_update_is_explained(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A stale update names the record and both versions."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    doc.title = "alice's"
    error = _alice_commit(db)
    assert error.record is doc
    assert (error.expected_version, error.current_version) == (0, 1)
    assert [c.version for c in error.changes] == [0]


def test_stale_update_changes_are_exact(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """``.changes`` holds each intervening history record: version, time, who, values."""
    doc = make_doc(title="t0", body="b0")
    before = dt.datetime.now(dt.timezone.utc)
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_edits(other, Doc, doc.id, body="b2", secret="new secret")
    after = dt.datetime.now(dt.timezone.utc)
    doc.title = "alice's"
    error = _alice_commit(db)
    assert (error.expected_version, error.current_version) == (0, 2)
    first, second = error.changes
    assert (first.version, first.title, first.body) == (0, "t0", "b0")
    assert (second.version, second.title, second.body) == (1, "t1", "b0")
    for change in error.changes:
        assert before <= change.changed <= after
        assert change.changed.tzinfo is not None
        assert change.change_info["user_id"] == "bob"
    assert "hidden_cols_changed" not in first.change_info
    assert second.change_info["hidden_cols_changed"] == ["secret"]


def test_stale_update_changed_fields_via_diff(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """After a rollback, ``record.diff`` names the fields each intervening change touched."""
    doc = make_doc(title="t0", body="b0")
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_edits(other, Doc, doc.id, body="b2", secret="new secret")
    doc.title = "alice's"
    error = _alice_commit(db)
    db.session.rollback()
    first, second = error.changes
    assert doc.diff(first, second) == {"title": ("t0", "t1")}
    assert doc.diff(second, include_hidden=True) == {"body": ("b0", "b2"), "secret": (None, None)}


def test_stale_update_message_says_who_and_what(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """The message tells who changed which field since the caller's version."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    doc.title = "alice's"
    message = str(_alice_commit(db))
    assert "bob changed title at " in message
    assert "(replacing version 0)" in message


def test_stale_update_message_names_no_user_anonymous(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A change made without an acting user is credited to the one word for no user."""
    doc = make_doc()
    cast(Any, other.get(Doc, doc.id)).title = "nobody's"
    other.commit()
    doc.title = "alice's"
    assert "anonymous changed title at " in str(_alice_commit(db))


def test_stale_delete_is_explained(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Deleting a record another session changed meanwhile raises ``StaleWriteError``."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    db.session.delete(doc)
    error = _alice_commit(db)
    assert error.record is doc
    assert (error.expected_version, error.current_version) == (0, 1)
    assert [c.version for c in error.changes] == [0]


def test_update_of_deleted_row_has_no_current_version(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Updating a row another session deleted: ``current_version`` is ``None``."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_deletes(other, Doc, doc.id)
    doc.title = "alice's"
    error = _alice_commit(db)
    assert (error.expected_version, error.current_version) == (0, None)
    assert [c.version for c in error.changes] == [0, 1]
    assert error.changes[-1].change_info.get("deleted") is True
    assert error.changes[-1].title == "t1"


def test_delete_of_deleted_row_has_no_current_version(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Deleting a row another session deleted: ``current_version`` is ``None``."""
    doc = make_doc()
    _bob_deletes(other, Doc, doc.id)
    db.session.delete(doc)
    error = _alice_commit(db)
    assert (error.expected_version, error.current_version) == (0, None)
    assert [c.version for c in error.changes] == [0]


def test_failed_flush_writes_no_history(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A stale update leaves only the other writer's history row behind."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    doc.title = "alice's"
    _alice_commit(db)
    db.session.rollback()
    rows = committed("SELECT version, title FROM doc_history ORDER BY version")
    assert rows == [{"version": 0, "title": "draft"}]
    assert committed("SELECT version, title FROM doc") == [{"version": 1, "title": "bob's"}]


def test_failed_flush_writes_no_other_row(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """Inserts, fresh updates and deletes flushed with a stale update are not written."""
    stale, fresh, doomed = make_doc(title="stale"), make_doc(title="fresh"), make_doc(title="x")
    _bob_edits(other, Doc, stale.id, title="bob's")
    # Assigning to an expired attribute loads the row first (so history knows the
    # old value), and that load autoflushes: keep everything for the one commit.
    with db.session.no_autoflush:
        stale.title = "alice's"
        fresh.title = "alice's fresh"
        db.session.delete(doomed)
        db.session.add(Doc(title="new"))
    _alice_commit(db)
    db.session.rollback()
    assert committed("SELECT title, version FROM doc ORDER BY id") == [
        {"title": "bob's", "version": 1},
        {"title": "fresh", "version": 0},
        {"title": "x", "version": 0},
    ]
    assert committed("SELECT id, version FROM doc_history") == [{"id": stale.id, "version": 0}]


def test_failed_update_only_flush_writes_nothing(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A flush of updates only (one statement per group) with one stale record writes nothing."""
    stale, fresh = make_doc(title="stale"), make_doc(title="fresh")
    _bob_edits(other, Doc, stale.id, title="bob's")
    stale.title = "alice's"
    fresh.title = "alice's fresh"
    error = _alice_commit(db)
    assert error.record is stale
    db.session.rollback()
    assert committed("SELECT title, version FROM doc ORDER BY id") == [
        {"title": "bob's", "version": 1},
        {"title": "fresh", "version": 0},
    ]
    assert committed("SELECT id, version FROM doc_history") == [{"id": stale.id, "version": 0}]


def test_session_usable_after_rollback(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """After the conflict, rolling back and re-applying the edit commits on the new version."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, body="bob's body")
    doc.title = "alice's"
    _alice_commit(db)
    db.session.rollback()
    assert doc.version == 1
    doc.title = "alice's"
    db.session.commit()
    assert committed("SELECT title, body, version FROM doc") == [
        {"title": "alice's", "body": "bob's body", "version": 2}
    ]


def test_untracked_only_change_is_still_checked(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A stale write of an untracked column only is refused too (no lost update)."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    doc.views = 5
    error = _alice_commit(db)
    assert (error.expected_version, error.current_version) == (0, 1)


def test_changed_fields_per_change(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """``.changed_fields`` names, per change, the fields it touched (hidden by name only)."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_edits(other, Doc, doc.id, body="b2", secret="new secret")
    doc.title = "alice's"
    error = _alice_commit(db)
    assert error.changed_fields == [["title"], ["body", "secret"]]


@pytest.mark.parametrize("bob", ["updates", "deletes"])
def test_stale_delete_without_confirmed_rows_is_stale_write(
    db: VersionedSQLAlchemy, other: Session, bob: str
) -> None:
    """A mapper with ``confirm_deleted_rows=False`` (SQLAlchemy then checks no row
    count): deleting a record that another transaction changed or deleted since it
    was read is a StaleWriteError, and nothing is written."""
    from chrononaut import Versioned

    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "stale_note"
        __mapper_args__ = {"confirm_deleted_rows": False}
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(20))

    db.create_all()
    note = cast(Any, Note(id=1, text="a"))
    db.session.add(note)
    db.session.commit()
    assert note.text == "a"  # loaded at version 0
    if bob == "updates":
        _bob_edits(other, Note, 1, text="b")
    else:
        _bob_deletes(other, Note, 1)
    db.session.delete(note)
    error = _alice_commit(db)
    assert error.expected_version == 0
    assert error.current_version == (1 if bob == "updates" else None)
    db.session.rollback()
    history = [(h.version, h.change_info["user_id"]) for h in note.versions(session=other)]
    assert history == [(0, "bob")]
