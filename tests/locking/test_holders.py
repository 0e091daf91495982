"""Who holds a lock: ``record.lock_holder()`` and the ``holder`` of lock errors."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import backend_pid

from chrononaut import LockHolder, RecordLockedError, acting_as


def test_no_holder_when_the_row_is_free(db: Any, Counter: Any) -> None:
    """lock_holder() of an unlocked row is None."""
    assert db.session.get(Counter, 1).lock_holder() is None


def test_holder_of_a_chrononaut_lock(db: Any, Counter: Any, new_session: Any) -> None:
    """A lock taken through Chrononaut shows its user, pid and since."""
    holder_session = new_session()
    pid = backend_pid(holder_session)
    rec = holder_session.get(Counter, 1)
    watcher = db.session.get(Counter, 1)
    with acting_as("ivy"), rec.lock():
        found = watcher.lock_holder()
    assert isinstance(found, LockHolder)
    assert (found.user_id, found.pid) == ("ivy", pid)
    assert found.since is not None and found.since.tzinfo is not None
    assert found.as_dict()["user_id"] == "ivy"


def test_holder_of_a_lock_taken_with_nowait_inside_a_savepoint(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """A lock taken in a (released) savepoint is still attributed to its holder."""
    holder_session = new_session()
    pid = backend_pid(holder_session)
    rec = holder_session.get(Counter, 2)
    with acting_as("jack"), rec.lock(nowait=True):
        found = db.session.get(Counter, 2).lock_holder()
    assert found == LockHolder("jack", pid, found.since if found else None)


def test_holder_of_a_lock_taken_outside_chrononaut(db: Any, Counter: Any, raw_engine: Any) -> None:
    """A plain SELECT ... FOR UPDATE elsewhere: pid known, user None."""
    with raw_engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        conn.execute(sa.text("SELECT * FROM lock_counter WHERE id = 3 FOR UPDATE"))
        rec = db.session.get(Counter, 3)
        found = rec.lock_holder()
        assert found is not None and (found.user_id, found.pid) == (None, pid)
        with pytest.raises(RecordLockedError) as caught, rec.lock(nowait=True):
            pass
        assert caught.value.holder is not None and caught.value.holder.pid == pid
        conn.rollback()
    db.session.rollback()


def test_own_lock_is_reported_by_lock_holder(db: Any, Counter: Any) -> None:
    """lock_holder() inside your own lock block names your own backend."""
    rec = db.session.get(Counter, 1)
    with acting_as("kim"), rec.lock(commit=False):
        found = rec.lock_holder()
        assert found is not None
        assert (found.user_id, found.pid) == ("kim", backend_pid(db.session()))
    db.session.rollback()


def test_holder_seen_by_a_transaction_that_looked_before(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """A long transaction sees current holders (its activity snapshot is refreshed)."""
    rec = db.session.get(Counter, 1)
    assert rec.lock_holder() is None
    other = new_session()
    with acting_as("lee"), other.get(Counter, 1).lock():
        found = rec.lock_holder()
    assert found is not None and found.user_id == "lee"
    db.session.rollback()


def test_shared_lock_holders(db: Any, Counter: Any, new_session: Any) -> None:
    """With several FOR SHARE holders, an update attempt names one of them."""
    first, second = new_session(), new_session()
    pids = {backend_pid(first), backend_pid(second)}
    with acting_as("m1"), first.get(Counter, 1).lock("share"):
        with acting_as("m2"), second.get(Counter, 1).lock("share"):
            with pytest.raises(RecordLockedError) as caught:
                with db.session.get(Counter, 1).lock(nowait=True):
                    pass
    holder = caught.value.holder
    assert holder is not None and holder.pid in pids and holder.user_id in {"m1", "m2"}


@pytest.mark.parametrize("user_id", ["ünïcode user", "a:b/c%d", "x" * 40, "mail@example.com", "42"])
def test_user_ids_round_trip(db: Any, Counter: Any, new_session: Any, user_id: str) -> None:
    """User ids survive the trip through application_name (escaped, not mangled)."""
    other = new_session()
    with acting_as(user_id), other.get(Counter, 1).lock():
        found = db.session.get(Counter, 1).lock_holder()
    assert found is not None and found.user_id == user_id
    db.session.rollback()


def test_very_long_user_ids_are_marked_truncated(db: Any, Counter: Any, new_session: Any) -> None:
    """A user id too long for application_name comes back cut, ending in an ellipsis."""
    long_id = "u" * 100
    other = new_session()
    with acting_as(long_id), other.get(Counter, 1).lock():
        found = db.session.get(Counter, 1).lock_holder()
    assert found is not None and found.user_id is not None
    assert found.user_id.endswith("…") and long_id.startswith(found.user_id[:-1])
    db.session.rollback()


@pytest.mark.parametrize("long_id", ["日本語ユーザー", "é" * 30, "x" * 50 + "ü" * 3])
def test_long_multibyte_user_ids_cut_between_characters(
    db: Any, Counter: Any, new_session: Any, long_id: str
) -> None:
    """A user id whose encoded form is too long is cut between two characters: the
    part reported is a prefix of the id, never a broken character."""
    other = new_session()
    with acting_as(long_id), other.get(Counter, 1).lock():
        found = db.session.get(Counter, 1).lock_holder()
    assert found is not None and found.user_id is not None
    assert found.user_id.endswith("…") and "\ufffd" not in found.user_id
    assert long_id.startswith(found.user_id[:-1]) and len(found.user_id) > 1
    db.session.rollback()


def test_holder_found_for_composite_and_string_keys(db: Any, new_session: Any) -> None:
    """Rows with composite or string primary keys have holders too (hashed markers)."""
    from chrononaut.locking import LockableMixin

    class Pair(db.Model, LockableMixin):  # type: ignore[misc]
        __tablename__ = "lock_pair"
        a = sa.Column(sa.String(10), primary_key=True)
        b = sa.Column(sa.Integer, primary_key=True)

    db.create_all()
    db.session.add(Pair(a="x", b=1))
    db.session.commit()
    other = new_session()
    with acting_as("nina"), other.get(Pair, ("x", 1)).lock(nowait=True):
        found = db.session.get(Pair, ("x", 1)).lock_holder()
    assert found is not None and found.user_id == "nina"
    db.session.rollback()


def test_holder_user_comes_from_flask_login(
    app: Any, db: Any, Counter: Any, new_session: Any
) -> None:
    """Inside a request, the holder is Flask-Login's current user."""
    from flask_login import LoginManager, UserMixin, login_user

    class User(UserMixin):  # type: ignore[misc]  # Flask-Login ships no type hints
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager = LoginManager(app)
    manager.user_loader(User)
    watcher = db.session.get(Counter, 1)
    with app.test_request_context("/"):
        login_user(User("web-7"))
        session = new_session()
        with session.get(Counter, 1).lock():
            found = watcher.lock_holder()
    assert found is not None and found.user_id == "web-7"
    db.session.rollback()


