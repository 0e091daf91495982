"""The locking features through psycopg 3 (``postgresql+psycopg://``), plain SQLAlchemy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chrononaut import (
    LockNotAvailableError,
    LockTimeoutError,
    RecordLockedError,
    acting_as,
    advisory_lock,
    lock_all,
)
from chrononaut.locking import LockableMixin


class Base(DeclarativeBase):
    """Metadata of this module only."""


class Item(Base, LockableMixin):
    """A lockable row."""

    __tablename__ = "lock_pg3_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


@pytest.fixture()
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a psycopg 3 engine, with two committed items."""
    url = sa.make_url(database_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    made = sessionmaker(engine)
    with made.begin() as session:
        session.add_all([Item(id=1), Item(id=2)])
    yield made
    Base.metadata.drop_all(engine)
    engine.dispose()


def test_row_lock_nowait_timeout_and_holder(factory: Any) -> None:
    """lock(), nowait, timeout and holders work with psycopg 3."""
    mine, theirs = factory(), factory()
    try:
        rec = mine.get(Item, 1)
        other = theirs.get(Item, 1)
        with acting_as("sam"), rec.lock():
            rec.n += 1
            with pytest.raises(RecordLockedError) as caught, other.lock(nowait=True):
                pass
            assert caught.value.holder is not None and caught.value.holder.user_id == "sam"
            with pytest.raises(LockTimeoutError), other.lock(timeout=0.05):
                pass
            assert theirs.execute(sa.text("SHOW lock_timeout")).scalar() == "0"
            theirs.rollback()
        with other.lock():
            assert other.n == 1
        with lock_all([mine.get(Item, 2), rec]) as both:
            assert [r.id for r in both] == [1, 2]
    finally:
        mine.close()
        theirs.close()


def test_advisory_locks_and_lock_next(factory: Any) -> None:
    """Advisory locks of both scopes and lock_next() work with psycopg 3."""
    mine, theirs = factory(), factory()
    try:
        with advisory_lock("pg3", session=mine):
            with pytest.raises(LockNotAvailableError):
                with advisory_lock("pg3", nowait=True, session=theirs):
                    pass
            with pytest.raises(LockTimeoutError):
                with advisory_lock("pg3", timeout=0.05, session=theirs):
                    pass
        with advisory_lock("pg3-session", scope="session", session=mine, timeout=1):
            pass
        with Item.lock_next(Item.n == 0, session=mine) as item:
            assert item is not None and item.id == 1
    finally:
        mine.close()
        theirs.close()
