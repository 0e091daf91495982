"""Fixtures of the edit-lease tests: a leased model, other sessions, statement counts.

Every "other user" is a session of its own (its own connection and transaction)
made by the app's session factory; commits are real commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import Versioned, VersionedSQLAlchemy


@pytest.fixture()
def Doc(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A leased Versioned model (hidden and untracked columns), rows 1-3 committed."""

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lease_doc"
        __chrononaut_leases__ = True
        __chrononaut_hidden__ = ["secret"]
        __chrononaut_untracked__ = ["views"]
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(50), nullable=False, default="")
        secret = sa.Column(sa.String(50))
        views = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add_all([Doc(id=i, title=f"t{i}") for i in (1, 2, 3)])
    db.session.commit()
    yield Doc


@pytest.fixture()
def Plain(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A Versioned model without leases, rows 1-3 committed."""

    class Plain(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lease_plain"
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(50), nullable=False, default="")

    db.create_all()
    db.session.add_all([Plain(id=i, title=f"t{i}") for i in (1, 2, 3)])
    db.session.commit()
    yield Plain


@pytest.fixture()
def new_session(db: VersionedSQLAlchemy) -> Iterator[Callable[[], Session]]:
    """Make extra sessions like the app's (each its own connection); closed at the end."""
    made: list[Session] = []

    def make() -> Session:
        session = db.session.session_factory()
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture()
def statements(db: VersionedSQLAlchemy) -> Iterator[list[str]]:
    """SQL statements sent on the app's engine while the test runs."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(engine, "before_cursor_execute", record)
