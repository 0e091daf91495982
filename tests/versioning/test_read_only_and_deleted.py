"""SPEC §2: history records are read-only; a deleted record still reads its history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from chrononaut import ChrononautException, VersionedSQLAlchemy


def _edited(db: VersionedSQLAlchemy, make_user: Callable[..., Any]) -> Any:
    user = make_user(name="alice")
    user.name = "bob"
    db.session.commit()
    return user


def test_setattr_on_history_record_raises(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """Setting an attribute of a history record raises at once, leaving nothing pending."""
    (old,) = _edited(db, make_user).versions()
    with pytest.raises(ChrononautException, match="read-only"):
        old.name = "x"
    assert old.name == "alice"
    assert not db.session.dirty


def test_delattr_on_history_record_raises(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """Deleting an attribute of a history record raises; the session's next flush works."""
    user = _edited(db, make_user)
    (old,) = user.versions()
    with pytest.raises(ChrononautException, match="read-only"):
        del old.name
    assert old.name == "alice"
    assert not db.session.dirty
    user.name = "carol"
    db.session.commit()
    assert user.version == 2


def _deleted(db: VersionedSQLAlchemy, make_user: Callable[..., Any]) -> Any:
    user = _edited(db, make_user)
    user.between = dt.datetime.now(dt.timezone.utc)
    db.session.delete(user)
    db.session.commit()
    return user


def test_deleted_record_reads_history_through_deleting_session(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """After a committed delete the record reads its history through the session that deleted it."""
    user = _deleted(db, make_user)
    assert [v.name for v in user.versions()] == ["alice", "bob"]
    assert user.previous_version().change_info["deleted"] is True
    assert user.has_changed_since(dt.datetime(2000, 1, 1))


def test_deleted_record_with_explicit_session(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """``session=`` reads a deleted record's history through any session."""
    user = _deleted(db, make_user)
    other = db.session.session_factory()
    try:
        assert [v.version for v in user.versions(session=other)] == [0, 1]
        first = user.versions(session=other)[0]
        assert user.version_at(user.between, session=other).name == "bob"
        assert user.previous_version(session=other).version == 1
        assert user.diff(first, session=other) == {"name": ("alice", "bob")}
    finally:
        other.close()


def test_detached_record_without_session_raises(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """A detached record whose session was closed says to pass one."""
    user = make_user(name="alice")
    db.session.close()
    with pytest.raises(ChrononautException, match="session="):
        user.versions()


def test_expunged_record_reads_through_the_session_that_held_it(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """An expunged record reads its history through the session that last held it,
    while that session is open."""
    user = _edited(db, make_user)
    db.session.expunge(user)
    assert [v.name for v in user.versions()] == ["alice"]
    assert user.previous_version().name == "alice"


def test_deleted_record_after_its_session_closed_raises(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """Once the session that deleted the record is closed, reading needs session=."""
    user = _deleted(db, make_user)
    db.session.close()
    with pytest.raises(ChrononautException, match="session="):
        user.versions()
    other = db.session.session_factory()
    try:
        assert [v.version for v in user.versions(session=other)] == [0, 1]
    finally:
        other.close()


def test_record_of_a_reset_session_raises(
    db: VersionedSQLAlchemy, make_user: Callable[..., Any]
) -> None:
    """A session used again after close() is not the one that held the record."""
    user = make_user(name="alice")
    session = db.session()
    session.close()
    session.execute(sa.text("SELECT 1"))  # the session is in use again
    with pytest.raises(ChrononautException, match="session="):
        user.versions()
