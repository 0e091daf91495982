"""Table and column names that need quoting — spaces, ``%``, capitals, quotes —
through every feature: flush, delete, bulk statements, history, locks, holders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import RecordLockedError, Versioned, VersionedSQLAlchemy, acting_as, as_of


@pytest.fixture()
def Odd(db: VersionedSQLAlchemy) -> type[Any]:
    """A model on table ``Odd%"Table`` keyed by ``Key Col``, with ``Value Col``;
    rows 1 and 2 committed."""

    class Odd(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = 'Odd%"Table'
        key = db.Column("Key Col", db.Integer, primary_key=True, autoincrement=False)
        value = db.Column("Value Col", db.String(20))
        pct = db.Column("50% off", db.Integer, default=0)

    db.create_all()
    db.session.add_all([Odd(key=1, value="a"), Odd(key=2, value="b")])
    db.session.commit()
    return Odd


@pytest.fixture()
def new_session(db: VersionedSQLAlchemy) -> Iterator[Callable[[], Session]]:
    """Sessions of the app's factory on connections of their own; closed at the end."""
    made: list[Session] = []

    def make() -> Session:
        made.append(db.session.session_factory())
        return made[-1]

    yield make
    for session in made:
        session.close()


def test_update_and_delete_write_history(db: VersionedSQLAlchemy, Odd: Any) -> None:
    """One record's update and delete (the single-row paths) and two records' update."""
    one = cast(Any, db.session.get(Odd, 1))
    one.value, one.pct = "a2", 50
    db.session.commit()
    for record in db.session.scalars(sa.select(Odd)).all():
        record.value += "!"
    db.session.commit()
    db.session.delete(one)
    db.session.commit()
    assert [(v.version, v.value, v.pct) for v in one.versions()] == [
        (0, "a", 0),
        (1, "a2", 50),
        (2, "a2!", 50),
    ]
    assert one.versions()[-1].change_info["deleted"] is True


def test_bulk_statements_and_time_travel(db: VersionedSQLAlchemy, Odd: Any) -> None:
    """ORM bulk UPDATE and DELETE write history; as_of reads the table back."""
    db.session.execute(sa.update(Odd).where(Odd.key == 1).values(value="bulk"))
    db.session.commit()
    between = cast(Any, db.session.get(Odd, 1)).valid_from
    db.session.execute(sa.delete(Odd).where(Odd.key == 2))
    db.session.commit()
    past = as_of(Odd, between)
    assert db.session.execute(sa.select(past.key, past.value).order_by(past.key)).all() == [
        (1, "bulk"),
        (2, "b"),
    ]


def test_row_lock_and_holder(
    db: VersionedSQLAlchemy, Odd: Any, new_session: Callable[[], Session]
) -> None:
    """record.lock() takes the row; another session learns who holds it."""
    record = cast(Any, db.session.get(Odd, 1))
    with acting_as("alice"), record.lock(commit=False):
        other = cast(Any, new_session().get(Odd, 1))
        holder = other.lock_holder()
        assert holder is not None and holder.user_id == "alice"
        with pytest.raises(RecordLockedError):
            with other.lock(nowait=True):
                pass
    db.session.rollback()


def test_advisory_lock_of_record(
    db: VersionedSQLAlchemy, Odd: Any, new_session: Callable[[], Session]
) -> None:
    """record.advisory_lock() works on the quoted table; another session waits."""
    from chrononaut import LockNotAvailableError

    record = cast(Any, db.session.get(Odd, 1))
    with record.advisory_lock(commit=False):
        other = cast(Any, new_session().get(Odd, 1))
        with pytest.raises(LockNotAvailableError):
            with other.advisory_lock(nowait=True):
                pass
    db.session.rollback()
