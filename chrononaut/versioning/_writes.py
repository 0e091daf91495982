"""Writing history rows: the batch a flush or a bulk statement fills, and the
lean execution of our own statements (shared by flush capture and bulk statements)."""

from __future__ import annotations

import datetime as dt
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.compiler import SQLCompiler

from chrononaut._context import extra_info_active
from chrononaut.errors import ChrononautException
from chrononaut.versioning._change_info import Settings, consume_appended
from chrononaut.versioning._concurrency import forget_expected_version
from chrononaut.versioning._meta import VALID_FROM_KEY, VERSION_KEY, VersionMeta

__all__ = [
    "_Batch",
    "_execute_lean",
    "_now",
    "_require_context",
    "ends_at",
    "next_valid_from",
    "next_version",
    "reinserted",
]

Row = dict[str, Any]


class _Batch:
    """History rows waiting to be inserted, grouped by history table."""

    def __init__(self) -> None:
        self.rows: dict[sa.Table, list[Row]] = {}
        self.states: list[InstanceState[Any]] = []
        self.mapper_for: dict[sa.Table, Any] = {}

    def add(
        self,
        meta: VersionMeta,
        values: dict[str, Any],
        version: int,
        changed: dt.datetime,
        change_info: dict[str, Any],
        valid_from: dt.datetime | None = None,
        extra: dict[tuple[sa.Table, str], Any] | None = None,
    ) -> None:
        """One history row per history table of ``meta``'s class; ``extra``: more
        values by (history table, column key): the columns single-table subclasses
        add, for a bulk statement on the class they extend."""
        for tmap in meta.tables:
            row: Row = {col_key: values[key] for key, col_key in tmap.columns}
            row[VERSION_KEY] = version
            if extra:
                for (table, col_key), value in extra.items():
                    if table is tmap.history:
                        row[col_key] = value
            if tmap.base:
                row[VALID_FROM_KEY] = valid_from
                row["changed"] = changed
                row["change_info"] = change_info
            self.rows.setdefault(tmap.history, []).append(row)
            self.mapper_for.setdefault(tmap.history, meta.mapper)

    def write(self, session: Session) -> None:
        for table, rows in self.rows.items():
            # One executemany needs the same keys in every row; subclasses sharing a
            # history table (single-table inheritance) leave each other's columns NULL.
            keys = {key for row in rows for key in row}
            if any(len(row) != len(keys) for row in rows):
                rows = [{key: row.get(key) for key in keys} for row in rows]
            connection = session.connection(bind_arguments={"mapper": self.mapper_for[table]})
            try:
                if len(rows) == 1:
                    _execute_lean(connection, table.insert(), rows[0], (table, tuple(rows[0])))
                else:
                    connection.execute(table.insert(), rows)
            except sa.exc.IntegrityError as exc:
                if not _already_recorded(exc, table):
                    raise
                # Another transaction wrote this version's history row: it changed
                # or deleted the record after this session read it, and no version
                # check caught it (a mapper with confirm_deleted_rows=False).
                raise StaleDataError(
                    f"a history row of {table.name} for this version already exists: the "
                    "record was changed or deleted by another transaction"
                ) from exc
        for state in self.states:
            consume_appended(state)
            forget_expected_version(state)

    def __bool__(self) -> bool:
        return bool(self.rows)


def _already_recorded(exc: sa.exc.IntegrityError, table: sa.Table) -> bool:
    """Whether ``exc`` is a duplicate key of history table ``table``."""
    orig = exc.orig
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    diag = getattr(orig, "diag", None)
    return code == "23505" and getattr(diag, "table_name", None) == table.name


# Per dialect (one per engine), dropped with it: engines come and go in tests.
_lean_cache: weakref.WeakKeyDictionary[Any, dict[Any, tuple[str, list[tuple[str, str, Any]]]]] = (
    weakref.WeakKeyDictionary()
)


