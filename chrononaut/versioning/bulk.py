"""History for ORM bulk statements (SPEC §2, "ORM bulk statements")."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from chrononaut.concurrency import forget_expected_version, stale_write_error
from chrononaut.context import extra_info_active, versioning_suppressed
from chrononaut.errors import StaleWriteError
from chrononaut.versioning.capture import _Batch, _now, _require_context
from chrononaut.versioning.change_info import ChangeInfoBuilder, Settings, consume_appended
from chrononaut.versioning.model import VERSION_KEY, VersionMeta, meta_of

__all__ = ["run_bulk"]

_BULK_GUARD = "chrononaut_bulk_internal"


def run_bulk(settings: Settings, orm_execute_state: ORMExecuteState) -> Any:
    """The ``do_orm_execute`` listener's work: history for a bulk UPDATE/DELETE."""
    state = orm_execute_state
    if not (state.is_update or state.is_delete):
        return None
    if state.execution_options.get(_BULK_GUARD) or versioning_suppressed():
        return None
    mapper = state.bind_arguments.get("mapper")
    meta = meta_of(mapper.class_) if mapper is not None else None
    if meta is None:
        return None
    return _BulkStatement(settings, state, meta).run()


class _BulkStatement:
    """History for one ORM bulk UPDATE or DELETE (SPEC §2, "ORM bulk statements").

    The affected rows are selected FOR UPDATE first (so nobody changes them
    between our read and the statement; hidden columns as md5 digests, so their
    values never leave the server), the statement runs restricted to exactly
    those rows, and the rows whose tracked or hidden values changed get their
    history row and version bump — in one more statement that compares in the
    database where arrays can carry the columns, else row by row here.
    """

    def __init__(self, settings: Settings, state: ORMExecuteState, meta: VersionMeta) -> None:
        self.settings = settings
        self.state = state
        self.meta = meta
        self.session = state.session
        self.cls = meta.mapper.class_

    def _attr(self, key: str) -> Any:
        return getattr(self.cls, key)

    def _pk_clause(self, pks: list[tuple[Any, ...]]) -> sa.ColumnElement[bool]:
        columns = [self._attr(key) for key in self.meta.pk_keys]
        if len(columns) == 1:
            return columns[0].in_([pk[0] for pk in pks])  # type: ignore[no-any-return]
        return sa.tuple_(*columns).in_(pks)

    def _select(self, keys: list[str], where: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
        n = len(self.meta.pk_keys)
        # Hidden columns are compared by their md5: their values never leave the server.
        columns = [
            sa.func.md5(sa.cast(self._attr(k), sa.Text())).label(k)
            if k in self.meta.hidden
            else self._attr(k)
            for k in (*self.meta.pk_keys, *keys)
        ]
        statement = sa.select(*columns).where(where)
        statement = statement.with_for_update().execution_options(**{_BULK_GUARD: True})
        rows = self.session.execute(statement).all()
        return {tuple(row[:n]): dict(zip(keys, row[n:], strict=True)) for row in rows}

    def run(self) -> Any:
        state = self.state
        meta = self.meta
        statement = state.statement
        watched = sorted(meta.watched)
        keys = [
            VERSION_KEY,
            *[k for k in meta.tracked if k not in meta.pk_keys],
            *sorted(meta.hidden),
        ]
        keys = list(dict.fromkeys(keys))
        params = state.parameters
        if isinstance(params, list) and params and all(isinstance(p, dict) for p in params):
            # ORM bulk UPDATE by primary key: the rows are named in the parameters.
            try:
                pks = [tuple(p[k] for k in meta.pk_keys) for p in params]
            except KeyError:
                return None
            where: Any = self._pk_clause(pks)
            restrict = False
        else:
            where = statement.whereclause  # type: ignore[attr-defined]
            if where is None:
                where = sa.true()
            restrict = True
        old = self._select(keys, where)
        if not old:
            # Nothing matched. A statement pinning one row's key and version is a
            # hand-written optimistic check: if that version is gone, say so.
            self._check_pinned(statement if restrict else None, params)
            return None
        if restrict:
            statement = statement.where(self._pk_clause(list(old)))  # type: ignore[attr-defined]
        try:
            result = state.invoke_statement(statement=statement)
        except StaleDataError as exc:
            # ORM bulk UPDATE by primary key compares the version parameters itself.
            if not isinstance(exc, StaleWriteError):
                self._check_pinned(None, params)
            raise

        builder = ChangeInfoBuilder(self.session, self.settings)
        batch = _Batch()
        changed_at = _now()
        identity_map = self.session.identity_map
        if state.is_delete:
            _require_context(self.settings)
            for pk, values in old.items():
                obj_state = self._identity_state(identity_map, pk)
                row_values = dict(zip(meta.pk_keys, pk, strict=True))
                row_values.update(values)
                info = builder.build(self.cls, obj_state, deleted=True)
                batch.add(meta, row_values, values[VERSION_KEY], changed_at, info)
            batch.write(self.session)
            return result

        bulk_statement = meta.bulk_history_statement()
        if bulk_statement is not None and not (
            self.settings.require_extra_change_info() and not extra_info_active()
        ):
            self._record_in_one_statement(bulk_statement, old, builder, changed_at)
            return result

        new = self._select(keys, self._pk_clause(list(old)))
        bumped: list[tuple[Any, ...]] = []
        for pk, values in old.items():
            after = new.get(pk)
            if after is None:
                continue
            changed = [k for k in watched if k in values and values[k] != after.get(k)]
            if not changed:
                continue
            if not bumped:
                _require_context(self.settings)
            bumped.append(pk)
            obj_state = self._identity_state(identity_map, pk)
            row_values = dict(zip(meta.pk_keys, pk, strict=True))
            row_values.update(values)
            hidden = [k for k in changed if k in meta.hidden]
            info = builder.build(self.cls, obj_state, hidden_changed=hidden)
            batch.add(meta, row_values, values[VERSION_KEY], changed_at, info)
            if obj_state is not None:
                batch.states.append(obj_state)
        if bumped:
            base_table = meta.tables[0]
            version_col = meta.version_column
            table = version_col.table
            pk_columns = [table.c[col_key] for _, col_key in base_table.pk]
            if len(pk_columns) == 1:
                pk_where = pk_columns[0].in_([pk[0] for pk in bumped])
            else:
                pk_where = sa.tuple_(*pk_columns).in_(bumped)
            connection = self.session.connection(bind_arguments={"mapper": meta.mapper})
            connection.execute(
                sa.update(table).where(pk_where).values({version_col.key: version_col + 1})
            )
            batch.write(self.session)
            for pk in bumped:
                obj_state = self._identity_state(identity_map, pk)
                if obj_state is not None and obj_state.obj() is not None:
                    set_committed_value(obj_state.obj(), VERSION_KEY, old[pk][VERSION_KEY] + 1)
        return result

    def _record_in_one_statement(
        self,
        statement: sa.Update,
        old: dict[tuple[Any, ...], dict[str, Any]],
        builder: ChangeInfoBuilder,
        changed_at: dt.datetime,
    ) -> None:
        """Compare, write history and bump versions in one statement (see
        ``VersionMeta.bulk_history_statement``); sync the identity map after."""
        meta = self.meta
        identity_map = self.session.identity_map
        tracked = [key for key, _ in meta.tables[0].columns if key not in meta.pk_keys]
        hidden = sorted(meta.hidden)
        pks = list(old)
        states = {pk: self._identity_state(identity_map, pk) for pk in pks}
        params: dict[str, Any] = {"changed": changed_at}
        for i in range(len(meta.pk_keys)):
            params[f"k{i}"] = [pk[i] for pk in pks]
        params["v"] = [old[pk][VERSION_KEY] for pk in pks]
        for j, key in enumerate(tracked):
            params[f"t{j}"] = [old[pk][key] for pk in pks]
        for m, key in enumerate(hidden):
            params[f"hh{m}"] = [old[pk][key] for pk in pks]
        params["ci"] = [builder.build(self.cls, states[pk]) for pk in pks]
        connection = self.session.connection(bind_arguments={"mapper": meta.mapper})
        n = len(meta.pk_keys)
        for row in connection.execute(statement, params):
            pk = tuple(row[:n])
            obj_state = states.get(pk)
            if obj_state is None:
                continue
            consume_appended(obj_state)
            forget_expected_version(obj_state)
            obj = obj_state.obj()
            if obj is not None:
                set_committed_value(obj, VERSION_KEY, row[n])

    def _check_pinned(self, statement: Any, params: Any) -> None:
        """Raise :class:`StaleWriteError` for a pinned ``(key, version)`` that is gone.

        A row is pinned by a WHERE clause of equalities on every primary-key column
        and ``version`` (``update(Doc).where(Doc.id == 1, Doc.version == 3)``), or by
        a parameter set of an ORM bulk UPDATE by primary key that includes ``version``.
        """
        pinned: list[tuple[tuple[Any, ...], int]] = []
        if statement is not None:
            found = _pinned_row(statement.whereclause, self.meta)
            if found is not None:
                pinned.append(found)
        elif isinstance(params, list):
            for p in params:
                if isinstance(p, dict) and isinstance(p.get(VERSION_KEY), int):
                    try:
                        pk = tuple(p[k] for k in self.meta.pk_keys)
                    except KeyError:
                        continue
                    pinned.append((pk, p[VERSION_KEY]))
        if not pinned:
            return
        bind = self.session.get_bind(mapper=self.meta.mapper)
        identity_map = self.session.identity_map
        for pk, version in pinned:
            obj_state = self._identity_state(identity_map, pk)
            obj = obj_state.obj() if obj_state is not None else None
            error = stale_write_error(bind, obj, version, model=self.cls, pk=pk)
            if error is not None:
                raise error

    def _identity_state(self, identity_map: Any, pk: tuple[Any, ...]) -> InstanceState[Any] | None:
        key = self.meta.mapper.identity_key_from_primary_key(pk)
        obj = identity_map.get(key)
        return instance_state(obj) if obj is not None else None


def _equalities(clause: Any, found: list[tuple[Any, Any]]) -> None:
    """Collect ``column = value`` terms of a conjunction (AND at any depth)."""
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for term in clause.clauses:
            _equalities(term, found)
    elif isinstance(clause, BinaryExpression) and clause.operator is operators.eq:
        left, right = clause.left, clause.right
        if isinstance(left, BindParameter):
            left, right = right, left
        if isinstance(left, sa.Column) and isinstance(right, BindParameter):
            found.append((left, right.effective_value))


def _pinned_row(where: Any, meta: VersionMeta) -> tuple[tuple[Any, ...], int] | None:
    """``(primary key, version)`` when ``where`` pins exactly one row and its version."""
    if where is None:
        return None
    terms: list[tuple[Any, Any]] = []
    _equalities(where, terms)

    def value_of(column: sa.Column[Any]) -> Any:
        values = {repr(v) for c, v in terms if column in c.proxy_set}
        if len(values) != 1:
            return None  # absent, or contradictory terms: not a pin
        return next(v for c, v in terms if column in c.proxy_set)

    pk = tuple(value_of(meta.columns[key]) for key in meta.pk_keys)
    version = value_of(meta.version_column)
    if any(value is None for value in pk) or not isinstance(version, int):
        return None
    return pk, version
