"""Shared models and helpers for the optimistic-concurrency tests (SPEC §5).

Every test works with two real sessions of one ``VersionedSQLAlchemy``: the
request-scoped ``db.session`` ("alice") and ``other`` ("bob", a session of its
own from ``db.session.session_factory()``), each with its own connection and
transaction, and real commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import Versioned, VersionedSQLAlchemy

SECRET = "s3cr3t-value-never-shown"


@pytest.fixture()
def Doc(db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned document with a hidden and an untracked column, tables created."""

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "doc"
        __chrononaut_hidden__ = ["secret"]
        __chrononaut_untracked__ = ["views"]

        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(80), nullable=False)
        body = db.Column(db.Text(), nullable=False, default="")
        secret = db.Column(db.Text())
        views = db.Column(db.Integer(), nullable=False, default=0)

    db.create_all()
    return Doc


@pytest.fixture()
def make_doc(db: VersionedSQLAlchemy, Doc: type[Any]) -> Callable[..., Any]:
    """Create and commit a ``Doc`` (version 0); returns it, loaded in ``db.session``."""

    def make(**values: Any) -> Any:
        values.setdefault("title", "draft")
        values.setdefault("body", "text")
        values.setdefault("secret", SECRET)
        doc = Doc(**values)
        db.session.add(doc)
        db.session.commit()
        _ = doc.version  # load it again after the commit expired it
        return doc

    return make


@pytest.fixture()
def other(db: VersionedSQLAlchemy) -> Iterator[Session]:
    """A second session of the same ``db``: its own connection and transaction."""
    session = db.session.session_factory()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture()
def committed(db: VersionedSQLAlchemy) -> Callable[[str], list[dict[str, Any]]]:
    """Run SQL on a connection of its own: what is committed, whatever the sessions hold."""

    def read(sql: str) -> list[dict[str, Any]]:
        with db.engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.text(sql)).mappings()]

    return read
