"""Finding who holds a lock: ``pg_locks`` + ``pg_stat_activity``.

How a holder is found (see docs/locking.rst, "Lock holders"):

- Every lock taken through Chrononaut tags the holder's transaction with
  ``application_name = 'chrononaut:<user id>'`` (transaction-local
  ``set_config``), so ``pg_stat_activity`` tells other sessions the acting user.
- A row lock also takes a shared transaction-scoped advisory *marker* lock in
  the same statement, after the row lock is granted: ``(table OID, row marker)``
  for a small integer key, else a 64-bit key hashed from the physical table and
  the whole primary key (``_keys.row_marker``). Advisory locks are listed in
  ``pg_locks`` with the holder's pid even when taken inside a released
  SAVEPOINT, where the row's ``xmax`` names a subtransaction that ``pg_locks`` no longer shows.
- Rows locked outside Chrononaut are found through their ``xmax``: the locking
  transaction's id, which ``pg_locks`` maps to a pid (user unknown).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chrononaut.errors import LockHolder
from chrononaut.locking._common import user_from_app_name
from chrononaut.locking._keys import (
    AdvisoryKey,
    marker_base,
    pg_locks_ids,
    physical_table,
    quote_identifier,
    quoted_table,
    row_marker,
)

_THIS_DATABASE = "l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"


def _holder(row: Any) -> LockHolder:
    pid, application_name, since = row[0], row[1], row[2]
    tagged, user_id = user_from_app_name(application_name)
    if since is not None and not isinstance(since, _dt.datetime):  # pragma: no cover
        since = None
    return LockHolder(user_id=user_id if tagged else None, pid=int(pid), since=since)


def _fresh_activity(conn: Connection) -> None:
    # pg_stat_activity is read once per transaction and cached; a transaction that
    # looked before must see the holders of now.
    if conn.in_transaction():
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")


def physical_regclass(conn: Connection, table: sa.Table) -> tuple[str | None, str, str]:
    """``(schema, name, quoted)`` of ``table`` on ``conn`` (after schema translation)."""
    schema, name = physical_table(table, conn.get_execution_options())
    return schema, name, quoted_table(conn.dialect, schema, name)


def row_holder(
    conn: Connection,
    table: sa.Table,
    pk_columns: Sequence[sa.ColumnElement[Any]],
    pk: Sequence[Any],
    *,
    exclude_self: bool,
) -> LockHolder | None:
    """Who holds a lock on the row ``pk`` of ``table`` (its base table), or ``None``.

    Two round trips (snapshot refresh, lookup); never waits, never locks.
    """
    schema, name, quoted = physical_regclass(conn, table)
    direct, value = row_marker(schema, name, pk, "key_share")
    where = " AND ".join(
        f"t.{quote_identifier(getattr(column, 'name', ''))} = :pk_{i}"
        for i, column in enumerate(pk_columns)
    )
    if direct:
        marker = (
            "l.objsubid = 2 AND l.classid = CAST(CAST(:tbl AS regclass) AS oid) "
            "AND (l.objid::bigint >> 2) = :base"
        )
        params: dict[str, Any] = {"tbl": quoted, "base": marker_base(value)}
    else:
        classid, objid, _ = pg_locks_ids(value)
        marker = "l.objsubid = 1 AND l.classid::bigint = :classid AND l.objid::bigint = :objid"
        params = {"classid": classid, "objid": objid}
    sql = sa.text(
        f"""
        WITH holders AS (
            SELECT l.pid, 0 AS pri FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock'
              AND {_THIS_DATABASE} AND {marker}
            UNION ALL
            SELECT l.pid, 1 FROM pg_locks l
            WHERE l.locktype = 'transactionid' AND l.granted AND l.mode = 'ExclusiveLock'
              AND l.transactionid = (SELECT t.xmax FROM {quoted} t WHERE {where})
        )
        SELECT h.pid, a.application_name, COALESCE(a.xact_start, a.state_change)
        FROM holders h LEFT JOIN pg_stat_activity a ON a.pid = h.pid
        WHERE NOT :exclude_self OR h.pid <> pg_backend_pid()
        ORDER BY h.pri, a.xact_start NULLS LAST
        LIMIT 1
        """
    )
    params["exclude_self"] = exclude_self
    params.update({f"pk_{i}": v for i, v in enumerate(pk)})
    _fresh_activity(conn)
    row = conn.execute(sql, params).first()
    return None if row is None else _holder(row)


def advisory_holder(conn: Connection, key: AdvisoryKey, *, exclude_self: bool) -> LockHolder | None:
    """Who holds the advisory lock ``key`` in this database, or ``None``."""
    classid, objid, objsubid = pg_locks_ids(key)
    sql = sa.text(
        f"""
        SELECT l.pid, a.application_name, COALESCE(a.xact_start, a.state_change)
        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND {_THIS_DATABASE}
          AND l.classid::bigint = :classid AND l.objid::bigint = :objid
          AND l.objsubid = :objsubid
          AND (NOT :exclude_self OR l.pid <> pg_backend_pid())
        ORDER BY a.xact_start NULLS LAST
        LIMIT 1
        """
    )
    _fresh_activity(conn)
    row = conn.execute(
        sql,
        {"classid": classid, "objid": objid, "objsubid": objsubid, "exclude_self": exclude_self},
    ).first()
    return None if row is None else _holder(row)
