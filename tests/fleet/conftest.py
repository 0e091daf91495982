"""Fixtures of the fleet tests: an app whose pool holds a single connection.

The "other" party (another app server) is a plain session on an engine of its
own, so every connection the app under test uses comes from its pool of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from chrononaut import Versioned, VersionedSQLAlchemy, versioned_session


@pytest.fixture()
def Item(small_db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned item with rows 1..3 at ``n = 0`` and a hidden column."""

    class Item(small_db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "fleet_item"
        __chrononaut_hidden__ = ["secret"]
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False, default=0)
        state = sa.Column(sa.String(20), nullable=False, default="queued")
        secret = sa.Column(sa.String(50))

    small_db.create_all()
    small_db.session.add_all([Item(id=i, n=0, secret="pw") for i in (1, 2, 3)])
    small_db.session.commit()
    small_db.session.remove()
    return Item


@pytest.fixture()
def elsewhere(database_url: str) -> Iterator[Callable[[], Session]]:
    """Sessions of another app server: versioned, on an engine of their own."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    maker = versioned_session(sessionmaker(engine))
    made: list[Session] = []

    def make() -> Session:
        session = maker()
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()
    engine.dispose()
