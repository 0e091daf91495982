"""Fixtures of the integration tests (the pool of one and PgBouncer are the
shared ones of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa


@pytest.fixture()
def other_engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine of another app server (its own connections)."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()
