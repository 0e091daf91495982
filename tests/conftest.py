"""Fixtures shared by every test: a real PostgreSQL database of its own per run.

Each pytest run creates a fresh database (so parallel runs on one server do not
see each other's tables) and drops it at the end. Tests define their models
inside the test (or a module fixture) on the ``db`` fixture and call
``db.create_all()``; ``db`` drops everything it created when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

import _devdb
from chrononaut import VersionedSQLAlchemy
from chrononaut.testing import ResolvedDatabase, temporary_database


@pytest.fixture(scope="session")
def chrononaut_server() -> ResolvedDatabase:
    """The server to test against: chrononaut.testing's answer, else the embedded one.

    Overrides the fixture of the chrononaut.testing plugin, which setup.cfg enables
    (``-p chrononaut.testing``) the way docs/testing.rst tells users to.
    """
    return _devdb.resolve_database()


@pytest.fixture(scope="session")
def server_url(chrononaut_server: ResolvedDatabase) -> sa.URL:
    """The URL of the server the tests run against."""
    return sa.make_url(chrononaut_server.url)


@pytest.fixture(scope="session")
def database_url(server_url: sa.URL) -> Iterator[str]:
    """A fresh database for this test run, dropped afterwards."""
    with temporary_database(server_url, prefix="chrononaut_test") as url:
        yield url


@pytest.fixture()
def app(database_url: str) -> Iterator[Flask]:
    """A Flask app configured for the test database, with an app context pushed."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        SQLALCHEMY_DATABASE_URI=database_url,
    )
    with app.app_context():
        yield app


@pytest.fixture()
def db(app: Flask) -> Iterator[VersionedSQLAlchemy]:
    """A ``VersionedSQLAlchemy`` on ``app``; its tables are dropped after the test."""
    db = VersionedSQLAlchemy(app)
    try:
        yield db
    finally:
        db.session.remove()
        db.drop_all()
        for engine in db.engines.values():
            engine.dispose()
