"""Generating and applying migrations with Alembic's own API (helpers for the tests)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata, produce_migrations
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops


def context(conn: sa.Connection, prefix: str) -> MigrationContext:
    """A migration context that only sees tables whose name starts with ``prefix``."""

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        # Only this test's tables: others share the database.
        return type_ != "table" or (name or "").startswith(prefix)

    return MigrationContext.configure(
        conn, opts={"include_name": include_name, "compare_type": True}
    )


def diff(engine: sa.Engine, metadata: sa.MetaData, prefix: str) -> list[Any]:
    """What autogenerate finds between the database and ``metadata``."""
    with engine.connect() as conn:
        return list(compare_metadata(context(conn, prefix), metadata))


def upgrade(engine: sa.Engine, metadata: sa.MetaData, prefix: str) -> list[ops.MigrateOperation]:
    """Generate the migration from the database to ``metadata``, apply it, return its ops."""
    with engine.begin() as conn:
        ctx = context(conn, prefix)
        script = produce_migrations(ctx, metadata)
        upgrade_ops = script.upgrade_ops
        assert upgrade_ops is not None
        operations = Operations(ctx)
        flat: list[ops.MigrateOperation] = []
        for op in upgrade_ops.ops:
            if isinstance(op, ops.ModifyTableOps):
                flat.extend(op.ops)
            else:
                flat.append(op)
        for op in flat:
            operations.invoke(op)
    return flat


def described(operations: list[ops.MigrateOperation]) -> set[tuple[str, str, str | None]]:
    """``(operation, table, column)`` for each operation, for readable assertions."""
    out: set[tuple[str, str, str | None]] = set()
    for op in operations:
        if isinstance(op, ops.CreateTableOp):
            out.add(("create_table", op.table_name, None))
        elif isinstance(op, ops.AddColumnOp):
            out.add(("add_column", op.table_name, op.column.name))
        elif isinstance(op, ops.DropColumnOp):
            out.add(("drop_column", op.table_name, op.column_name))
        elif isinstance(op, ops.AlterColumnOp):
            out.add(("alter_column", op.table_name, op.column_name))
        elif isinstance(op, ops.CreateIndexOp):
            out.add(("create_index", op.table_name, op.index_name))
        else:
            out.add((type(op).__name__, getattr(op, "table_name", ""), None))
    return out
