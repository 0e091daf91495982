"""SPEC §2 "Reading history": versions(), version_at(), has_changed_since(),
previous_version(), diff(), restore() and the read-only history records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from chrononaut import (
    ChrononautException,
    HiddenAttributeError,
    UntrackedAttributeError,
    VersionedSQLAlchemy,
    history_class,
)

US = dt.timedelta(microseconds=1)


@pytest.fixture()
def user3(db: VersionedSQLAlchemy, make_user: Any) -> Any:
    """A user renamed alice → bob → carol → dave: history versions 0, 1, 2; live version 3."""
    user = make_user(name="alice", email="alice@example.com")
    for name in ("bob", "carol", "dave"):
        user.name = name
        db.session.commit()
    return user


# versions()


def test_versions_empty(make_user: Any) -> None:
    """A record that never changed has no versions."""
    assert make_user().versions() == []


def test_versions_ordered(user3: Any) -> None:
    """``versions()`` lists history records by ``version`` ascending."""
    assert [(h.version, h.name) for h in user3.versions()] == [
        (0, "alice"),
        (1, "bob"),
        (2, "carol"),
    ]


def test_first_version_is_first_saved(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``versions()[0]`` is the record as first saved (the seed example)."""
    user = make_user(name="alice", email="alice@example.com")
    user.email = "new@example.com"
    db.session.commit()
    original = user.versions()[0]
    assert (original.name, original.email) == ("alice", "alice@example.com")
    assert original.email != user.email


