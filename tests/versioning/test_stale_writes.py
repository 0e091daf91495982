"""SPEC §2/§5 (basic part, issue 2): ``version`` is the ``version_id_col``, so a
stale update or delete raises ``StaleWriteError``. Two real sessions, real commits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from chrononaut import ChrononautException, StaleWriteError, VersionedSQLAlchemy


@pytest.fixture()
def other(db: VersionedSQLAlchemy) -> Iterator[Session]:
    """A second session of the same ``db`` (its own connection and transaction)."""
    session = db.session.session_factory()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture()
def loaded(db: VersionedSQLAlchemy, make_user: Any) -> Any:
    """A user (version 0) loaded in ``db.session`` with all attributes present."""
    user = make_user(name="alice", login_count=0)
    _ = (user.name, user.version)
    return user


def _bump_elsewhere(other: Session, User: Any, user_id: int, name: str = "bob") -> None:
    """Change the user's name in the other session and commit (version 0 → 1)."""
    cast(Any, other.get(User, user_id)).name = name
    other.commit()


def test_stale_update_raises(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """Updating a record another session changed meanwhile raises ``StaleWriteError``."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.name = "carol"
    with pytest.raises(StaleWriteError):
        db.session.commit()


def test_stale_write_error_hierarchy() -> None:
    """``StaleWriteError`` is a ``ChrononautException`` and a ``StaleDataError``."""
    assert issubclass(StaleWriteError, ChrononautException)
    assert issubclass(StaleWriteError, StaleDataError)


def test_stale_update_caught_as_stale_data_error(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """Code catching SQLAlchemy's ``StaleDataError`` catches the stale update."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.name = "carol"
    with pytest.raises(StaleDataError):
        db.session.commit()


def test_stale_update_error_attributes(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """The error carries ``record``, ``expected_version`` and ``current_version``."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.name = "carol"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    error = caught.value
    assert error.record is loaded
    assert (error.expected_version, error.current_version) == (0, 1)


def test_stale_update_writes_nothing(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any, history_rows: Any
) -> None:
    """After a stale update, only the other session's change and history remain."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.name = "carol"
    loaded.email = "carol@example.com"
    with pytest.raises(StaleWriteError):
        db.session.commit()
    db.session.rollback()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice")]
    assert (loaded.name, loaded.email, loaded.version) == ("bob", "alice@example.com", 1)


def test_stale_update_in_multi_record_flush(
    db: VersionedSQLAlchemy, other: Session, User: Any, make_user: Any, history_rows: Any
) -> None:
    """A stale record in a flush of several records writes nothing of that flush."""
    alice = make_user(name="alice")
    zed = make_user(name="zed")
    _ = (alice.name, zed.name)
    _bump_elsewhere(other, User, alice.id)
    zed.name = "zed2"
    alice.name = "carol"
    with pytest.raises(StaleWriteError):
        db.session.commit()
    db.session.rollback()
    assert [(r["id"], r["name"]) for r in history_rows("appuser_history")] == [(alice.id, "alice")]
    assert (zed.name, zed.version) == ("zed", 0)


def test_stale_untracked_update_raises(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """An untracked-only write based on an old version is still version-checked."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.login_count = 99
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)


def test_stale_hidden_update_raises(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """A hidden-column write based on an old version raises ``StaleWriteError``."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.password = "new"
    with pytest.raises(StaleWriteError):
        db.session.commit()


def test_stale_delete_raises(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """Deleting a record another session changed meanwhile raises ``StaleWriteError``."""
    _bump_elsewhere(other, User, loaded.id)
    db.session.delete(loaded)
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    error = caught.value
    assert error.record is loaded
    assert (error.expected_version, error.current_version) == (0, 1)


def test_stale_delete_writes_nothing(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any, history_rows: Any
) -> None:
    """A refused stale delete leaves the row and writes no deleted history row."""
    _bump_elsewhere(other, User, loaded.id)
    db.session.delete(loaded)
    with pytest.raises(StaleWriteError):
        db.session.commit()
    db.session.rollback()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["change_info"].get("deleted")) for r in rows] == [(0, None)]
    assert db.session.get(User, loaded.id) is not None


def test_update_of_deleted_row(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """Updating a record another session deleted raises with ``current_version`` None."""
    other.delete(other.get(User, loaded.id))
    other.commit()
    loaded.name = "carol"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    assert (caught.value.expected_version, caught.value.current_version) == (0, None)


def test_fresh_write_after_stale_succeeds(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """After rollback and reload, the write succeeds on the current version."""
    _bump_elsewhere(other, User, loaded.id)
    loaded.name = "carol"
    with pytest.raises(StaleWriteError):
        db.session.commit()
    db.session.rollback()
    loaded.name = "carol"
    db.session.commit()
    assert [(h.version, h.name) for h in loaded.versions()] == [(0, "alice"), (1, "bob")]
    assert loaded.version == 2


def test_concurrent_unchanged_record_not_stale(
    db: VersionedSQLAlchemy, other: Session, User: Any, loaded: Any
) -> None:
    """Untracked-only commits elsewhere don't bump ``version``, so no stale write here."""
    cast(Any, other.get(User, loaded.id)).login_count = 5
    other.commit()
    loaded.name = "carol"
    db.session.commit()
    assert loaded.version == 1
