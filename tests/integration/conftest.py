"""Fixtures of the integration tests: an app on a pool of one connection, PgBouncer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import VersionedSQLAlchemy


@pytest.fixture()
def small_db(database_url: str) -> Iterator[VersionedSQLAlchemy]:
    """``VersionedSQLAlchemy`` on ``pool_size=1, max_overflow=0`` (2 s pool timeout)."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 2},
    )
    with app.app_context():
        db = VersionedSQLAlchemy(app)
        try:
            yield db
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.fixture()
def other_engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine of another app server (its own connections)."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``pgbouncer`` marker here too (``--strict-markers``)."""
    config.addinivalue_line("markers", "pgbouncer: runs through a real PgBouncer")


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[Any]:
    """A PgBouncer in transaction pooling mode, as the fleet tests start it.

    Skipped locally without the binary; a failure in CI (``CI=true``).
    """
    from tests.fleet import pgbouncer_support

    binary = pgbouncer_support.find_binary()
    if binary is None:
        message = "PgBouncer is not installed (apt-get install -y pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    bouncer = pgbouncer_support.start(binary, sa.make_url(database_url))
    try:
        yield bouncer
    finally:
        bouncer.stop()