def test_a_waiter_does_not_hold_the_marker(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """While a waiter waits for a row, only the holder holds the row's marker lock."""
    from locking_helpers import Worker, wait_until_waiting

    holder_session = new_session()
    holder_pid = backend_pid(holder_session)
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    theirs = waiter.get(Counter, 1)

    def wait() -> None:
        with theirs.lock():
            pass

    with holder_session.get(Counter, 1).lock():
        worker = Worker(app, wait)
        wait_until_waiting(admin, waiter_pid)
        pids = (
            admin.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                    "AND classid = 'lock_counter'::regclass AND granted"
                )
            )
            .scalars()
            .all()
        )
    worker.join()
    assert pids == [holder_pid]


def test_rows_beyond_the_marker_limit_still_have_holders(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """lock_all() of more rows than it takes markers for: holders found through xmax."""
    from chrononaut import lock_all
    from chrononaut.locking._rows import MARKER_LIMIT

    count = MARKER_LIMIT + 6
    db.session.add_all([Counter(id=i, n=0) for i in range(4, count + 1)])
    db.session.commit()
    other = new_session()
    recs = [other.get(Counter, i) for i in range(1, count + 1)]
    with acting_as("vic"), lock_all(recs):
        found = db.session.get(Counter, count).lock_holder()
    assert found is not None and found.user_id == "vic"
    db.session.rollback()
