"""History records read after a commit expired them."""

from __future__ import annotations

from typing import Any

from chrononaut import VersionedSQLAlchemy


def test_diff_with_history_record_expired_by_commit(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """diff() accepts a history record that a later commit expired."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.commit()
    first = user.versions()[0]
    user.name = "carol"
    db.session.commit()
    assert user.diff(first) == {"name": ("alice", "carol")}


def test_restore_from_history_record_expired_by_commit(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """restore() copies the values of a history record that a later commit expired."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.commit()
    first = user.versions()[0]
    user.name = "carol"
    db.session.commit()
    user.restore(first)
    db.session.commit()
    assert user.name == "alice"
    assert [h.name for h in user.versions()] == ["alice", "bob", "carol"]
