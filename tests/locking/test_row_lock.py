"""``record.lock()``: entry, refresh, exit semantics, modes, nowait and timeouts (SPEC §4)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import (
    ChrononautException,
    LockTimeoutError,
    RecordLockedError,
    acting_as,
)


def _n(session: Any, Counter: Any, pk: int = 1) -> int:
    value = session.execute(sa.select(Counter.n).where(Counter.id == pk)).scalar()
    session.rollback()
    return int(value)


def test_normal_exit_commits(db: Any, Counter: Any, new_session: Any) -> None:
    """The outermost block commits on normal exit: another session sees the change."""
    rec = db.session.get(Counter, 1)
    with rec.lock() as locked:
        assert locked is rec
        rec.n = 5
    assert not db.session().in_transaction()
    assert _n(new_session(), Counter) == 5


def test_entry_refreshes_every_column_from_the_locked_row(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """Columns changed and committed elsewhere after loading are fresh inside the block."""
    rec = db.session.get(Counter, 1)
    assert rec.n == 0
    other = new_session()
    theirs = other.get(Counter, 1)
    theirs.n, theirs.note = 7, "theirs"
    other.commit()
    with rec.lock():
        assert (rec.n, rec.note) == (7, "theirs")


def test_waiter_sees_the_holders_committed_change(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """A block that waited for the lock works on the value the holder committed."""
    holder = new_session()
    held = holder.get(Counter, 1)
    seen: list[int] = []
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    mine = waiter.get(Counter, 1)

    with held.lock():

        def wait() -> None:
            with mine.lock():
                seen.append(mine.n)
                mine.n += 1

        worker = Worker(app, wait)
        wait_until_waiting(admin, waiter_pid)
        held.n += 10
    worker.join()
    assert seen == [10]
    assert _n(new_session(), Counter) == 11


def test_exception_rolls_back_and_reraises(db: Any, Counter: Any, new_session: Any) -> None:
    """An exception in the outermost block rolls back its changes and propagates."""
    rec = db.session.get(Counter, 1)
    with pytest.raises(KeyError), rec.lock():
        rec.n = 99
        db.session.flush()
        raise KeyError("boom")
    assert _n(new_session(), Counter) == 0
    assert db.session.get(Counter, 1).n == 0


def test_nested_block_does_not_commit(db: Any, Counter: Any, new_session: Any) -> None:
    """An inner block's exit does not commit; the outer block's exit does."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    watcher = new_session()
    with one.lock():
        with two.lock():
            two.n = 3
        assert db.session().in_transaction()
        assert _n(watcher, Counter, 2) == 0
    assert _n(watcher, Counter, 2) == 3


def test_nested_block_exception_does_not_roll_back(db: Any, Counter: Any, new_session: Any) -> None:
    """An exception leaving an inner block leaves the outer transaction alone."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    with one.lock():
        one.n = 1
        with pytest.raises(ValueError), two.lock():
            two.n = 2
            raise ValueError
        assert db.session().in_transaction()
    other = new_session()
    assert (_n(other, Counter, 1), _n(other, Counter, 2)) == (1, 2)


def test_commit_false_keeps_the_transaction_open(db: Any, Counter: Any, new_session: Any) -> None:
    """With commit=False the lock and the changes stay in the open transaction."""
    rec = db.session.get(Counter, 1)
    with rec.lock(commit=False):
        rec.n = 4
    assert db.session().in_transaction()
    theirs = new_session().get(Counter, 1)
    with pytest.raises(RecordLockedError), theirs.lock(nowait=True):
        pass
    db.session.commit()
    assert _n(new_session(), Counter) == 4


def test_entry_flushes_pending_changes(db: Any, Counter: Any) -> None:
    """Pending changes of the session are flushed before the row is locked."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    two.note = "pending"
    with one.lock():
        assert not db.session.dirty
        in_db = db.session.execute(sa.text("SELECT note FROM lock_counter WHERE id = 2")).scalar()
        assert in_db == "pending"


@pytest.mark.parametrize(
    ("held", "wanted", "conflict"),
    [
        ("update", "key_share", True),
        ("no_key_update", "key_share", False),
        ("no_key_update", "share", True),
        ("share", "share", False),
        ("share", "no_key_update", True),
        ("key_share", "no_key_update", False),
        ("key_share", "update", True),
    ],
)
def test_modes_conflict_like_postgresql_row_locks(
    db: Any, Counter: Any, new_session: Any, held: str, wanted: str, conflict: bool
) -> None:
    """Each mode takes the matching FOR ... lock (checked through conflicts)."""
    rec = db.session.get(Counter, 1)
    theirs = new_session().get(Counter, 1)
    with rec.lock(held):
        if conflict:
            with pytest.raises(RecordLockedError), theirs.lock(wanted, nowait=True):
                pass
        else:
            with theirs.lock(wanted, nowait=True):
                pass