def test_versions_only_this_record(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``versions()`` returns only the record's own history."""
    alice = make_user(name="alice")
    bob = make_user(name="bob")
    bob.name = "bobby"
    db.session.commit()
    assert alice.versions() == []
    assert [h.id for h in bob.versions()] == [bob.id]


def test_history_record_has_changed_and_change_info(user3: Any) -> None:
    """History records expose ``version``, ``changed`` and ``change_info``."""
    first = user3.versions()[0]
    assert first.version == 0
    assert isinstance(first.changed, dt.datetime) and first.changed.tzinfo is not None
    assert first.change_info == {"user_id": None, "remote_addr": None}


def test_versions_before_inclusive(user3: Any) -> None:
    """``versions(before=t)`` keeps rows with ``changed <= t``."""
    changed = [h.changed for h in user3.versions()]
    assert [h.version for h in user3.versions(before=changed[1])] == [0, 1]
    assert [h.version for h in user3.versions(before=changed[1] - US)] == [0]


def test_versions_after_inclusive(user3: Any) -> None:
    """``versions(after=t)`` keeps rows with ``changed >= t``."""
    changed = [h.changed for h in user3.versions()]
    assert [h.version for h in user3.versions(after=changed[1])] == [1, 2]
    assert [h.version for h in user3.versions(after=changed[1] + US)] == [2]


def test_versions_before_and_after(user3: Any) -> None:
    """``before`` and ``after`` combine."""
    changed = [h.changed for h in user3.versions()]
    assert [h.version for h in user3.versions(after=changed[1], before=changed[1])] == [1]


def test_versions_return_query(user3: Any, User: Any) -> None:
    """``versions(return_query=True)`` is a query with all/first/count/filter."""
    query = user3.versions(return_query=True)
    assert [h.version for h in query.all()] == [0, 1, 2]
    assert query.first().version == 0
    assert query.count() == 3
    assert [h.name for h in query.filter(history_class(User).version >= 1).all()] == [
        "bob",
        "carol",
    ]


def test_versions_return_query_with_filters(user3: Any) -> None:
    """``return_query=True`` applies ``before``/``after`` too."""
    changed = [h.changed for h in user3.versions()]
    query = user3.versions(after=changed[1], return_query=True)
    assert [h.version for h in query.all()] == [1, 2]


@pytest.mark.parametrize("kwarg", ["before", "after"])
@pytest.mark.parametrize("value", ["2024-01-01T00:00:00+00:00", 1700000000, dt.date(2024, 1, 1)])
def test_versions_rejects_non_datetime(user3: Any, kwarg: str, value: Any) -> None:
    """A non-datetime ``before``/``after`` raises ``TypeError``."""
    with pytest.raises(TypeError):
        user3.versions(**{kwarg: value})


# previous_version()


def test_previous_version_none(make_user: Any) -> None:
    """``previous_version()`` is ``None`` for a record without history."""
    assert make_user().previous_version() is None


def test_previous_version_newest(user3: Any) -> None:
    """``previous_version()`` is the newest history record."""
    previous = user3.previous_version()
    assert (previous.version, previous.name) == (2, "carol")


# version_at()


def test_version_at_before_first_change(user3: Any) -> None:
    """``version_at`` just before the first change is the first history record."""
    first = user3.versions()[0]
    assert user3.version_at(first.changed - US).version == 0


def test_version_at_between_changes(user3: Any) -> None:
    """``version_at`` returns the history record current at that moment."""
    changed = [h.changed for h in user3.versions()]
    at = user3.version_at(changed[0])
    assert (at.version, at.name) == (1, "bob")
    assert user3.version_at(changed[1] - US).name == "bob"


def test_version_at_after_last_change(user3: Any, utcnow: Any) -> None:
    """``version_at`` after the last change is the record itself."""
    assert user3.version_at(user3.versions()[-1].changed) is user3
    assert user3.version_at(utcnow()) is user3


def test_version_at_unchanged_record(make_user: Any, utcnow: Any) -> None:
    """``version_at`` of a record that never changed is the record itself."""
    user = make_user()
    assert user.version_at(utcnow()) is user


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00+00:00", 1700000000, None])
def test_version_at_rejects_non_datetime(user3: Any, value: Any) -> None:
    """A non-datetime argument to ``version_at`` raises ``TypeError``."""
    with pytest.raises(TypeError):
        user3.version_at(value)


# has_changed_since()


def test_has_changed_since_true(user3: Any) -> None:
    """``has_changed_since`` is True when a tracked change was made after ``since``."""
    assert user3.has_changed_since(user3.versions()[-1].changed - US) is True


def test_has_changed_since_false(user3: Any, utcnow: Any) -> None:
    """``has_changed_since`` is False when nothing changed after ``since``."""
    assert user3.has_changed_since(utcnow()) is False


def test_has_changed_since_ignores_untracked(
    db: VersionedSQLAlchemy, make_user: Any, utcnow: Any
) -> None:
    """An untracked change does not count for ``has_changed_since``."""
    user = make_user()
    since = utcnow()
    user.login_count = 42
    db.session.commit()
    assert user.has_changed_since(since) is False


def test_has_changed_since_counts_hidden(
    db: VersionedSQLAlchemy, make_user: Any, utcnow: Any
) -> None:
    """A hidden change counts for ``has_changed_since``."""
    user = make_user()
    since = utcnow()
    user.password = "changed"
    db.session.commit()
    assert user.has_changed_since(since) is True


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00+00:00", 1700000000, None])
def test_has_changed_since_rejects_non_datetime(user3: Any, value: Any) -> None:
    """A non-datetime argument to ``has_changed_since`` raises ``TypeError``."""
    with pytest.raises(TypeError):
        user3.has_changed_since(value)


# history records are read-only views


def test_history_hidden_attribute_error(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Reading a hidden attribute of a history record raises ``HiddenAttributeError``."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    with pytest.raises(HiddenAttributeError):
        _ = user.versions()[0].password


def test_history_untracked_attribute_error(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Reading an untracked attribute of a history record raises ``UntrackedAttributeError``."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    with pytest.raises(UntrackedAttributeError):
        _ = user.versions()[0].login_count


def test_history_hidden_untracked_are_attribute_errors(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Hidden and untracked attributes look absent to ``hasattr``/``getattr`` defaults."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    first = user.versions()[0]
    assert not hasattr(first, "password")
    assert getattr(first, "login_count", "default") == "default"


def test_history_record_read_only(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Setting an attribute of a history record raises ``ChrononautException``."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    with pytest.raises(ChrononautException):
        user.versions()[0].name = "mallory"


def test_history_record_unchanged_after_failed_set(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A refused set on a history record leaves the stored history untouched."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.commit()
    first = user.versions()[0]
    with pytest.raises(ChrononautException):
        first.name = "mallory"
    db.session.commit()
    assert [r["name"] for r in history_rows("appuser_history")] == ["alice"]


# diff()


def test_diff_to_current(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``diff(h)`` maps each differing tracked attribute to (history value, current value)."""
    user = make_user(name="alice", email="a@example.com")
    user.name = "bob"
    db.session.commit()
    user.email = "b@example.com"
    db.session.commit()
    assert user.diff(user.versions()[0]) == {
        "name": ("alice", "bob"),
        "email": ("a@example.com", "b@example.com"),
    }


def test_diff_between_versions(user3: Any) -> None:
    """``diff(h, to)`` compares two history records of the record."""
    first, _, third = user3.versions()
    assert user3.diff(first, third) == {"name": ("alice", "carol")}


def test_diff_same_version_empty(user3: Any) -> None:
    """``diff(h, h)`` is empty."""
    first = user3.versions()[0]
    assert user3.diff(first, first) == {}


def test_diff_excludes_untracked_and_hidden(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``diff`` leaves out untracked and hidden columns by default."""
    user = make_user(name="alice", password="p1", login_count=0)
    user.name = "bob"
    user.password = "p2"
    user.login_count = 3
    db.session.commit()
    assert user.diff(user.versions()[0]) == {"name": ("alice", "bob")}


def test_diff_include_hidden(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``include_hidden=True`` adds changed hidden columns as ``(None, None)``."""
    user = make_user(name="alice", password="p1")
    user.password = "p2"
    db.session.commit()
    user.name = "bob"
    db.session.commit()
    assert user.diff(user.versions()[0], include_hidden=True) == {
        "name": ("alice", "bob"),
        "password": (None, None),
    }


def test_diff_include_hidden_only_in_between(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``include_hidden`` lists only hidden columns changed between the two versions."""
    user = make_user(name="alice", password="p1")
    user.password = "p2"
    db.session.commit()
    user.name = "bob"
    db.session.commit()
    user.name = "carol"
    db.session.commit()
    _, second, third = user.versions()
    assert user.diff(second, third, include_hidden=True) == {"name": ("alice", "bob")}
    assert user.diff(second, include_hidden=True) == {"name": ("alice", "carol")}


def test_diff_backwards_rejected(user3: Any) -> None:
    """``diff`` with ``from_model`` newer than ``to`` raises ``ChrononautException``."""
    first, _, third = user3.versions()
    with pytest.raises(ChrononautException):
        user3.diff(third, first)


def test_diff_other_record_rejected(db: VersionedSQLAlchemy, make_user: Any, user3: Any) -> None:
    """``diff`` with another record's history raises ``ChrononautException``."""
    other = make_user(name="zed")
    other.name = "zed2"
    db.session.commit()
    with pytest.raises(ChrononautException):
        user3.diff(other.versions()[0])


def test_diff_to_other_record_rejected(db: VersionedSQLAlchemy, make_user: Any, user3: Any) -> None:
    """``diff`` with ``to`` from another record raises ``ChrononautException``."""
    other = make_user(name="zed")
    other.name = "zed2"
    db.session.commit()
    with pytest.raises(ChrononautException):
        user3.diff(user3.versions()[0], other.versions()[0])


def test_diff_non_history_rejected(user3: Any) -> None:
    """``diff`` with a live record as ``from_model`` raises ``ChrononautException``."""
    with pytest.raises(ChrononautException):
        user3.diff(user3)


# restore()


@pytest.fixture()
def edited(db: VersionedSQLAlchemy, make_user: Any) -> Any:
    """A user whose tracked, hidden and untracked columns all changed once (version 1)."""
    user = make_user(name="alice", email="a@example.com", password="p1", login_count=1)
    user.name = "bob"
    user.email = "b@example.com"
    user.password = "p2"
    user.login_count = 5
    db.session.commit()
    return user


def test_restore_tracked_values(edited: Any) -> None:
    """``restore(version)`` sets the tracked columns to that version's values."""
    edited.restore(0)
    assert (edited.name, edited.email) == ("alice", "a@example.com")


def test_restore_keeps_hidden_and_untracked(edited: Any) -> None:
    """``restore`` leaves hidden and untracked columns at their current values."""
    edited.restore(0)
    assert (edited.password, edited.login_count) == ("p2", 5)


def test_restore_accepts_history_record(edited: Any) -> None:
    """``restore`` accepts a history record as well as a version number."""
    edited.restore(edited.versions()[0])
    assert (edited.name, edited.email) == ("alice", "a@example.com")


def test_restore_does_not_commit(db: VersionedSQLAlchemy, edited: Any, history_rows: Any) -> None:
    """``restore`` does not commit: a rollback undoes it."""
    edited.restore(0)
    assert edited in db.session.dirty
    db.session.rollback()
    assert (edited.name, edited.version) == ("bob", 1)
    assert len(history_rows("appuser_history")) == 1


def test_restore_writes_history(db: VersionedSQLAlchemy, edited: Any) -> None:
    """A flushed restore is a normal change: it writes history and bumps ``version``."""
    edited.restore(0)
    db.session.commit()
    assert [(h.version, h.name) for h in edited.versions()] == [(0, "alice"), (1, "bob")]
    assert (edited.version, edited.name) == (2, "alice")


def test_restore_missing_version(edited: Any) -> None:
    """``restore`` of a version that does not exist raises ``ChrononautException``."""
    with pytest.raises(ChrononautException):
        edited.restore(99)


def test_restore_current_version_number(edited: Any) -> None:
    """``restore`` of the live version number (no history row) raises ``ChrononautException``."""
    with pytest.raises(ChrononautException):
        edited.restore(1)


def test_restore_missing_version_changes_nothing(db: VersionedSQLAlchemy, edited: Any) -> None:
    """A failed ``restore`` leaves the record unmodified."""
    with pytest.raises(ChrononautException):
        edited.restore(99)
    assert edited not in db.session.dirty
    assert (edited.name, edited.email) == ("bob", "b@example.com")
