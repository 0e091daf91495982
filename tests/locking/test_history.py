"""Lock facts in history: ``change_info["lock"]`` (SPEC §3, §4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as, lock_all
from chrononaut.locking._common import held_row_lock as lock_info_for


@pytest.fixture()
def Account(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A Versioned model with two committed rows."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_account"
        id = sa.Column(sa.Integer, primary_key=True)
        balance = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add_all([Account(id=1, balance=100), Account(id=2, balance=100)])
    db.session.commit()
    yield Account


def test_change_under_lock_records_the_lock(db: Any, Account: Any) -> None:
    """A change made while locked carries user, mode and acquired time of the lock."""
    acct = db.session.get(Account, 1)
    before = dt.datetime.now(dt.timezone.utc)
    with acting_as("olga"), acct.lock("no_key_update"):
        acct.balance -= 10
    lock = acct.versions()[-1].change_info["lock"]
    assert (lock["user_id"], lock["mode"]) == ("olga", "no_key_update")
    acquired = dt.datetime.fromisoformat(lock["acquired_at"])
    assert acquired.utcoffset() == dt.timedelta(0)
    assert before <= acquired <= dt.datetime.now(dt.timezone.utc)


def test_change_without_lock_has_no_lock_key(db: Any, Account: Any) -> None:
    """A change made without a Chrononaut lock has no "lock" in change_info."""
    acct = db.session.get(Account, 1)
    acct.balance = 1
    db.session.commit()
    assert "lock" not in acct.versions()[-1].change_info


def test_only_the_locked_record_gets_lock_facts(db: Any, Account: Any) -> None:
    """Another record changed in the same lock block has no "lock" entry."""
    one, two = db.session.get(Account, 1), db.session.get(Account, 2)
    with one.lock():
        one.balance -= 5
        two.balance += 5
    assert "lock" in one.versions()[-1].change_info
    assert "lock" not in two.versions()[-1].change_info


def test_lock_facts_end_with_the_transaction(db: Any, Account: Any) -> None:
    """After the locking transaction ends, later changes carry no lock facts."""
    acct = db.session.get(Account, 1)
    with acct.lock(commit=False):
        pass
    db.session.rollback()
    acct.balance = 3
    db.session.commit()
    assert "lock" not in acct.versions()[-1].change_info


def test_lock_all_records_lock_facts(db: Any, Account: Any) -> None:
    """Records locked by lock_all() carry lock facts too."""
    recs = [db.session.get(Account, 1), db.session.get(Account, 2)]
    with acting_as("pat"), lock_all(recs, mode="update"):
        for rec in recs:
            rec.balance += 1
    for rec in recs:
        assert rec.versions()[-1].change_info["lock"]["user_id"] == "pat"


def test_lock_info_for_keeps_the_strongest_mode(db: Any, Account: Any) -> None:
    """Locking a row twice in one transaction keeps the stronger mode's facts."""
    acct = db.session.get(Account, 1)
    state = sa.inspect(acct)
    assert lock_info_for(db.session(), state) is None
    with acct.lock("share", commit=False):
        with acct.lock("update"):
            pass
        with acct.lock("key_share"):
            pass
        info = lock_info_for(db.session(), state)
    assert info is not None and info["mode"] == "update"
    db.session.commit()
    assert lock_info_for(db.session(), state) is None


def test_failed_block_writes_no_history(db: Any, Account: Any) -> None:
    """An exception inside the block leaves neither the change nor a history row."""
    acct = db.session.get(Account, 1)
    with pytest.raises(RuntimeError), acct.lock():
        acct.balance = 0
        db.session.flush()
        raise RuntimeError
    assert acct.balance == 100
    assert acct.versions() == []


def test_lock_taken_in_rolled_back_savepoint_is_not_recorded(db: Any, Account: Any) -> None:
    """A row lock taken inside a savepoint that rolls back is released by the
    server: the record's next history row does not claim it, and a lock taken
    before the savepoint (weaker, then strengthened inside it) is claimed again."""
    first, second = db.session.get(Account, 1), db.session.get(Account, 2)
    with acting_as("olga"), first.lock("share", commit=False):
        savepoint = db.session.begin_nested()
        with second.lock(commit=False), first.lock(commit=False):
            pass
        savepoint.rollback()
        first.balance -= 1
        second.balance -= 1
        db.session.commit()
    assert "lock" not in second.versions()[-1].change_info
    assert first.versions()[-1].change_info["lock"]["mode"] == "share"


def test_lock_taken_in_released_savepoint_is_recorded(db: Any, Account: Any) -> None:
    """A savepoint that is released keeps its locks: they are recorded."""
    record = db.session.get(Account, 1)
    with acting_as("olga"):
        with db.session.begin_nested():
            with record.lock(commit=False):
                pass
        record.balance -= 1
        db.session.commit()
    assert record.versions()[-1].change_info["lock"]["mode"] == "update"
