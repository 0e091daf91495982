"""The ``chrononaut_lease`` table: one row per edit lease.

Its primary key ``(table_name, record_key)`` is the index that makes "is this
record leased" one index probe; ``expires_at`` has an index of its own so the
CLI can list live leases and delete expired ones in batches.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import TIMESTAMP

__all__ = ["LEASE_TABLE", "lease_table"]

LEASE_TABLE = "chrononaut_lease"


def lease_table(metadata: sa.MetaData) -> sa.Table:
    """The lease table of ``metadata``, defined there on first use."""
    found = metadata.tables.get(LEASE_TABLE)
    if found is not None:
        return found
    return sa.Table(
        LEASE_TABLE,
        metadata,
        # The hierarchy's base table, physical name (schema-qualified when it has one).
        sa.Column("table_name", sa.Text, primary_key=True),
        # The primary key values as a JSON array, e.g. '[42]' or '["eu",7]'.
        sa.Column("record_key", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("acquired_at", TIMESTAMP(timezone=True), nullable=False),
        sa.Column("expires_at", TIMESTAMP(timezone=True), nullable=False),
        # What renew_lease() extends by when it is given no ttl.
        sa.Column("ttl", sa.Interval, nullable=False),
        sa.Column("note", sa.Text),
        # The previous holder after a forced takeover (for change_info["lease"]).
        sa.Column("took_over_from", sa.Text),
        sa.Index(f"{LEASE_TABLE}_expires_at", "expires_at"),
    )
