"""Shared models and helpers for the versioning tests (SPEC §1-§3).

Models are defined per test on the function-scoped ``db`` fixture of
``tests/conftest.py``: each test gets its own declarative registry and MetaData,
and ``db`` drops the tables when the test ends.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy
from chrononaut.versioning import _capture as capture

HistoryReader = Callable[..., list[dict[str, Any]]]


@pytest.fixture()
def User(db: VersionedSQLAlchemy) -> type[Any]:
    """The README's seed model (``appuser``), its tables created."""

    class User(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "appuser"
        __chrononaut_untracked__ = ["login_count"]
        __chrononaut_hidden__ = ["password"]

        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(80), unique=False)
        email = db.Column(db.String(255), unique=True)
        password = db.Column(db.Text())
        login_count = db.Column(db.Integer())

    db.create_all()
    return User


@pytest.fixture()
def make_user(db: VersionedSQLAlchemy, User: type[Any]) -> Callable[..., Any]:
    """Create and commit a ``User`` (version 0) with sensible defaults."""

    def make(**values: Any) -> Any:
        values.setdefault("name", "alice")
        values.setdefault("email", f"{values['name']}@example.com")
        values.setdefault("password", "pw-0")
        values.setdefault("login_count", 0)
        user = User(**values)
        db.session.add(user)
        db.session.commit()
        return user

    return make


@pytest.fixture()
def history_rows(db: VersionedSQLAlchemy) -> HistoryReader:
    """Read a history table with raw SQL.

    ``history_rows("appuser_history")`` reads committed rows on a connection of its
    own; ``committed=False`` reads through ``db.session`` (its open transaction).
    """

    def read(
        table: str, *, order_by: str = "id, version", committed: bool = True
    ) -> list[dict[str, Any]]:
        sql = sa.text(f"SELECT * FROM {table} ORDER BY {order_by}")
        if committed:
            with db.engine.connect() as conn:
                return [dict(row) for row in conn.execute(sql).mappings()]
        return [dict(row) for row in db.session.execute(sql).mappings()]

    return read


@pytest.fixture()
def utcnow() -> Callable[[], dt.datetime]:
    """The current time as an aware UTC datetime."""
    return lambda: dt.datetime.now(dt.timezone.utc)


#: ``change_info`` of a change made outside requests, ``acting_as`` and extra blocks.
PLAIN_INFO: dict[str, Any] = {"user_id": None, "remote_addr": None}


@pytest.fixture()
def plain_info() -> dict[str, Any]:
    """The exact ``change_info`` of a plain change (no actor, no request, no extra)."""
    return dict(PLAIN_INFO)


#: Set (to anything) to run the versioning tests with capture's one-statement
#: path off: tests/versioning/test_fast_path_parity.py does, to prove both paths
#: write the same rows and raise the same errors.
NO_FAST_PATH_ENV = "CHRONONAUT_TEST_NO_FAST_PATH"


@pytest.fixture(autouse=True)
def _fast_path_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the one-statement path off when the parity run asks for it."""
    if os.environ.get(NO_FAST_PATH_ENV):
        monkeypatch.setattr(capture, "fast_path_enabled", False)


def pytest_configure(config: pytest.Config) -> None:
    """Register ``fast_path``: tests of the one-statement path's statement shape."""
    config.addinivalue_line(
        "markers", "fast_path: asserts the statements of capture's one-statement path"
    )


@pytest.fixture()
def Pet(db: VersionedSQLAlchemy) -> type[Any]:
    """Single-table inheritance: ``Dog`` and ``Cat`` share table ``pet`` (returns ``Dog``)."""

    class Pet(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "pet"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10), nullable=False)
        name = db.Column(db.String(40))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "pet"}

    class Dog(Pet):
        __mapper_args__ = {"polymorphic_identity": "dog"}

    class Cat(Pet):
        __mapper_args__ = {"polymorphic_identity": "cat"}

    db.create_all()
    db.session.add_all([Dog(id=1, name="rex"), Cat(id=2, name="tom")])
    db.session.commit()
    return Dog