def test_nowait_raises_with_holder_and_keeps_transaction_usable(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """nowait: RecordLockedError names the holder; the waiter's transaction still works."""
    holder_session = new_session()
    holder_pid = backend_pid(holder_session)
    held = holder_session.get(Counter, 1)
    mine_one, mine_two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    with acting_as("alice"), held.lock():
        mine_two.n = 2
        db.session.flush()
        with pytest.raises(RecordLockedError) as caught, mine_one.lock(nowait=True):
            pass
        # The failed attempt did not abort the transaction.
        assert db.session.execute(sa.text("SELECT 1")).scalar() == 1
        db.session.commit()
    holder = caught.value.holder
    assert holder is not None
    assert (holder.user_id, holder.pid) == ("alice", holder_pid)
    assert holder.since is not None and holder.since.tzinfo is not None
    assert "alice" in str(caught.value)
    assert _n(new_session(), Counter, 2) == 2


def test_holder_without_a_user_is_named_anonymous(db: Any, Counter: Any, new_session: Any) -> None:
    """A lock error names a holder without an acting user with the one word for no user."""
    held = new_session().get(Counter, 1)
    mine = db.session.get(Counter, 1)
    with held.lock():
        with pytest.raises(RecordLockedError) as caught, mine.lock(nowait=True):
            pass
    assert caught.value.holder is not None and caught.value.holder.user_id is None
    assert "held by anonymous" in str(caught.value)
    db.session.rollback()


def test_timeout_raises_after_the_timeout_with_holder(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """timeout: LockTimeoutError after about that long, with the holder."""
    held = new_session().get(Counter, 1)
    mine = db.session.get(Counter, 1)
    with acting_as(42), held.lock():
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught, mine.lock(timeout=0.2):
            pass
        elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 2
    assert caught.value.holder is not None
    assert caught.value.holder.user_id == "42"


def test_timeout_restores_lock_timeout(db: Any, Counter: Any, new_session: Any) -> None:
    """lock_timeout is set for the attempt only: the previous value is back afterwards."""
    rec = db.session.get(Counter, 1)
    db.session.execute(sa.text("SET LOCAL lock_timeout = '7s'"))
    with rec.lock(timeout=0.5, commit=False):
        assert db.session.execute(sa.text("SHOW lock_timeout")).scalar() == "7s"
    held = new_session().get(Counter, 2)
    two = db.session.get(Counter, 2)
    with held.lock():
        with pytest.raises(LockTimeoutError), two.lock(timeout=0.05, commit=False):
            pass
        assert db.session.execute(sa.text("SHOW lock_timeout")).scalar() == "7s"
    db.session.rollback()


def test_timeout_lock_is_granted_when_free_in_time(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """A lock released within the timeout is granted."""
    holder = new_session()
    held = holder.get(Counter, 1)
    waiter = new_session()
    pid = backend_pid(waiter)
    mine = waiter.get(Counter, 1)
    got: list[bool] = []

    def wait() -> None:
        with mine.lock(timeout=5):
            got.append(True)

    with held.lock():
        worker = Worker(app, wait)
        wait_until_waiting(admin, pid)
    worker.join()
    assert got == [True]


def test_row_deleted_by_another_transaction(db: Any, Counter: Any, new_session: Any) -> None:
    """Locking a record whose row another transaction deleted: ChrononautException."""
    rec = db.session.get(Counter, 1)
    other = new_session()
    other.delete(other.get(Counter, 1))
    other.commit()
    with pytest.raises(ChrononautException, match="deleted by another transaction"):
        with rec.lock():
            pass


def test_lock_attempt_runs_in_a_savepoint_keeping_earlier_locks(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """A failed nowait attempt keeps the locks the transaction already holds."""
    one, two = db.session.get(Counter, 1), db.session.get(Counter, 2)
    held = new_session().get(Counter, 2)
    other = new_session().get(Counter, 1)
    with held.lock(), one.lock():
        with pytest.raises(RecordLockedError), two.lock(nowait=True):
            pass
        with pytest.raises(RecordLockedError), other.lock(nowait=True):
            pass


def test_deferred_columns_are_fresh_inside_the_block(db: Any, new_session: Any) -> None:
    """A deferred column loaded before the lock is not stale inside the block."""
    from chrononaut.locking import LockableMixin

    class Doc(db.Model, LockableMixin):  # type: ignore[misc]
        __tablename__ = "lock_doc"
        id = sa.Column(sa.Integer, primary_key=True)
        body = sa.orm.deferred(sa.Column(sa.Text))

    db.create_all()
    db.session.add(Doc(id=1, body="old"))
    db.session.commit()
    doc = db.session.get(Doc, 1)
    assert doc.body == "old"
    other = new_session()
    other.get(Doc, 1).body = "new"
    other.commit()
    with doc.lock():
        assert doc.body == "new"


def test_joined_inheritance_record_is_locked_and_refreshed(db: Any, new_session: Any) -> None:
    """A joined-table subclass record: both tables' columns are refreshed; holder found."""
    from chrononaut.locking import LockableMixin

    class Base_(db.Model, LockableMixin):  # type: ignore[misc]
        __tablename__ = "lock_base"
        id = sa.Column(sa.Integer, primary_key=True)
        kind = sa.Column(sa.String(10))
        name = sa.Column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "base"}

    class Sub(Base_):
        __tablename__ = "lock_sub"
        id = sa.Column(sa.Integer, sa.ForeignKey("lock_base.id"), primary_key=True)
        extra = sa.Column(sa.String(20))
        __mapper_args__ = {"polymorphic_identity": "sub"}

    db.create_all()
    db.session.add(Sub(id=1, name="a", extra="x"))
    db.session.commit()
    rec = db.session.get(Sub, 1)
    assert (rec.name, rec.extra) == ("a", "x")
    other = new_session()
    theirs = other.get(Sub, 1)
    theirs.name, theirs.extra = "b", "y"
    other.commit()
    with acting_as("una"), rec.lock():
        assert (rec.name, rec.extra) == ("b", "y")
        holder = new_session().get(Base_, 1).lock_holder()
    assert holder is not None and holder.user_id == "una"
