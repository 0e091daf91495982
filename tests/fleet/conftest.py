"""Fixtures of the fleet tests: an app whose pool holds a single connection.

The "other" party (another app server) is a plain session on an engine of its
own, so every connection the app under test uses comes from its pool of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from chrononaut import Versioned, VersionedSQLAlchemy, versioned_session


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


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``pgbouncer`` marker (``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        "pgbouncer: runs through a real PgBouncer; needs the pgbouncer binary "
        "(required when CI=true)",
    )


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[Any]:
    """A PgBouncer in transaction pooling mode in front of the test database.

    Without the binary the tests are skipped locally, and fail in CI (``CI=true``),
    where .ci/run installs it.
    """
    import os

    from . import pgbouncer_support

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
