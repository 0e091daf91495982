"""SPEC §5: ``record.expect_version(v)`` for a version that came back from a client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from chrononaut import ChrononautException, StaleWriteError, VersionedSQLAlchemy, acting_as

Committed = Callable[[str], list[dict[str, Any]]]


def _bob_edits(other: Session, Doc: Any, doc_id: int, **values: Any) -> None:
    """Bob changes ``values`` of the document in his own session and commits."""
    with acting_as("bob"):
        doc = other.get(Doc, doc_id)
        for key, value in values.items():
            setattr(doc, key, value)
        other.commit()


def test_current_version_is_accepted(db: VersionedSQLAlchemy, make_doc: Any) -> None:
    """The record's current version passes, and the edit commits."""
    doc = make_doc()
    doc.expect_version(0)
    doc.title = "edited"
    db.session.commit()
    assert doc.version == 1


def test_old_version_raises_at_once(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A version the record has moved on from raises with the intervening changes."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_edits(other, Doc, doc.id, title="t2")
    db.session.refresh(doc)
    with pytest.raises(StaleWriteError) as caught:
        doc.expect_version(0)
    error = caught.value
    assert error.record is doc
    assert (error.expected_version, error.current_version) == (0, 2)
    assert [(c.version, c.title, c.change_info["user_id"]) for c in error.changes] == [
        (0, "draft", "bob"),
        (1, "t1", "bob"),
    ]


def test_raising_at_once_keeps_the_session_usable(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """The immediate error does not break the session's transaction."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    db.session.refresh(doc)
    with pytest.raises(StaleWriteError):
        doc.expect_version(0)
    doc.body = "still usable"
    db.session.commit()
    assert committed("SELECT title, body, version FROM doc") == [
        {"title": "t1", "body": "still usable", "version": 2}
    ]


def test_checked_again_at_next_flush(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A change committed between the check and the flush makes the flush fail."""
    doc = make_doc()
    doc.expect_version(0)
    _bob_edits(other, Doc, doc.id, title="bob's")
    doc.title = "alice's"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
    db.session.rollback()
    assert committed("SELECT title FROM doc") == [{"title": "bob's"}]


def test_expectation_ends_with_a_rollback(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A rollback ends the unit of work that declared a version, and the declaration."""
    doc = make_doc()
    doc.expect_version(0)
    _bob_edits(other, Doc, doc.id, title="bob's")
    db.session.rollback()
    assert doc.version == 1
    doc.body = "alice's, on top of bob's"
    db.session.commit()
    assert committed("SELECT title, version FROM doc") == [{"title": "bob's", "version": 2}]


def test_checked_across_refresh(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """Refreshing the record after the check does not launder the client's old version."""
    doc = make_doc()
    doc.expect_version(0)
    _bob_edits(other, Doc, doc.id, title="bob's")
    db.session.refresh(doc)
    assert doc.version == 1
    doc.body = "alice's"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    error = caught.value
    assert (error.expected_version, error.current_version) == (0, 1)
    assert [c.version for c in error.changes] == [0]
    db.session.rollback()
    assert committed("SELECT title, body, version FROM doc") == [
        {"title": "bob's", "body": "text", "version": 1}
    ]
    assert committed("SELECT count(*) AS n FROM doc_history") == [{"n": 1}]


def test_checked_across_refresh_for_delete(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A delete based on an old client version is refused even after a refresh."""
    doc = make_doc()
    doc.expect_version(0)
    _bob_edits(other, Doc, doc.id, title="bob's")
    db.session.refresh(doc)
    db.session.delete(doc)
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
    db.session.rollback()
    assert committed("SELECT version FROM doc") == [{"version": 1}]


def test_checked_across_lock(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """``lock()`` refreshes the record, and the client's old version still fails the write."""
    doc = make_doc()
    doc.expect_version(0)
    _bob_edits(other, Doc, doc.id, title="bob's")
    with pytest.raises(StaleWriteError), doc.lock():
        doc.body = "alice's"
        db.session.flush()
    assert committed("SELECT body, version FROM doc") == [{"body": "text", "version": 1}]


def test_expectation_ends_with_the_write(
    db: VersionedSQLAlchemy, make_doc: Any, committed: Committed
) -> None:
    """Once the guarded write is flushed, later writes are checked against the new version."""
    doc = make_doc()
    doc.expect_version(0)
    doc.title = "one"
    db.session.commit()
    doc.title = "two"
    db.session.commit()
    assert committed("SELECT title, version FROM doc") == [{"title": "two", "version": 2}]


def test_newer_version_than_current_raises(db: VersionedSQLAlchemy, make_doc: Any) -> None:
    """A version the record never had (from the future) is refused too."""
    doc = make_doc()
    with pytest.raises(StaleWriteError) as caught:
        doc.expect_version(5)
    assert (caught.value.expected_version, caught.value.current_version) == (5, 0)
    assert caught.value.changes == []


@pytest.mark.parametrize("value", [0.0, True, None, b"0", [0]])
def test_non_int_version_is_type_error(make_doc: Any, value: Any) -> None:
    """Versions are ints or the str a form brought back; other types: TypeError."""
    doc = make_doc()
    with pytest.raises(TypeError):
        doc.expect_version(value)


def test_form_text_of_the_current_version_matches(make_doc: Any) -> None:
    """The str a form field brings back ("0", " 0 ") is taken as that version."""
    doc = make_doc()
    doc.expect_version("0")
    doc.expect_version(" 0 ")


@pytest.mark.parametrize(
    "value", ["", "abc", "-1", "+0", "²", "\u0661", "1.0", "0x0", "9" * 5000, "2147483648", "0\x00"]
)
def test_malformed_form_version_is_a_stale_write(make_doc: Any, value: str) -> None:
    """Text that is not a well-formed version is a mismatch (StaleWriteError), not a 500."""
    doc = make_doc()
    with pytest.raises(StaleWriteError) as caught:
        doc.expect_version(value)
    assert caught.value.current_version == 0 and caught.value.expected_version is None


@pytest.mark.parametrize("value", [-1, 2**31, 2**200])
def test_out_of_range_int_version_is_a_stale_write(make_doc: Any, value: int) -> None:
    """An int no version can have is a mismatch, decided without the database."""
    doc = make_doc()
    with pytest.raises(StaleWriteError):
        doc.expect_version(value)


def test_transient_record_is_refused(Doc: Any) -> None:
    """A record that was never loaded has no version to compare with."""
    with pytest.raises(ChrononautException):
        Doc(title="new").expect_version(0)


def test_client_newer_than_session_copy_is_accepted(
    db: VersionedSQLAlchemy, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """A long-lived session's old copy is refreshed when the row is at the client's version."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")  # the client saw version 1 elsewhere
    doc.expect_version(1)
    assert (doc.version, doc.title) == (1, "bob's")
    doc.body = "alice's"
    db.session.commit()
    assert committed("SELECT title, body, version FROM doc") == [
        {"title": "bob's", "body": "alice's", "version": 2}
    ]
