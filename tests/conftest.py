"""Fixtures shared by every test: a real PostgreSQL database of its own per run.

Each pytest run creates a fresh database (so parallel runs on one server do not
see each other's tables) and drops it at the end. Tests define their models
inside the test (or a module fixture) on the ``db`` fixture and call
``db.create_all()``; ``db`` drops everything it created when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture()
def small_app(database_url: str) -> Iterator[Flask]:
    """A Flask app whose engine has ``pool_size=1, max_overflow=0`` (2 s pool timeout)."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 2},
    )
    with app.app_context():
        yield app


@pytest.fixture()
def small_db(small_app: Flask) -> Iterator[VersionedSQLAlchemy]:
    """``VersionedSQLAlchemy`` on the pool of one; tables dropped afterwards."""
    db = VersionedSQLAlchemy(small_app)
    try:
        yield db
    finally:
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``pgbouncer`` marker (``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        "pgbouncer: runs through a real PgBouncer; needs the pgbouncer binary "
        "(required when CI=true)",
    )


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[Any]:
    """A PgBouncer in transaction pooling mode in front of the test database, one
    per run for every test directory.

    Without the binary the tests are skipped locally, and fail in CI (``CI=true``),
    where .ci/run installs it.
    """
    from tests.fleet import pgbouncer_support

    binary = pgbouncer_support.find_binary()
    if binary is None:
        message = (
            "PgBouncer is not installed (apt-get install -y pgbouncer); "
            "the pooler tests are required in CI"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    bouncer = pgbouncer_support.start(binary, sa.make_url(database_url))
    try:
        yield bouncer
    finally:
        bouncer.stop()
