"""History capture: turning flushes and ORM bulk statements into history rows.

One flush writes at most one INSERT per history table (an executemany), emitted in
``after_flush``: *after* SQLAlchemy's version-checked UPDATE/DELETE statements, so a
stale write fails as a stale write and never as a duplicate history key.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.compiler import SQLCompiler

from chrononaut._context import extra_info_active, versioning_suppressed
from chrononaut.errors import ChrononautException
from chrononaut.versioning._change_info import ChangeInfoBuilder, Settings, consume_appended
from chrononaut.versioning._concurrency import (
    check_expected_version,
    forget_expected_version,
)
from chrononaut.versioning._model import VALID_FROM_KEY, VERSION_KEY, VersionMeta, meta_of

__all__ = ["Capture"]

PENDING_KEY = "chrononaut.pending_history"
CANDIDATES_KEY = "chrononaut.flush_candidates"
_BULK_GUARD = "chrononaut_bulk_internal"

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
    ) -> None:
        for tmap in meta.tables:
            row: Row = {col_key: values[key] for key, col_key in tmap.columns}
            row[VERSION_KEY] = version
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
            if len(rows) == 1:
                _execute_lean(connection, table.insert(), rows[0], (table, tuple(rows[0])))
            else:
                connection.execute(table.insert(), rows)
        for state in self.states:
            consume_appended(state)
            forget_expected_version(state)

    def __bool__(self) -> bool:
        return bool(self.rows)


# Per dialect (one per engine), dropped with it: engines come and go in tests.
_lean_cache: weakref.WeakKeyDictionary[Any, dict[Any, tuple[str, list[tuple[str, Any]]]]] = (
    weakref.WeakKeyDictionary()
)


def _execute_lean(
    connection: sa.Connection,
    statement: sa.ClauseElement,
    params: dict[str, Any],
    cache_key: Any = None,
) -> sa.CursorResult[Any]:
    """Execute a statement of ours with the driver, skipping Core's per-call work.

    On the per-request path a Core execution costs about as much Python time as
    the round trip itself. The compiled SQL and the bind processors of its
    parameters are computed once per statement and dialect; each call then only
    converts the values and hands them to the driver.
    """
    dialect = connection.dialect
    cache = _lean_cache.get(dialect)
    if cache is None:
        cache = _lean_cache[dialect] = {}
    key = statement if cache_key is None else cache_key
    entry = cache.get(key)
    if entry is None:
        column_keys = list(params) if isinstance(statement, sa.Insert) else None
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)
        processors = [
            (name, bind.type.dialect_impl(dialect).bind_processor(dialect))
            for name, bind in compiled.binds.items()
        ]
        entry = (str(compiled), processors)
        cache[key] = entry
    sql, processors = entry
    values = {
        name: (process(params[name]) if process is not None else params[name])
        for name, process in processors
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


def _load_missing(
    session: Session, state: InstanceState[Any], meta: VersionMeta, keys: list[str]
) -> dict[str, Any]:
    """Old values the session does not hold (set while expired, or flag_modified).

    Rare path: one SELECT of just those columns for this record.
    """
    mapper = meta.mapper
    columns = [meta.columns[key] for key in keys]
    pk_criteria = [
        meta.columns[key] == value
        for key, value in zip(meta.pk_keys, state.key[1] if state.key else (), strict=True)
    ]
    connection = session.connection(bind_arguments={"mapper": mapper})
    row = connection.execute(sa.select(*columns).where(*pk_criteria)).one_or_none()
    if row is None:
        return {}
    return dict(zip(keys, row, strict=True))


def _fast_eligible(meta: VersionMeta, committed: dict[str, Any], dict_: dict[str, Any]) -> bool:
    """Whether a dirty record's change can go through the one-statement path."""
    if not meta.fast_path_possible():
        return False
    columns = meta.columns
    for key in committed:
        if key not in columns or key in meta.pk_keys:
            return False  # relationship changes and key changes need SQLAlchemy's ordering
        if isinstance(dict_.get(key), sa.ClauseElement):
            return False  # SQL expressions are evaluated by SQLAlchemy's UPDATE
    return True


