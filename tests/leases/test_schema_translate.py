"""Lease keys name the physical table after schema translation (SPEC §1, §4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import (
    RecordLeasedError,
    Versioned,
    acting_as,
    suppress_versioning,
    versioned_session,
)
from chrononaut._leases import LEASE_TABLE


class Base(DeclarativeBase):
    """Metadata of this module's model."""


class Note(Versioned, Base):
    """A leased model without a schema of its own."""

    __tablename__ = "lease_note"
    __chrononaut_leases__ = True
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(default="")


@pytest.fixture()
def tenant_engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine whose default schema is translated to ``tenant_a``; tables created."""
    plain = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with plain.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS tenant_a")
    engine = plain.execution_options(schema_translate_map={None: "tenant_a"})
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note).values(id=1, text="", version=0))
    yield engine
    with plain.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA tenant_a CASCADE")
    plain.dispose()


def test_key_uses_translated_schema(tenant_engine: sa.Engine) -> None:
    """The lease row names tenant_a.lease_note and lives in tenant_a; writes are checked."""
    factory: Any = versioned_session(sessionmaker(tenant_engine))
    with factory() as alice, acting_as("alice"):
        alice.get(Note, 1).lease()
    with tenant_engine.connect() as conn:
        name = conn.execute(sa.text(f"SELECT table_name FROM tenant_a.{LEASE_TABLE}")).scalar()
    assert name == "tenant_a.lease_note"
    with factory() as bob:
        bob.get(Note, 1).text = "bob"
        # suppress_versioning: this test is about the lease, not about how history
        # statements are translated (leases are enforced either way).
        with acting_as("bob"), suppress_versioning(), pytest.raises(RecordLeasedError):
            bob.commit()