def _execute_lean(
    connection: sa.Connection,
    statement: sa.ClauseElement,
    params: dict[str, Any],
    cache_key: Any = None,
) -> sa.CursorResult[Any]:
    """Execute a statement of ours on ``connection``, skipping Core's per-call work.

    On the per-request path a Core execution costs about as much Python time as
    the round trip itself. The SQL is compiled once per statement, dialect and
    ``schema_translate_map`` of the connection (with the translated names
    rendered in), together with the bind processors of its parameters; each call
    then converts the values and sends the SQL with ``exec_driver_sql`` on the
    same connection, so engine events, ``echo`` and the connection's execution
    options apply as they do to any statement.
    """
    dialect = connection.dialect
    cache = _lean_cache.get(dialect)
    if cache is None:
        cache = _lean_cache[dialect] = {}
    translate = connection.get_execution_options().get("schema_translate_map")
    translate_key = tuple(sorted(translate.items(), key=repr)) if translate else None
    key = (statement if cache_key is None else cache_key, translate_key)
    entry = cache.get(key)
    if entry is None:
        column_keys = list(params) if isinstance(statement, sa.Insert) else None
        compile_kwargs: dict[str, Any] = {}
        if translate:
            compile_kwargs = {"schema_translate_map": translate, "render_schema_translate": True}
        compiled = statement.compile(dialect=dialect, column_keys=column_keys, **compile_kwargs)
        assert isinstance(compiled, SQLCompiler)
        # Names the SQL can't hold as they are (a column "Value Col") are escaped
        # in it ("Value_Col"): the values go under the escaped names.
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        processors = [
            (name, escaped.get(name, name), bind.type.dialect_impl(dialect).bind_processor(dialect))
            for name, bind in compiled.binds.items()
        ]
        entry = (str(compiled), processors)
        cache[key] = entry
    sql, processors = entry
    values = {
        sent: (process(params[name]) if process is not None else params[name])
        for name, sent, process in processors
    }
    return connection.exec_driver_sql(sql, values)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _require_context(settings: Settings) -> None:
    if settings.require_extra_change_info() and not extra_info_active():
        raise ChrononautException(
            "CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO is set: wrap this change in "
            "chrononaut.extra_change_info(...) or chrononaut.rationale(...)"
        )


def next_version(meta: VersionMeta, pk: tuple[Any, ...]) -> Any:
    """SQL for the version a row inserted with primary key ``pk`` starts at: after
    the key's newest history row (a key deleted earlier continues its sequence), or 0."""
    history = meta.tables[0].history
    return (
        sa.select(sa.func.coalesce(sa.func.max(history.c.version) + 1, 0))
        .where(*_history_of_key(meta, pk))
        .scalar_subquery()
    )


def _history_of_key(meta: VersionMeta, pk: tuple[Any, ...]) -> list[Any]:
    """WHERE terms for the base history rows of the key ``pk``."""
    base = meta.tables[0]
    return [
        base.history.c[col_key] == sa.literal(value, type_=base.history.c[col_key].type)
        for (_, col_key), value in zip(base.pk, pk, strict=True)
    ]


def reinserted(
    connection: sa.Connection, meta: VersionMeta, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], tuple[int, dt.datetime]]:
    """For each of ``keys`` that has history: the version a row inserted again with
    it starts at, and when its newest history row ended (the new row's version
    begins no earlier). One SELECT."""
    if not keys:
        return {}
    base = meta.tables[0]
    history = base.history
    columns = [history.c[col_key] for _, col_key in base.pk]
    where: Any = (
        columns[0].in_([k[0] for k in keys]) if len(columns) == 1 else sa.tuple_(*columns).in_(keys)
    )
    newest = (
        sa.select(*columns, sa.func.max(history.c.version), sa.func.max(history.c.changed))
        .where(where)
        .group_by(*columns)
    )
    return {tuple(row[:-2]): (row[-2] + 1, row[-1]) for row in connection.execute(newest)}


def next_valid_from(meta: VersionMeta, pk: tuple[Any, ...], clock: dt.datetime) -> Any:
    """SQL for the ``valid_from`` of a row inserted with primary key ``pk``: the
    clock, or where the key's newest history row ended if that is later (a key
    deleted earlier in the same transaction: ranges never overlap)."""
    history = meta.tables[0].history
    ended = (
        sa.select(sa.func.max(history.c.changed))
        .where(*_history_of_key(meta, pk))
        .scalar_subquery()
    )
    return sa.func.greatest(
        sa.bindparam(None, clock, type_=sa.DateTime(timezone=True), unique=True),
        ended,
        type_=sa.DateTime(timezone=True),
    )


def ends_at(clock: dt.datetime, valid_from: dt.datetime | None) -> dt.datetime:
    """``changed`` of the version that began at ``valid_from``: never before it, so
    ranges never run backwards."""
    if valid_from is not None and valid_from > clock:
        return valid_from
    return clock
