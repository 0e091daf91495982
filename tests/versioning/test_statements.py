"""How many SQL statements history capture costs, and when mappers configure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from chrononaut import Versioned, VersionedSQLAlchemy


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Collect the SQL statements sent through ``engine`` inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.fast_path
def test_update_of_loaded_record_is_one_statement(db: VersionedSQLAlchemy, User: Any) -> None:
    """Changing a loaded record flushes as one statement that also writes history."""
    user = User(name="alice", email="a@example.com", password="pw", login_count=0)
    db.session.add(user)
    db.session.commit()
    user.name  # noqa: B018 - load the expired record
    with statements(db.engine) as seen:
        user.name = "bob"
        db.session.commit()
    assert seen == ["WITH"]
    assert [h.name for h in user.versions()] == ["alice"]


@pytest.mark.fast_path
def test_assigning_expired_attribute_loads_once(db: VersionedSQLAlchemy, User: Any) -> None:
    """After a commit, setting an attribute loads the row once; the flush adds no SELECT."""
    user = User(name="alice", email="a@example.com", password="pw", login_count=0)
    db.session.add(user)
    db.session.commit()
    with statements(db.engine) as seen:
        user.email = "b@example.com"
        db.session.commit()
    assert seen == ["SELECT", "WITH"]
    assert [h.email for h in user.versions()] == ["a@example.com"]


@pytest.mark.fast_path
def test_many_records_flush_as_one_statement(db: VersionedSQLAlchemy, User: Any) -> None:
    """A flush changing many records of one class sends one statement for all of them."""
    users = [
        User(name=f"u{i}", email=f"u{i}@example.com", password="pw", login_count=0)
        for i in range(20)
    ]
    db.session.add_all(users)
    db.session.commit()
    for user in users:
        user.name  # noqa: B018 - load the expired records
    with statements(db.engine) as seen:
        for user in users:
            user.name = user.name.upper()
        db.session.commit()
    assert seen == ["WITH"]
    assert all(u.version == 1 and u.versions()[0].name == u.name.lower() for u in users)


def test_class_definition_does_not_configure_mappers(db: VersionedSQLAlchemy) -> None:
    """Defining a Versioned model leaves mapper configuration for later."""

    class Early(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "early"
        id = db.Column(db.Integer, primary_key=True)

    assert sa.inspect(Early).configured is False


def test_relationship_to_a_class_defined_later(db: VersionedSQLAlchemy) -> None:
    """A Versioned model may name, by string, a class that is defined after it."""

    class Author(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "author"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String)
        books = db.relationship("Book", back_populates="author")

    class Book(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "book"
        id = db.Column(db.Integer, primary_key=True)
        author_id = db.Column(db.ForeignKey("author.id"))
        author = db.relationship(Author, back_populates="books")

    db.create_all()
    author = Author(name="Le Guin", books=[Book()])
    db.session.add(author)
    db.session.commit()
    author.name = "Ursula K. Le Guin"
    db.session.commit()
    assert [h.name for h in author.versions()] == ["Le Guin"]


@pytest.mark.fast_path
def test_many_records_keep_their_own_change_info(db: VersionedSQLAlchemy, User: Any) -> None:
    """In a one-statement flush of many records, each history row gets its own change_info."""
    from chrononaut import append_change_info

    users = [
        User(name=f"u{i}", email=f"u{i}@example.com", password="pw", login_count=0)
        for i in range(3)
    ]
    db.session.add_all(users)
    db.session.commit()
    for user in users:
        user.name  # noqa: B018 - load the expired records
    append_change_info(users[1], ticket="T-1")
    with statements(db.engine) as seen:
        for user in users:
            user.name = user.name.upper()
        db.session.commit()
    assert seen == ["WITH"]
    extras = [u.versions()[0].change_info.get("extra") for u in users]
    assert extras == [None, {"ticket": "T-1"}, None]
