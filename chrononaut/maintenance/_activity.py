"""Importing the original Chrononaut 0.3/0.4 ``chrononaut_activity`` table.

Chrononaut 0.3 and 0.4 kept one table for every model::

    chrononaut_activity(
        id bigserial, table_name text, changed timestamptz, version int,
        key jsonb,         -- {"<pk column>": value}
        data jsonb,        -- the state *after* the change (tracked, non-hidden columns)
        user_info jsonb,   -- {"user_id": ..., "remote_addr": ...}
        extra_info jsonb   -- extra change info + "hidden_cols_changed"
    )

Version 0 of a key is its insert; version N its N-th change. Chrononaut keeps
*prior* states instead: history row N is the state of version N, stamped with the
time and change info of the change that replaced it (activity version N + 1). So
for a key whose activity versions are 0..V:

- activity versions 0..V-1 become history rows 0..V-1 (``changed`` and
  ``change_info`` from activity version N + 1);
- activity version V is the live row's current state: the live row's ``version``
  becomes V;
- when the live row is gone, a final history row V marks the deletion
  (``change_info["deleted"] = true``; 0.4 did not record when, so its ``changed``
  is the time of the last recorded change).

Every imported row carries ``change_info["imported"] = {"from": <table>,
"activity_id": <id>}`` (the id of the activity row the change came from). It is
how a second run recognises work already done: the import commits chunk by
chunk, and a run that stopped half-way is completed by running it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from chrononaut.errors import ActivityImportError
from chrononaut.maintenance._cast import cast_value
from chrononaut.maintenance._models import base_pk_columns, live_pk_columns, versioned_models
from chrononaut.versioning._meta import VALID_FROM_KEY, VERSION_KEY, VersionMeta, meta_of

__all__ = [
    "ACTIVITY_TABLE",
    "IMPORT_MARK",
    "ActivityConflictError",
    "ActivityImportError",
    "ImportSummary",
    "activity_table",
    "count_keys",
    "import_activity",
]

#: The table Chrononaut 0.3/0.4 wrote.
ACTIVITY_TABLE = "chrononaut_activity"

#: The ``change_info`` key marking rows written by the importer.
IMPORT_MARK = "imported"


class ActivityConflictError(ActivityImportError):
    """History tables already hold rows for keys found in the activity table."""

    def __init__(self, message: str, conflicts: dict[str, int]) -> None:
        super().__init__(message)
        #: history table name -> number of keys that already have history
        self.conflicts = conflicts


@dataclass
class ImportSummary:
    """What :func:`import_activity` did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    #: activity rows read
    activity_rows: int = 0
    #: keys converted by this run
    keys: int = 0
    #: keys with nothing to write (only inserted, live row present)
    unchanged: int = 0
    #: keys skipped because an earlier run imported them
    already_imported: int = 0
    #: keys whose existing history was kept and moved after the imported rows
    merged: int = 0
    #: history records written (deleted-record rows included; joined inheritance
    #: writes one row per table for each)
    history_rows: int = 0
    #: final rows written for keys whose live row is gone
    deleted: int = 0
    #: live rows whose ``version`` was set
    live_versions: int = 0
    #: transactions committed (or rolled back, with ``dry_run``)
    chunks: int = 0
    #: activity table names without a Versioned model -> activity rows skipped
    unknown_tables: dict[str, int] = field(default_factory=dict)
    #: history table name -> keys converted
    per_table: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per fact."""
        verb = "would be" if self.dry_run else "were"
        out = [
            f"{self.activity_rows} activity rows read, {self.keys} keys converted "
            f"in {self.chunks} chunks"
            + (" (dry run: nothing was written)" if self.dry_run else ""),
            f"{self.history_rows} history rows {verb} written, {self.deleted} of them for "
            f"deleted records; {self.live_versions} live rows {verb} given their version",
        ]
        for name, count in sorted(self.per_table.items()):
            out.append(f"  {name}: {count} keys")
        if self.unchanged:
            out.append(f"{self.unchanged} keys were inserted and never changed: nothing to write")
        if self.already_imported:
            out.append(f"{self.already_imported} keys had been imported before and were skipped")
        if self.merged:
            out.append(f"{self.merged} keys {verb} merged with the history already there")
        for name, count in sorted(self.unknown_tables.items()):
            out.append(f"skipped {count} activity rows of {name!r}: no Versioned model uses it")
        return out


def activity_table(name: str = ACTIVITY_TABLE, schema: str | None = None) -> sa.Table:
    """The activity table's shape as Chrononaut 0.3/0.4 created it.

    :param name: its name.
    :param schema: its schema (default: the search path).
    """
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("changed", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("key", JSONB, nullable=False),
        sa.Column("data", JSONB),
        sa.Column("user_info", JSONB),
        sa.Column("extra_info", JSONB),
        schema=schema,
    )


@dataclass
class _Activity:
    id: int
    changed: dt.datetime
    version: int
    data: dict[str, Any]
    user_info: dict[str, Any]
    extra_info: dict[str, Any]


@dataclass
class _Key:
    table_name: str
    key: dict[str, Any]
    activities: list[_Activity]


class _Target:
    """The models sharing one activity ``table_name`` (several for single-table inheritance)."""

    def __init__(self, metas: list[VersionMeta]) -> None:
        # The hierarchy's base first, so it is the fallback.
        self.metas = sorted(metas, key=lambda m: len(list(m.mapper.iterate_to_root())))

    def meta_for(self, data: dict[str, Any]) -> VersionMeta:
        base = self.metas[0]
        on = base.mapper.polymorphic_on
        if len(self.metas) > 1 and isinstance(on, sa.Column) and on.name in data:
            for meta in self.metas:
                if meta.mapper.polymorphic_identity == data[on.name]:
                    return meta
        return base


def _targets(models: Iterable[type[Any]]) -> dict[str, _Target]:
    by_table: dict[str, list[VersionMeta]] = {}
    for cls in models:
        meta = meta_of(cls)
        if meta is None:
            continue
        local = meta.mapper.local_table
        if isinstance(local, sa.Table):
            by_table.setdefault(local.name, []).append(meta)
    return {name: _Target(metas) for name, metas in by_table.items()}


def _change_info(activity: _Activity, source: str) -> dict[str, Any]:
    """change_info from the user and extra info of one 0.4 activity row."""
    user = activity.user_info or {}
    extra = dict(activity.extra_info or {})
    # Rows that 0.4's own converter copied from 0.2 tables kept hidden_cols_changed
    # in user_info (it moved only "extra" out of change_info).
    hidden = extra.pop("hidden_cols_changed", None) or user.get("hidden_cols_changed")
    user_id = user.get("user_id")
    info: dict[str, Any] = {
        "user_id": None if user_id is None else str(user_id),
        "remote_addr": user.get("remote_addr"),
    }
    if extra:
        info["extra"] = extra
    if hidden:
        info["hidden_cols_changed"] = sorted(hidden)
    info[IMPORT_MARK] = {"from": source, "activity_id": activity.id}
    return info


def _column_value(column: sa.Column[Any], key: str, data: dict[str, Any], where: str) -> Any:
    if column.name in data:
        raw = data[column.name]
    elif key in data:
        raw = data[key]
    else:
        return None
    try:
        return cast_value(column.type, raw)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise ActivityImportError(
            f"{where}: can't read {raw!r} as {column.type} for column {column.name!r}: {exc}"
        ) from exc


def _pk_of(meta: VersionMeta, item: _Key) -> tuple[Any, ...]:
    values = []
    for (attr, _), column in zip(meta.tables[0].pk, base_pk_columns(meta), strict=True):
        if column.name in item.key:
            raw = item.key[column.name]
        elif attr in item.key:
            raw = item.key[attr]
        else:
            raise ActivityImportError(
                f"{item.table_name} key {item.key!r} has no value for primary-key column "
                f"{column.name!r}"
            )
        values.append(cast_value(column.type, raw))
    return tuple(values)


def _history_rows(
    meta: VersionMeta,
    item: _Key,
    state: _Activity,
    version: int,
    changed: dt.datetime,
    info: dict[str, Any],
    valid_from: dt.datetime | None = None,
) -> dict[sa.Table, dict[str, Any]]:
    """One history row per history table of the hierarchy for one prior state.

    ``valid_from`` is when that state began: the time its own activity row records.
    """
    where = f"{item.table_name} key {item.key!r} version {state.version}"
    rows: dict[sa.Table, dict[str, Any]] = {}
    for tmap in meta.tables:
        row: dict[str, Any] = {}
        for key, col_key in tmap.columns:
            row[col_key] = _column_value(tmap.history.c[col_key], key, state.data, where)
        row[VERSION_KEY] = version
        if tmap.base:
            row[VALID_FROM_KEY] = valid_from
            row["changed"] = max(changed, valid_from) if valid_from is not None else changed
            row["change_info"] = info
        rows[tmap.history] = row
    return rows


def _pk_match(columns: Sequence[sa.Column[Any]], pks: Sequence[tuple[Any, ...]]) -> Any:
    if len(columns) == 1:
        return columns[0].in_([pk[0] for pk in pks])
    return sa.tuple_(*columns).in_(pks)


def _read_keys(
    conn: sa.Connection, activity: sa.Table, summary: ImportSummary
) -> Generator[_Key, None, None]:
    """Every key of the activity table with its rows in version order, streamed."""
    query = sa.select(activity).order_by(
        activity.c.table_name, activity.c.key, activity.c.version, activity.c.id
    )
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
    # The server-side cursor must be closed also when the caller stops early.
    with result:
        yield from _group(result, summary)


def _group(result: sa.CursorResult[Any], summary: ImportSummary) -> Iterator[_Key]:
    current: _Key | None = None
    for row in result:
        summary.activity_rows += 1
        if current is None or (row.table_name, row.key) != (current.table_name, current.key):
            if current is not None:
                yield current
            current = _Key(row.table_name, row.key, [])
        current.activities.append(
            _Activity(
                id=row.id,
                changed=row.changed,
                version=row.version,
                data=row.data or {},
                user_info=row.user_info or {},
                extra_info=row.extra_info or {},
            )
        )
    if current is not None:
        yield current


def _shift_history(conn: sa.Connection, meta: VersionMeta, pk: tuple[Any, ...], by: int) -> None:
    """Move a key's existing history rows ``by`` versions up.

    Two steps through negative versions: PostgreSQL checks the primary key row by
    row, so a direct ``version + by`` could collide with a row not moved yet.
    Child tables of joined inheritance first, the base table last.
    """
    for tmap in reversed(meta.tables):
        table = tmap.history
        match = sa.and_(
            *[table.c[col] == value for (_, col), value in zip(tmap.pk, pk, strict=True)]
        )
        version = table.c[VERSION_KEY]
        conn.execute(sa.update(table).where(match).values({version: -(version + by) - 1}))
        conn.execute(sa.update(table).where(match, version < 0).values({version: -version - 1}))


def _preflight(
    conn: sa.Connection, activity: sa.Table, targets: dict[str, _Target]
) -> dict[str, int]:
    """History tables holding rows not written by the importer for activity keys."""
    conflicts: dict[str, int] = {}
    for name, target in targets.items():
        meta = target.metas[0]
        history = meta.tables[0].history
        # Activity keys cast to the key columns' types, so the history table's
        # primary-key index answers each lookup.
        match = [
            column == sa.cast(activity.c.key[column.name].astext, column.type)
            for column in base_pk_columns(meta)
        ]
        foreign = sa.or_(
            history.c.change_info.is_(None), sa.not_(history.c.change_info.has_key(IMPORT_MARK))
        )
        own = sa.exists(sa.select(sa.literal(1)).select_from(history).where(*match, foreign))
        marked = sa.exists(
            sa.select(sa.literal(1))
            .select_from(history)
            .where(*match, history.c.change_info.has_key(IMPORT_MARK))
        )
        count = conn.execute(
            sa.select(sa.func.count(sa.distinct(activity.c.key))).where(
                activity.c.table_name == name, own, sa.not_(marked)
            )
        ).scalar_one()
        if count:
            conflicts[history.name] = int(count)
    return conflicts


def _require_table(conn: sa.Connection, activity: sa.Table) -> None:
    if not sa.inspect(conn).has_table(activity.name, schema=activity.schema):
        raise ActivityImportError(
            f"there is no table {activity.fullname!r} to import (name it with --table and "
            f"--schema if it is elsewhere)"
        )


def count_keys(engine: sa.Engine, *, table: str = ACTIVITY_TABLE, schema: str | None = None) -> int:
    """The number of distinct keys in the activity table (for progress bars).

    :param engine: the database.
    :param table: the activity table's name.
    :param schema: its schema.
    """
    activity = activity_table(table, schema)
    keys = sa.select(activity.c.table_name, activity.c.key).distinct().subquery()
    with engine.connect() as conn:
        _require_table(conn, activity)
        return int(conn.execute(sa.select(sa.func.count()).select_from(keys)).scalar_one())


def import_activity(
    engine: sa.Engine,
    models: Iterable[type[Any]] | sa.orm.registry,
    *,
    table: str = ACTIVITY_TABLE,
    schema: str | None = None,
    chunk_size: int = 500,
    dry_run: bool = False,
    merge: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Convert a Chrononaut 0.3/0.4 activity table into history tables.

    Each chunk of ``chunk_size`` keys is one transaction. Keys imported by an
    earlier run are skipped, so running it again completes an interrupted run and
    changes nothing after a complete one. The activity table is only read.

    :param engine: the database holding the activity table and the models' tables.
    :param models: the Versioned models (or their registry, ``db.Model.registry``);
        activity rows of other tables are counted in the summary and skipped.
    :param table: the activity table's name.
    :param schema: the activity table's schema.
    :param chunk_size: keys per transaction.
    :param dry_run: do everything, then roll each chunk back.
    :param merge: for keys that already have history written by this library,
        put the imported versions first and move the existing ones after them
        (their version numbers and the live row's version grow by the key's newest
        activity version). Without it such keys stop the import before anything
        is written.
    :param progress: called with the number of keys done after each chunk.
    :raises ActivityConflictError: when history tables already hold rows for
        activity keys and ``merge`` is false.
    :raises ActivityImportError: when the activity table is missing or a value
        can't be read as its column's type.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    classes = versioned_models(models)
    targets = _targets(classes)
    activity = activity_table(table, schema)
    summary = ImportSummary(dry_run=dry_run)
    with engine.connect() as reader:
        _require_table(reader, activity)
        if not merge:
            conflicts = _preflight(reader, activity, targets)
            reader.rollback()
            if conflicts:
                listed = ", ".join(
                    f"{name} ({n} key{'s' if n != 1 else ''})"
                    for name, n in sorted(conflicts.items())
                )
                raise ActivityConflictError(
                    f"history tables already hold rows for keys in {activity.fullname}: "
                    f"{listed}; nothing was imported. Run again with merge (--merge) to put "
                    f"the imported versions before them",
                    conflicts,
                )
        chunk: list[_Key] = []
        with (
            engine.connect() as writer,
            contextlib.closing(_read_keys(reader, activity, summary)) as keys,
        ):
            for item in keys:
                if item.table_name not in targets:
                    summary.unknown_tables[item.table_name] = summary.unknown_tables.get(
                        item.table_name, 0
                    ) + len(item.activities)
                    continue
                chunk.append(item)
                if len(chunk) >= chunk_size:
                    _run_chunk(writer, chunk, targets, table, merge, dry_run, summary)
                    if progress is not None:
                        progress(len(chunk))
                    chunk = []
            if chunk:
                _run_chunk(writer, chunk, targets, table, merge, dry_run, summary)
                if progress is not None:
                    progress(len(chunk))
    return summary


def _run_chunk(
    conn: sa.Connection,
    chunk: list[_Key],
    targets: dict[str, _Target],
    source: str,
    merge: bool,
    dry_run: bool,
    summary: ImportSummary,
) -> None:
    by_meta: dict[int, tuple[VersionMeta, list[tuple[_Key, tuple[Any, ...]]]]] = {}
    for item in chunk:
        meta = targets[item.table_name].meta_for(item.activities[-1].data)
        # Single-table subclasses share the base's history rows and live table:
        # look keys up per root, write rows per concrete meta.
        _, items = by_meta.setdefault(id(meta), (meta, []))
        items.append((item, _pk_of(meta, item)))
    try:
        for meta, items in by_meta.values():
            _convert(conn, meta, items, source, merge, summary)
        summary.chunks += 1
    except BaseException:
        conn.rollback()
        raise
    if dry_run:
        conn.rollback()
    else:
        conn.commit()


def _convert(
    conn: sa.Connection,
    meta: VersionMeta,
    items: list[tuple[_Key, tuple[Any, ...]]],
    source: str,
    merge: bool,
    summary: ImportSummary,
) -> None:
    history = meta.tables[0].history
    hist_pk = base_pk_columns(meta)
    live_pk = live_pk_columns(meta)
    pks = [pk for _, pk in items]
    marked = history.c.change_info.has_key(IMPORT_MARK)
    existing: dict[tuple[Any, ...], tuple[int, bool]] = {}
    query = (
        sa.select(*hist_pk, sa.func.count(), sa.func.bool_or(sa.func.coalesce(marked, False)))
        .where(_pk_match(hist_pk, pks))
        .group_by(*hist_pk)
    )
    for row in conn.execute(query):
        existing[tuple(row[: len(hist_pk)])] = (int(row[-2]), bool(row[-1]))
    live_table = meta.version_column.table
    live_version = live_table.c[meta.version_column.key]
    live: dict[tuple[Any, ...], int] = {}
    for row in conn.execute(sa.select(*live_pk, live_version).where(_pk_match(live_pk, pks))):
        live[tuple(row[: len(live_pk)])] = int(row[-1])

    rows: dict[sa.Table, list[dict[str, Any]]] = {}
    for item, pk in items:
        count, imported = existing.get(pk, (0, False))
        if imported:
            summary.already_imported += 1
            continue
        if count and not merge:
            raise ActivityConflictError(
                f"{history.name} already holds {count} rows for {item.table_name} key "
                f"{item.key!r}; run with merge (--merge) to keep both",
                {history.name: 1},
            )
        states = item.activities
        newest = states[-1].version
        if len(states) == 1 and newest == 0 and pk in live and not count:
            # Inserted and never changed: the live row at version 0 says it all.
            summary.unchanged += 1
            continue
        for state, change in itertools.pairwise(states):
            info = _change_info(change, source)
            for tbl, hrow in _history_rows(
                meta, item, state, state.version, change.changed, info, state.changed
            ).items():
                rows.setdefault(tbl, []).append(hrow)
        if count:
            # Merge: this library's history continues from the newest activity state.
            _shift_history(conn, meta, pk, newest)
            summary.merged += 1
        elif pk not in live:
            info = {"user_id": None, "remote_addr": None, "deleted": True}
            info[IMPORT_MARK] = {"from": source, "activity_id": states[-1].id}
            for tbl, hrow in _history_rows(
                meta, item, states[-1], newest, states[-1].changed, info, states[-1].changed
            ).items():
                rows.setdefault(tbl, []).append(hrow)
            summary.deleted += 1
        if pk in live and newest:
            match = sa.and_(*[c == v for c, v in zip(live_pk, pk, strict=True)])
            values: dict[Any, Any] = {live_version: live_version + newest}
            if not count:
                # The live row's current version began with the newest activity row.
                values[live_table.c[VALID_FROM_KEY]] = states[-1].changed
            conn.execute(sa.update(live_table).where(match).values(values))
            summary.live_versions += 1
        summary.keys += 1
        summary.per_table[history.name] = summary.per_table.get(history.name, 0) + 1
    # Base table first: joined-inheritance child history tables reference it by key.
    for tmap in meta.tables:
        table_rows = rows.get(tmap.history)
        if table_rows:
            conn.execute(tmap.history.insert(), table_rows)
            if tmap.base:
                summary.history_rows += len(table_rows)
