"""Fixtures shared by every test: a real PostgreSQL database of its own per run.

Each pytest run creates a fresh database (so parallel runs on one server do not
see each other's tables) and drops it at the end. Tests define their models
inside the test (or a module fixture) on the ``db`` fixture and call
``db.create_all()``; ``db`` drops everything it created when the test ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import VersionedSQLAlchemy
from chrononaut.testing import database_url as resolve_database_url


def _admin_engine(url: sa.URL) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def server_url() -> sa.URL:
    """The URL of the server the tests run against (see chrononaut.testing)."""
    return sa.make_url(resolve_database_url())


@pytest.fixture(scope="session")
def database_url(server_url: sa.URL) -> Iterator[str]:
    """A fresh database for this test run, dropped afterwards."""
    name = f"chrononaut_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin_engine(server_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