class _FastUpdates:
    """Version-checked UPDATEs that write their history rows in the same statement.

    For each group of records of one class changing the same columns, one
    statement does everything::

        WITH v AS (<key, old version, new values, change_info> per record),
             h AS (INSERT INTO t_history SELECT <tracked columns of t>, ...
                   FROM t JOIN v ON key and version match ON CONFLICT DO NOTHING)
        UPDATE t SET <columns> = v.<columns>, version = v.version + 1
        FROM v WHERE key and version match RETURNING <key>

    The history row is copied from the row as stored, by the database, in the
    statement's snapshot: no extra round trip, no SELECT of unloaded columns.
    A record whose version no longer matches is not updated and gets no history
    row; it is left to SQLAlchemy's own UPDATE, which then fails as a stale
    write (and ON CONFLICT keeps a concurrent writer's history row from turning
    that into a duplicate-key error).
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, tuple[str, ...]], list[tuple[Any, Any, int, Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

    def add(
        self,
        meta: VersionMeta,
        obj: Any,
        state: InstanceState[Any],
        old_version: int,
        info: dict[str, Any],
    ) -> None:
        keys = tuple(sorted(key for key in state.committed_state if key != VERSION_KEY))
        self.groups.setdefault((meta, keys), []).append((obj, state, old_version, info))

    def execute(self, session: Session, changed_at: dt.datetime) -> set[int]:
        """Run the statements; return ids of the records written."""
        done: set[int] = set()
        for (meta, keys), members in self.groups.items():
            connection = session.connection(bind_arguments={"mapper": meta.mapper})
            if len(members) > 1 and meta.arrays_supported(keys):
                for start in range(0, len(members), _FAST_CHUNK):
                    chunk = members[start : start + _FAST_CHUNK]
                    written = self._many(connection, meta, keys, chunk, changed_at)
                    for member in chunk:
                        if _key_of(member[1]) in written:
                            done.add(self._written(meta, keys, member, changed_at))
            else:
                for member in members:
                    if self._one(connection, meta, keys, member, changed_at):
                        done.add(self._written(meta, keys, member, changed_at))
        return done

    @staticmethod
    def _one(
        connection: sa.Connection,
        meta: VersionMeta,
        keys: tuple[str, ...],
        member: tuple[Any, Any, int, Any],
        changed_at: dt.datetime,
    ) -> bool:
        _, state, old_version, info = member
        dict_ = state.dict
        params: dict[str, Any] = {"changed": changed_at, "v": old_version, "ci": info}
        for i, value in enumerate(_key_of(state)):
            params[f"k{i}"] = value
        for i, key in enumerate(keys):
            params[f"s{i}"] = dict_.get(key)
        statement = meta.fast_update_statement(keys, many=False)
        result = _execute_lean(connection, statement, params)
        # 0 rows: the version moved on; SQLAlchemy's UPDATE will report it as stale.
        return result.rowcount == 1

    @staticmethod
    def _many(
        connection: sa.Connection,
        meta: VersionMeta,
        keys: tuple[str, ...],
        chunk: list[tuple[Any, Any, int, Any]],
        changed_at: dt.datetime,
    ) -> set[tuple[Any, ...]]:
        params: dict[str, Any] = {"changed": changed_at}
        params["v"] = [member[2] for member in chunk]
        infos = [member[3] for member in chunk]
        shared = all(info == infos[0] for info in infos)
        params["ci"] = infos[0] if shared else infos
        key_values = [_key_of(member[1]) for member in chunk]
        for i in range(len(meta.pk_keys)):
            params[f"k{i}"] = [pk[i] for pk in key_values]
        for i, key in enumerate(keys):
            params[f"s{i}"] = [member[1].dict.get(key) for member in chunk]
        statement = meta.fast_update_statement(keys, many=True, shared_info=shared)
        return {tuple(row) for row in connection.execute(statement, params)}

    @staticmethod
    def _written(
        meta: VersionMeta,
        keys: tuple[str, ...],
        member: tuple[Any, Any, int, Any],
        changed_at: dt.datetime,
    ) -> int:
        """Tell the session the record's row now holds its values: no UPDATE left."""
        obj, state, old_version, _ = member
        dict_ = state.dict
        for key in keys:
            set_committed_value(obj, key, dict_.get(key))
        set_committed_value(obj, VERSION_KEY, old_version + 1)
        # The statement set valid_from = greatest(changed, valid_from), the same
        # computation as here from the value the version check vouches for.
        if VALID_FROM_KEY in dict_:
            set_committed_value(obj, VALID_FROM_KEY, _ends_at(changed_at, dict_[VALID_FROM_KEY]))
        else:
            state._expire_attributes(dict_, [VALID_FROM_KEY])
        consume_appended(state)
        forget_expected_version(state)
        return id(obj)


def _key_of(state: InstanceState[Any]) -> tuple[Any, ...]:
    return tuple(state.key[1]) if state.key else ()


_FAST_CHUNK = 1000


def _stored_values(
    obj: Any, meta: VersionMeta, known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tracked values the row holds in the database before this flush.

    ``known`` values win (fetched for attributes whose old value the session lost);
    then the session's committed values; then current values of untouched
    attributes; attributes not loaded at all (expired, deferred) are loaded.
    """
    state = instance_state(obj)
    committed = state.committed_state
    dict_ = state.dict
    values = dict(known) if known else {}
    for key in meta.tracked:
        if key in values:
            continue
        old = committed.get(key, NO_VALUE)
        if old is not NO_VALUE:
            values[key] = old
        elif key in dict_ and key not in committed:
            values[key] = dict_[key]
        else:
            values[key] = getattr(obj, key)
    return values


_OWN_VALID_FROM = "chrononaut.valid_from"


def _refuse_valid_from(obj: Any, state: InstanceState[Any], committed: bool) -> None:
    """Refuse an application's own ``valid_from``: Chrononaut sets it."""
    dict_ = state.dict
    if committed:
        if VALID_FROM_KEY not in state.committed_state:
            return
        value = dict_.get(VALID_FROM_KEY)
        old = state.committed_state[VALID_FROM_KEY]
        if value is old or value == old:
            return
    else:
        value = dict_.get(VALID_FROM_KEY)
        if value is None:
            return
    if value is state.info.get(_OWN_VALID_FROM):
        return  # ours, from an earlier attempt at this flush
    raise ChrononautException(
        f"{type(obj).__name__}.valid_from is set by Chrononaut (when the record's "
        f"current version began); don't assign it"
    )


def _set_valid_from(obj: Any, state: InstanceState[Any], value: dt.datetime) -> None:
    state.info[_OWN_VALID_FROM] = value
    setattr(obj, VALID_FROM_KEY, value)


def _old_valid_from(obj: Any, state: InstanceState[Any]) -> dt.datetime | None:
    """``valid_from`` as the row holds it before this flush (loaded if expired)."""
    committed = state.committed_state
    if VALID_FROM_KEY in committed:
        old = committed[VALID_FROM_KEY]
        if old is not NO_VALUE:
            return old  # type: ignore[no-any-return]
    if VALID_FROM_KEY in state.dict:
        return state.dict[VALID_FROM_KEY]  # type: ignore[no-any-return]
    return getattr(obj, VALID_FROM_KEY)  # type: ignore[no-any-return]


def _ends_at(clock: dt.datetime, valid_from: dt.datetime | None) -> dt.datetime:
    """``changed`` of the version that began at ``valid_from``: never before it, so
    ranges never run backwards."""
    if valid_from is not None and valid_from > clock:
        return valid_from
    return clock


def _committed_version(obj: Any, committed: dict[str, Any], dict_: dict[str, Any]) -> int:
    """The version the row had when the session loaded it (what the UPDATE checks)."""
    version = committed.get(VERSION_KEY, dict_.get(VERSION_KEY, NO_VALUE))
    if version is NO_VALUE or version is None:
        version = getattr(obj, VERSION_KEY)
    return int(version)


class Capture:
    """The session listeners of one versioned session factory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- flushes -----------------------------------------------------------------

    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        candidates: list[tuple[Any, int | None]] = []
        session.info[CANDIDATES_KEY] = candidates
        batch = _Batch()
        session.info[PENDING_KEY] = batch
        suppressed = versioning_suppressed()
        builder: ChangeInfoBuilder | None = None
        changed_at = _now()

        def change_info() -> ChangeInfoBuilder:
            # Built on the first versioned change only: flushes of other objects pay
            # nothing, and the required-context check fires only when history is written.
            nonlocal builder
            if builder is None:
                _require_context(self.settings)
                builder = ChangeInfoBuilder(session, self.settings)
            return builder

        dirty: Iterable[Any] = session.dirty
        only = None if instances is None else {id(o) for o in instances}
        if only is not None:
            dirty = [o for o in dirty if id(o) in only]
        # The one-statement path runs before SQLAlchemy's own statements, so it is
        # used only when the flush has no INSERT or DELETE it might need to follow.
        new, deleted = session.new, session.deleted
        for obj in new:
            # valid_from: the INSERT carries the flush's instant (no extra round trip).
            if meta_of(type(obj)) is not None:
                new_state = instance_state(obj)
                _refuse_valid_from(obj, new_state, committed=False)
                _set_valid_from(obj, new_state, changed_at)
        fast_allowed = only is None and not suppressed and not new and not deleted
        fast = _FastUpdates()

        for obj in dirty:
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            committed = state.committed_state
            dict_ = state.dict
            old_version = _committed_version(obj, committed, dict_)
            _refuse_valid_from(obj, state, committed=True)
            check_expected_version(session, obj, state, old_version)
            candidates.append((obj, old_version))
            if suppressed:
                continue
            watched = meta.watched
            changed_tracked: list[str] = []
            changed_hidden: list[str] = []
            unknown: list[str] = []
            manager = state.manager
            for key in committed:
                if key not in watched:
                    continue
                old = committed[key]
                if old is NO_VALUE:
                    unknown.append(key)
                    continue
                if manager[key].impl.is_equal(old, dict_.get(key)):
                    continue
                (changed_hidden if key in meta.hidden else changed_tracked).append(key)
            if not (changed_tracked or changed_hidden or unknown):
                continue
            if fast_allowed and not unknown and _fast_eligible(meta, committed, dict_):
                info = change_info().build(type(obj), state, hidden_changed=changed_hidden)
                fast.add(meta, obj, state, old_version, info)
                continue
            old_values: dict[str, Any] = {}
            if unknown:
                fetched = _load_missing(session, state, meta, unknown)
                for key in unknown:
                    old_values[key] = fetched.get(key)
                    if key in fetched and manager[key].impl.is_equal(fetched[key], dict_.get(key)):
                        continue
                    (changed_hidden if key in meta.hidden else changed_tracked).append(key)
                if not (changed_tracked or changed_hidden):
                    continue
            info = change_info().build(type(obj), state, hidden_changed=changed_hidden)
            began = _old_valid_from(obj, state)
            ended = _ends_at(changed_at, began)
            values = _stored_values(obj, meta, old_values)
            batch.add(meta, values, old_version, ended, info, valid_from=began)
            batch.states.append(state)
            setattr(obj, VERSION_KEY, old_version + 1)
            _set_valid_from(obj, state, ended)

        if fast:
            done = fast.execute(session, changed_at)
            if done:
                session.info[CANDIDATES_KEY] = [c for c in candidates if id(c[0]) not in done]
                candidates = session.info[CANDIDATES_KEY]

        for obj in deleted:
            if only is not None and id(obj) not in only:
                continue
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            committed = state.committed_state
            old_version = _committed_version(obj, committed, state.dict)
            check_expected_version(session, obj, state, old_version)
            candidates.append((obj, old_version))
            if suppressed:
                continue
            info = change_info().build(type(obj), state, deleted=True)
            began = _old_valid_from(obj, state)
            values = _stored_values(obj, meta)
            ended = _ends_at(changed_at, began)
            batch.add(meta, values, old_version, ended, info, valid_from=began)
            batch.states.append(state)

        for obj in new:
            meta = meta_of(type(obj))
            if meta is not None:
                self._continue_sequence(obj, meta)

    @staticmethod
    def _continue_sequence(obj: Any, meta: VersionMeta) -> None:
        """Give a new row whose key was used before the next version of that key.

        Only rows whose primary key is set in Python can collide with an old key;
        generated keys are new by construction and keep version 0 at no cost.
        """
        state = instance_state(obj)
        dict_ = state.dict
        if dict_.get(VERSION_KEY) is not None:
            return
        values = [dict_.get(key) for key in meta.pk_keys]
        if any(value is None for value in values):
            return
        base = meta.tables[0]
        history = base.history
        criteria = [
            history.c[col_key] == sa.literal(value, type_=history.c[col_key].type)
            for (_, col_key), value in zip(base.pk, values, strict=True)
        ]
        next_version = (
            sa.select(sa.func.coalesce(sa.func.max(history.c.version) + 1, 0))
            .where(*criteria)
            .scalar_subquery()
        )
        setattr(obj, VERSION_KEY, next_version)

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        batch = session.info.pop(PENDING_KEY, None)
        session.info.pop(CANDIDATES_KEY, None)
        if batch:
            batch.write(session)

    # -- ORM bulk statements -----------------------------------------------------

    def do_orm_execute(self, orm_execute_state: ORMExecuteState) -> Any:
        from chrononaut.versioning._bulk import run_bulk

        return run_bulk(self.settings, orm_execute_state)
