"""Fixtures of the locking tests: a lockable model, sessions and raw connections.

Concurrency is real: every "other" party is its own session on its own
connection (often in its own thread), and commits are real commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import VersionedSQLAlchemy
from chrononaut.locking import LockableMixin


@pytest.fixture()
def Counter(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A plain (non-Versioned) model with LockableMixin, two rows committed."""

    class Counter(db.Model, LockableMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_counter"
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False, default=0)
        note = sa.Column(sa.String(50))

    db.create_all()
    db.session.add_all([Counter(id=1, n=0), Counter(id=2, n=0), Counter(id=3, n=0)])
    db.session.commit()
    yield Counter


@pytest.fixture()
def new_session(db: VersionedSQLAlchemy) -> Iterator[Callable[[], Session]]:
    """Make extra sessions (each on its own connection) like the app's; closed at the end."""
    made: list[Session] = []

    def make() -> Session:
        session = db.session.session_factory()
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture()
def raw_engine(database_url: str) -> Iterator[sa.Engine]:
    """A plain engine (no ORM, no Chrononaut) for outside parties and inspection."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture()
def admin(raw_engine: sa.Engine) -> Iterator[sa.Connection]:
    """An autocommit connection for looking at pg_locks and killing backends."""
    with raw_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn
