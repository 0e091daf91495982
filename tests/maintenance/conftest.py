"""Fixtures for the maintenance tests: an engine on the run's database and unique table names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from chrononaut._urls import normalize_url


@pytest.fixture()
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on this run's database (plain SQLAlchemy, no Flask)."""
    engine = sa.create_engine(normalize_url(database_url))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture()
def prefix(engine: sa.Engine) -> Iterator[str]:
    """A unique table-name prefix; every table starting with it is dropped afterwards."""
    name = f"m{uuid.uuid4().hex[:8]}_"
    yield name
    with engine.begin() as conn:
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p"),
            {"p": f"{name}%"},
        ).scalars()
        for table in list(tables):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
