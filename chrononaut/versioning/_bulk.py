"""History for ORM bulk statements."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import array as pg_array
from sqlalchemy.dialects.postgresql.dml import OnConflictDoUpdate
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    TextClause,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from chrononaut._context import versioning_suppressed
from chrononaut.errors import ChrononautException, StaleWriteError
from chrononaut.versioning._change_info import ChangeInfoBuilder, Settings, consume_appended
from chrononaut.versioning._concurrency import _expected, forget_expected_version, stale_write_error
from chrononaut.versioning._meta import VALID_FROM_KEY, VERSION_KEY, VersionMeta, meta_of
from chrononaut.versioning._writes import _Batch, _now, _require_context

__all__ = ["run_bulk"]

_BULK_GUARD = "chrononaut_bulk_internal"


def run_bulk(settings: Settings, orm_execute_state: ORMExecuteState) -> Any:
    """The ``do_orm_execute`` listener's work: history for a bulk UPDATE/DELETE."""
    state = orm_execute_state
    statement = state.statement
    upsert = state.is_insert and isinstance(
        getattr(statement, "_post_values_clause", None), OnConflictDoUpdate
    )
    if not (state.is_update or state.is_delete or upsert):
        return None
    if state.execution_options.get(_BULK_GUARD):
        return None
    mapper = state.bind_arguments.get("mapper")
    meta = meta_of(mapper.class_) if mapper is not None else None
    if versioning_suppressed():
        return _suppressed_by_key(state, meta) if meta is not None else None
    if meta is None:
        return None
    _refuse_version_assignment(statement, meta, state.parameters)
    if upsert:
        _require_context(settings)
        return _Upsert(settings, state, meta).run()
    # SPEC §3: refused before anything is sent, whether or not a row would change.
    _require_context(settings)
    if _one_statement_possible(state, meta):
        return _OneStatement(settings, state, meta).run()
    return _BulkStatement(settings, state, meta).run()


def _suppressed_by_key(state: ORMExecuteState, meta: VersionMeta) -> Any:
    """An ORM bulk UPDATE by primary key under ``suppress_versioning()``.

    Parameter sets without ``version`` are not version-checked (SPEC §2), but
    SQLAlchemy's UPDATE by primary key needs one for its WHERE: give it each row's
    version, read locked, which it then keeps (nothing is bumped).
    """
    params = state.parameters
    if not (
        state.is_update
        and isinstance(params, list)
        and params
        and all(isinstance(p, dict) for p in params)
        and any(VERSION_KEY not in p for p in params)
    ):
        return None
    cls = meta.mapper.class_
    try:
        pks = [tuple(p[k] for k in meta.pk_keys) for p in params]
    except KeyError:
        return None  # SQLAlchemy says what is missing
    columns = [getattr(cls, key) for key in meta.pk_keys]
    n = len(columns)
    where = columns[0].in_([pk[0] for pk in pks]) if n == 1 else sa.tuple_(*columns).in_(pks)
    locked = (
        sa.select(*columns, getattr(cls, VERSION_KEY))
        .where(where)
        .with_for_update(of=meta.version_column.table)
        .execution_options(**{_BULK_GUARD: True})
    )
    versions = {tuple(row[:n]): row[n] for row in state.session.execute(locked)}
    filled = [
        dict(p)
        if VERSION_KEY in p
        else {**p, VERSION_KEY: versions.get(tuple(p[k] for k in meta.pk_keys), -1)}
        for p in params
    ]
    return state.invoke_statement(params=filled)


def _refuse_version_assignment(statement: Any, meta: VersionMeta, params: Any) -> None:
    """SPEC §2: ``version`` is Chrononaut's; a bulk ``SET`` or upsert ``set_`` of it
    is refused before any statement."""
    keys: list[Any] = list(getattr(statement, "_values", None) or ())
    if isinstance(params, dict) and isinstance(statement, sa.Update):
        keys.extend(params)  # one parameter dict: SQLAlchemy SETs its keys
    post = getattr(statement, "_post_values_clause", None)
    keys.extend(getattr(post, "update_values_to_set", None) or ())
    if isinstance(params, list) and isinstance(statement, sa.Update):
        # UPDATE by primary key: ``version`` in a parameter set is a version check,
        # ``valid_from`` an assignment.
        keys.extend(
            key for p in params if isinstance(p, dict) for key in p if key == VALID_FROM_KEY
        )
    valid_from = meta.version_column.table.c[VALID_FROM_KEY]
    for key in keys:
        name = key if isinstance(key, str) else getattr(key, "key", None)
        column = getattr(key, "name", None)
        if name in (VERSION_KEY, meta.version_column.name) or column == meta.version_column.name:
            raise ChrononautException(
                f"{meta.mapper.class_.__name__}.{VERSION_KEY} is set by Chrononaut: "
                "remove it from the statement's values (to check a version, put it "
                "in the WHERE clause or the parameter sets of an UPDATE by primary key)"
            )
        if name in (VALID_FROM_KEY, valid_from.key) or column == valid_from.name:
            raise ChrononautException(
                f"{meta.mapper.class_.__name__}.{VALID_FROM_KEY} is set by Chrononaut "
                "(when a change bumps the version): remove it from the statement's values"
            )


def _ended(changed_at: dt.datetime, began: dt.datetime | None) -> dt.datetime:
    """When a version that began at ``began`` ends if changed at ``changed_at``:
    never before it began (clocks of two writers may disagree)."""
    return changed_at if began is None or began <= changed_at else began


def _sync_mode(state: ORMExecuteState) -> Any:
    """The ``synchronize_session`` the caller chose (SQLAlchemy's default: "auto")."""
    mode = state.execution_options.get("synchronize_session")
    if mode is None:
        options = state.update_delete_options
        mode = getattr(options, "_synchronize_session", "auto")
    return mode


class _BulkStatement:
    """History for one ORM bulk UPDATE or DELETE.

    The two-statement path, for what :class:`_OneStatement` does not cover. The
    affected rows are selected FOR UPDATE first (so nobody changes them between
    our read and the statement; for hidden columns only whether the statement
    changes them, decided in the database), the statement runs restricted to
    exactly those rows, and the rows whose tracked or hidden values changed get
    their history row and version bump — in one more statement that compares in
    the database where arrays can carry the columns (models without hidden
    columns), else here.
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

    def _select(
        self,
        keys: list[str],
        where: Any,
        flags: dict[str, Any] | None = None,
        source: Any = None,
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The rows ``where`` matches, locked: key -> values of ``keys``.

        A hidden key's value is never read: it is the boolean ``flags[key]``
        (whether the statement changes it, decided in the database) or false.
        """
        n = len(self.meta.pk_keys)
        flags = flags or {}
        columns = [
            sa.type_coerce(flags.get(k, sa.false()), sa.Boolean()).label(k)
            if k in self.meta.hidden
            else self._attr(k)
            for k in (*self.meta.pk_keys, *keys)
        ]
        statement = sa.select(*columns).where(where)
        if source is not None:
            statement = statement.select_from(source)
        statement = statement.with_for_update(of=self.meta.version_column.table)
        statement = statement.execution_options(**{_BULK_GUARD: True})
        rows = self.session.execute(statement).all()
        return {tuple(row[:n]): dict(zip(keys, row[n:], strict=True)) for row in rows}

    def _hidden_flags(self, by_key: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        """Per hidden key, whether the statement changes it, as SQL for the locking
        SELECT (hidden values and digests of them never leave the database); and
        the FROM that SELECT needs for it."""
        meta = self.meta
        hidden = sorted(meta.hidden)
        flags: dict[str, Any] = {}
        if not hidden or self.state.is_delete:
            return flags, None
        if by_key:
            # The new values are in the parameter sets: join them as VALUES.
            table = meta.version_column.table
            pk_columns = [meta.columns[k] for k in meta.pk_keys]
            columns = [sa.column(f"k{i}", c.type) for i, c in enumerate(pk_columns)]
            for m, key in enumerate(hidden):
                columns.append(sa.column(f"p{m}", sa.Boolean()))
                columns.append(sa.column(f"h{m}", meta.columns[key].type))
            rows = []
            for p in by_key:
                row: list[Any] = [p[k] for k in meta.pk_keys]
                for key in hidden:
                    row.extend((key in p, p.get(key)))
                rows.append(tuple(row))
            proposed = sa.values(*columns, name="chrononaut_pv").data(rows)
            source = table.join(
                proposed,
                sa.and_(*[c == proposed.c[f"k{i}"] for i, c in enumerate(pk_columns)]),
            )
            for m, key in enumerate(hidden):
                flags[key] = sa.and_(
                    proposed.c[f"p{m}"], _differs(proposed.c[f"h{m}"], meta.columns[key])
                )
            return flags, source
        values = getattr(self.state.statement, "_values", None) or {}
        by_name = {getattr(k, "name", k): v for k, v in values.items()}
        params = self.state.parameters
        if isinstance(params, dict):
            for name, value in params.items():
                by_name.setdefault(name, sa.literal(value))
        for key in hidden:
            column = meta.columns[key]
            if column.name in by_name:
                flags[key] = _differs(by_name[column.name], column)
        return flags, None

    def run(self) -> Any:
        state = self.state
        meta = self.meta
        statement = state.statement
        watched = sorted(meta.watched)
        keys = [
            VERSION_KEY,
            VALID_FROM_KEY,
            *[k for k in meta.tracked if k not in meta.pk_keys],
            *sorted(meta.hidden),
        ]
        keys = list(dict.fromkeys(keys))
        params = state.parameters
        by_key: list[dict[str, Any]] = []
        if isinstance(params, list) and params and all(isinstance(p, dict) for p in params):
            by_key = params
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
        flags, source = self._hidden_flags(by_key)
        old = self._select(keys, where, flags, source)
        if not old:
            # Nothing matched. A statement pinning one row's key and version is a
            # hand-written optimistic check: if that version is gone, say so.
            self._check_pinned(statement if restrict else None, params)
            return None
        invoke: dict[str, Any] = {}
        if restrict:
            statement = statement.where(self._pk_clause(list(old)))  # type: ignore[attr-defined]
        elif any(VERSION_KEY not in p for p in by_key):
            # SPEC §2: parameter sets without ``version`` are not version-checked.
            # SQLAlchemy's UPDATE by primary key needs one for its WHERE: give it
            # the version we just locked, which no one can change any more.
            # (A key without a row gets -1: SQLAlchemy reports it as 0 rows matched.)
            locked = {pk: values[VERSION_KEY] for pk, values in old.items()}
            invoke["params"] = [
                dict(p)
                if VERSION_KEY in p
                else {**p, VERSION_KEY: locked.get(tuple(p[k] for k in meta.pk_keys), -1)}
                for p in by_key
            ]
        try:
            result = state.invoke_statement(statement=statement, **invoke)
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
                began = values[VALID_FROM_KEY]
                batch.add(
                    meta, row_values, values[VERSION_KEY], _ended(changed_at, began), info, began
                )
            batch.write(self.session)
            return result

        new = self._select([k for k in keys if k not in meta.hidden], self._pk_clause(list(old)))
        bumped: list[tuple[Any, ...]] = []
        for pk, values in old.items():
            after = new.get(pk)
            if after is None:
                continue
            changed = [
                k
                for k in watched
                if k in values
                and (values[k] is True if k in meta.hidden else values[k] != after.get(k))
            ]
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
            began = values[VALID_FROM_KEY]
            batch.add(meta, row_values, values[VERSION_KEY], _ended(changed_at, began), info, began)
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
            valid_from = table.c[VALID_FROM_KEY]
            ended = sa.func.greatest(
                sa.bindparam("chrononaut_changed", changed_at, type_=sa.DateTime(timezone=True)),
                valid_from,
            )
            connection.execute(
                sa.update(table)
                .where(pk_where)
                .values({version_col.key: version_col + 1, valid_from.key: ended})
            )
            batch.write(self.session)
            # SPEC §2: loaded records learn their new version only where SQLAlchemy
            # synchronises the statement's values into the session.
            synchronised = _sync_mode(state) is not False
            for pk in bumped if synchronised else ():
                obj_state = self._identity_state(identity_map, pk)
                if obj_state is not None and obj_state.obj() is not None:
                    set_committed_value(obj_state.obj(), VERSION_KEY, old[pk][VERSION_KEY] + 1)
                    set_committed_value(
                        obj_state.obj(),
                        VALID_FROM_KEY,
                        _ended(changed_at, old[pk][VALID_FROM_KEY]),
                    )
        return result

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
        # The session's own connection: a second one may not exist (pool of one).
        bind = self.session.connection(bind_arguments={"mapper": self.meta.mapper})
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


# -- one statement ---------------------------------------------------------------

#: Functions whose value is the same at each evaluation within one statement
#: (immutable or stable in PostgreSQL's terms). A SET or WHERE calling anything
#: else (``random()``, ``clock_timestamp()``, ``nextval()``, user functions) goes
#: the two-statement way, because the one-statement shape evaluates SET
#: expressions twice: once to decide whether the row changes, once to write it.
_STABLE_FUNCTIONS = frozenset(
    {
        "abs", "array_append", "array_cat", "array_length", "array_remove", "btrim",
        "cast", "ceil", "char_length", "coalesce", "concat", "concat_ws",
        "current_date", "current_timestamp", "current_user", "date_trunc", "floor",
        "greatest", "initcap", "jsonb_build_object", "jsonb_set", "least", "left",
        "length", "localtimestamp", "lower", "ltrim", "md5", "now", "nullif",
        "replace", "right", "round", "rtrim", "sqrt", "substr", "substring",
        "to_jsonb", "trim", "trunc", "upper",
        # aggregates (in subqueries of the criteria)
        "array_agg", "avg", "bool_and", "bool_or", "count", "max", "min",
        "string_agg", "sum",
    }
)  # fmt: skip


def _volatile(clauses: list[Any]) -> bool:
    """Whether any of ``clauses`` may give another value when evaluated again."""
    for clause in clauses:
        if not isinstance(clause, sa.ClauseElement):
            continue
        for element in visitors.iterate(clause):
            if isinstance(element, FunctionElement):
                if str(getattr(element, "name", "")).lower() not in _STABLE_FUNCTIONS:
                    return True
            elif isinstance(element, TextClause) or (
                isinstance(element, ColumnClause) and element.is_literal
            ):
                return True  # SQL text we cannot see into
    return False


def _one_statement_possible(state: ORMExecuteState, meta: VersionMeta) -> bool:
    """Whether the statement can carry its history in the same statement.

    Not for: ORM bulk UPDATE by primary key (SQLAlchemy runs its own
    executemany), SET values given as execution parameters, ordered SET, keys
    changed by the SET, joined inheritance (several tables), ``onupdate``
    columns (SQLAlchemy adds them to the SET), volatile expressions.
    """
    statement = state.statement
    if state.parameters:
        return False
    if not isinstance(statement, (sa.Update, sa.Delete)) or len(meta.tables) != 1:
        return False
    if meta._has_onupdate or any(isinstance(c.type, sa.ARRAY) for c in _pk_columns(meta)):
        return False
    if any(getattr(option, "_is_criteria_option", False) for option in statement._with_options):
        return False  # with_loader_criteria(): SQLAlchemy adds WHERE terms we don't see
    clauses: list[Any] = [statement.whereclause]
    if isinstance(statement, sa.Update):
        if statement._maintain_values_ordering or not statement._values:
            return False
        pk_names = {column.name for column in _pk_columns(meta)}
        if any(getattr(key, "name", key) in pk_names for key in statement._values):
            return False
        clauses.extend(statement._values.values())
    table = meta.version_column.table
    for clause in clauses:
        # Criteria joining other tables (UPDATE ... FROM) could match a row more
        # than once in the locking SELECT; subqueries are fine.
        froms = getattr(clause, "_from_objects", None) or ()
        if any(f is not table and f._deannotate() is not table for f in froms):
            return False
    return not _volatile(clauses)


class _NestedInsert(sa.Insert):
    """An INSERT inside a WITH of an ORM statement.

    SQLAlchemy keeps the RETURNING columns it adds to a DML statement (the keys
    ``synchronize_session="fetch"`` reads back) in compiler-wide lists that
    compiling a nested INSERT resets; this INSERT puts them back.
    """

    inherit_cache = True


@compiles(_NestedInsert)
def _compile_nested_insert(element: _NestedInsert, compiler: Any, **kw: Any) -> str:
    saved = (
        compiler.postfetch,
        compiler.insert_prefetch,
        compiler.update_prefetch,
        compiler.implicit_returning,
    )
    try:
        return str(compiler.visit_insert(element, **kw))
    finally:
        (
            compiler.postfetch,
            compiler.insert_prefetch,
            compiler.update_prefetch,
            compiler.implicit_returning,
        ) = saved


class _LockedRowsJoin(sa.ColumnElement[bool]):
    """``t.<key> = chrononaut_o.<key>``: joins the statement to its locked rows.

    Rendered as that comparison; to SQLAlchemy's Python evaluator (which
    ``synchronize_session="auto"/"evaluate"`` runs on the identity map) it reads
    as TRUE, because every row it joins is a row the user's WHERE matched: the
    records SQLAlchemy synchronises are exactly the ones it would without it,
    with no RETURNING of every key ("fetch") to find them.
    """

    __visit_name__ = "true"
    inherit_cache = True
    _traverse_internals = [("clause", InternalTraversal.dp_clauseelement)]

    def __init__(self, clause: sa.ColumnElement[bool]) -> None:
        self.clause = clause
        self.type = sa.Boolean()

    @property
    def _from_objects(self) -> Any:
        return self.clause._from_objects

    def self_group(self, against: Any = None) -> Any:
        # Already a boolean comparison: no "IS true" wrapper in a conjunction.
        return self


@compiles(_LockedRowsJoin)
def _compile_locked_rows_join(element: _LockedRowsJoin, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clause, **kw))


def _pk_columns(meta: VersionMeta) -> list[sa.Column[Any]]:
    table = meta.version_column.table
    return [table.c[col_key] for _, col_key in meta.tables[0].pk]


def _differs(new: Any, column: Any) -> sa.ColumnElement[bool]:
    """``new IS DISTINCT FROM column``, for every column type."""
    new = sa.type_coerce(new, column.type)
    if isinstance(column.type, sa.JSON) and not isinstance(column.type, JSONB):
        # json has no equality operator; its text is what was stored.
        return sa.cast(new, sa.Text()).is_distinct_from(sa.cast(column, sa.Text()))
    return new.is_distinct_from(column)  # type: ignore[no-any-return]


class _OneStatement:
    """History for an ORM bulk UPDATE/DELETE, written by the statement itself.

    The user's statement becomes the last part of one statement::

        WITH chrononaut_o AS (            -- the rows, locked, as they are now
               SELECT <key>, version, <tracked columns>,
                      <SET value> IS DISTINCT FROM <column> OR ... AS chg,
                      <names of the hidden columns that change> AS hc
               FROM t WHERE <user's WHERE> FOR UPDATE OF t),
             chrononaut_h AS (            -- their history rows, where they change
               INSERT INTO t_history (...)
               SELECT o.<key>, o.<tracked>, o.version, :changed, <change_info>
               FROM chrononaut_o o [LEFT JOIN chrononaut_x x ON key] WHERE o.chg)
        UPDATE t SET <user's SET>,
                     version = CASE WHEN o.chg THEN t.version + 1 ELSE t.version END
        FROM chrononaut_o o WHERE <user's WHERE> AND t.<key> = o.<key>
        [RETURNING <user's columns>]

    (DELETE: ``DELETE FROM t USING chrononaut_o ...``, every row gets a history
    row.) Hidden columns are compared inside the database; only their names come
    out, into change_info. change_info shared by all rows is sent once;
    ``chrononaut_x`` (an ``unnest`` of two small arrays) carries the rows whose
    change_info differs: records of the identity map locked in this session or
    with ``append_change_info`` notes.
    """

    def __init__(self, settings: Settings, state: ORMExecuteState, meta: VersionMeta) -> None:
        self.settings = settings
        self.state = state
        self.meta = meta
        self.session = state.session
        self.cls = meta.mapper.class_

    def run(self) -> Any:
        state = self.state
        meta = self.meta
        statement: Any = state.statement
        delete = state.is_delete
        table = meta.version_column.table
        tmap = meta.tables[0]
        history = tmap.history
        pk_columns = _pk_columns(meta)
        pk_names = {column.name for column in pk_columns}
        version = table.c[meta.version_column.key]
        changed_at = _now()
        builder = ChangeInfoBuilder(self.session, self.settings)
        shared = builder.build(self.cls, None, deleted=delete)
        exceptional = self._exceptional(builder, shared, delete)

        # The rows as they are now, locked: what their history rows hold.
        tracked = [(key, table.c[col_key]) for key, col_key in tmap.columns]
        columns: list[Any] = [column.label(f"k{i}") for i, column in enumerate(pk_columns)]
        columns.append(version.label("v"))
        non_key = [column for _, column in tracked if column.name not in pk_names]
        columns.extend(column.label(f"t{j}") for j, column in enumerate(non_key))
        hidden_names: list[Any] = []
        if not delete:
            values = {getattr(key, "name", key): value for key, value in statement._values.items()}
            changes = []
            for key in sorted(meta.watched):
                column = meta.columns[key]
                if column.name in values:
                    differs = _differs(values[column.name], column)
                    changes.append(differs)
                    if key in meta.hidden:
                        hidden_names.append(sa.case((differs, sa.literal(key)), else_=sa.null()))
            columns.append(sa.or_(sa.false(), *changes).label("chg"))
            if hidden_names:
                names = sa.func.array_remove(
                    pg_array[Any](hidden_names, type_=sa.Text()), sa.null(), type_=ARRAY(sa.Text())
                )
                columns.append(names.label("hc"))
        columns.append(table.c[VALID_FROM_KEY].label("vf"))
        where = statement.whereclause
        old_rows = sa.select(*columns)
        if where is not None:
            old_rows = old_rows.where(where)
        # SQLAlchemy adds a single-table subclass's discriminator to the statement
        # when it compiles it: the locked rows need it too.
        single = self.state.bind_arguments["mapper"]._single_table_criterion
        if single is not None:
            old_rows = old_rows.where(single)
        old = old_rows.with_for_update(of=table).cte("chrononaut_o")

        changed = sa.bindparam("chrononaut_changed", changed_at, type_=sa.DateTime(timezone=True))
        info: Any = sa.bindparam("chrononaut_ci", shared, type_=JSONB())
        source: Any = old
        extra = None
        if exceptional:
            extra = self._exceptional_rows(exceptional)
            source = old.outerjoin(
                extra,
                sa.and_(*[old.c[f"k{i}"] == extra.c[f"k{i}"] for i in range(len(pk_columns))]),
            )
            info = sa.func.coalesce(extra.c.ci, info, type_=JSONB())
        if hidden_names:
            info = sa.case(
                (
                    sa.func.cardinality(old.c.hc) > 0,
                    info.op("||")(
                        sa.func.jsonb_build_object(
                            sa.literal("hidden_cols_changed"), sa.func.to_jsonb(old.c.hc)
                        )
                    ),
                ),
                else_=info,
            )
        copied: list[Any] = []
        targets: list[Any] = []
        j = 0
        for (_, column), (_, col_key) in zip(tracked, tmap.columns, strict=True):
            targets.append(history.c[col_key])
            if column.name in pk_names:
                copied.append(old.c[f"k{[c.name for c in pk_columns].index(column.name)}"])
            else:
                copied.append(old.c[f"t{j}"])
                j += 1
        # The old version ends where the new one begins; never before it began.
        ended = sa.func.greatest(changed, old.c.vf, type_=sa.DateTime(timezone=True))
        targets.append(history.c[VALID_FROM_KEY])
        copied.append(old.c.vf)
        rows = sa.select(*copied, old.c.v, ended, sa.type_coerce(info, JSONB())).select_from(
            source
        )
        if not delete:
            rows = rows.where(old.c.chg)
        history_rows = (
            _NestedInsert(history)
            .from_select(
                [*targets, history.c.version, history.c.changed, history.c.change_info], rows
            )
            .cte("chrononaut_h")
        )

        main = statement.where(
            _LockedRowsJoin(
                sa.and_(*[column == old.c[f"k{i}"] for i, column in enumerate(pk_columns)])
            )
        )
        if not delete:
            bumped: dict[Any, Any] = {
                version: sa.case((old.c.chg, version + sa.literal_column("1")), else_=version)
            }
            valid_from = table.c[VALID_FROM_KEY]
            bumped[valid_from] = sa.case((old.c.chg, ended), else_=valid_from)
            main = main.values(bumped)
        main = main.add_cte(old)
        if extra is not None:
            main = main.add_cte(extra)
        main = main.add_cte(history_rows)

        result = state.invoke_statement(statement=main)
        if _pinned_row(statement.whereclause, meta) is not None:
            # A statement pinning one row's key and version is a hand-written
            # optimistic check: if it matched nothing because that version is
            # gone, say so.
            rowcount = getattr(result, "rowcount", None)
            if rowcount is None:  # RETURNING: count the rows, hand back a copy
                frozen = result.freeze()
                rowcount = len(frozen.data)
                result = frozen()
            if rowcount == 0:
                _BulkStatement(self.settings, state, meta)._check_pinned(statement, None)
        if exceptional:
            self._written(exceptional, changed_at)
        return result

    def _exceptional(
        self, builder: ChangeInfoBuilder, shared: dict[str, Any], delete: bool
    ) -> dict[tuple[Any, ...], tuple[InstanceState[Any], dict[str, Any]]]:
        """Records of the identity map whose change_info differs from the shared one."""
        found: dict[tuple[Any, ...], tuple[InstanceState[Any], dict[str, Any]]] = {}
        mapper = self.meta.mapper
        for obj in list(self.session.identity_map.values()):
            obj_state = instance_state(obj)
            if not obj_state.mapper.isa(mapper) or obj_state.key is None:
                continue
            info = builder.build(self.cls, obj_state, deleted=delete)
            if info != shared or obj_state in _expected:
                found[tuple(obj_state.key[1])] = (obj_state, info)
        return found

    def _exceptional_rows(
        self, exceptional: dict[tuple[Any, ...], tuple[InstanceState[Any], dict[str, Any]]]
    ) -> Any:
        pk_columns = _pk_columns(self.meta)
        pks = list(exceptional)
        arrays = [
            sa.cast(
                sa.bindparam(f"chrononaut_xk{i}", [pk[i] for pk in pks], type_=ARRAY(c.type)),
                ARRAY(c.type),
            )
            for i, c in enumerate(pk_columns)
        ]
        infos = sa.cast(
            sa.bindparam(
                "chrononaut_xci", [exceptional[pk][1] for pk in pks], type_=ARRAY(JSONB())
            ),
            ARRAY(JSONB()),
        )
        rows = sa.func.unnest(*arrays, infos).table_valued(
            *[sa.column(f"k{i}", c.type) for i, c in enumerate(pk_columns)],
            sa.column("ci", JSONB()),
        )
        return sa.select(*rows.render_derived(name="x").c).cte("chrononaut_x")

    def _written(
        self,
        exceptional: dict[tuple[Any, ...], tuple[InstanceState[Any], dict[str, Any]]],
        changed_at: dt.datetime,
    ) -> None:
        """Consume the notes of the records that got a history row (a small SELECT,
        only when records of the identity map had notes, locks or expected versions)."""
        history = self.meta.tables[0].history
        keys = [history.c[col_key] for _, col_key in self.meta.tables[0].pk]
        pks = list(exceptional)
        where: Any = (
            keys[0].in_([pk[0] for pk in pks]) if len(keys) == 1 else sa.tuple_(*keys).in_(pks)
        )
        statement = (
            sa.select(*keys)
            .where(where, history.c.changed >= changed_at)
            .execution_options(**{_BULK_GUARD: True})
        )
        connection = self.session.connection(bind_arguments={"mapper": self.meta.mapper})
        for row in connection.execute(statement):
            obj_state = exceptional[tuple(row)][0]
            consume_appended(obj_state)
            forget_expected_version(obj_state)


_STALE_UPSERT = "chrononaut-stale-upsert"


class _Upsert(_OneStatement):
    """History for the update branch of a PostgreSQL ORM upsert, in its statement.

    ::

        WITH chrononaut_v AS (VALUES <the proposed rows>),
             chrononaut_o AS (SELECT <key>, version, <every column>
                              FROM t WHERE <conflict target> IN (SELECT ... FROM v)
                              FOR UPDATE OF t),
             chrononaut_h AS (INSERT INTO t_history ... FROM o JOIN v ON <target>
                              WHERE <set_ value> IS DISTINCT FROM <old value> OR ...)
        INSERT INTO t ... ON CONFLICT ... DO UPDATE SET <user's set_>,
            version = CASE WHEN t.<key> NOT IN (SELECT <key> FROM o)
                           THEN CAST('chrononaut-stale-upsert:' || t.<key> AS integer)
                           WHEN <set_ value> IS DISTINCT FROM t.<column> OR ...
                           THEN t.version + 1 ELSE t.version END

    A row that takes the update branch although the statement could not see it
    (inserted by a transaction that committed after the statement began) has no
    prior state to record: the CAST fails, the whole statement with it, and the
    caller gets :class:`~chrononaut.StaleWriteError`.
    """

    def run(self) -> Any:
        state = self.state
        meta = self.meta
        statement: Any = state.statement
        if state.parameters or len(meta.tables) != 1:
            raise ChrononautException(
                f"an upsert of the Versioned model {self.cls.__name__} is captured only "
                "with its rows in .values(...) (not as execute() parameters) and on "
                "single-table models: write these rows in a flush instead"
            )
        post: OnConflictDoUpdate = statement._post_values_clause
        table = meta.version_column.table
        tmap = meta.tables[0]
        history = tmap.history
        pk_columns = _pk_columns(meta)
        pk_names = [column.name for column in pk_columns]
        version = table.c[meta.version_column.key]
        target = self._target(post, table)
        rows = self._rows(statement)
        names = list(rows[0])
        set_ = {
            getattr(key, "name", key): value for key, value in post.update_values_to_set.items()
        }
        if set(set_) & {*pk_names, *target}:
            raise ChrononautException(
                "an upsert's set_ must not change the primary key or the conflict target "
                f"of the Versioned model {self.cls.__name__}"
            )
        volatile = [*set_.values(), post.update_whereclause]
        volatile.extend(value for row in rows for value in row.values())
        if _volatile(volatile):
            raise ChrononautException(
                "an upsert of a Versioned model can't use volatile SQL functions "
                "(random(), clock_timestamp(), ...) in its values or set_: compute the "
                "values in Python first"
            )
        proposed = sa.values(
            *[sa.column(n, table.c[n].type) for n in names], name="chrononaut_pv"
        ).data([tuple(row[n] for n in names) for row in rows])
        proposed_rows = sa.select(proposed).cte("chrononaut_v")
        changed_at = _now()
        builder = ChangeInfoBuilder(self.session, self.settings)
        shared = builder.build(self.cls, None)
        exceptional = self._exceptional(builder, shared, False)

        key_labels = [column.label(f"k{i}") for i, column in enumerate(pk_columns)]
        everything = [column.label(f"c_{column.name}") for column in table.c]
        targets_of_table = [table.c[n] for n in target]
        in_proposed = sa.tuple_(*targets_of_table).in_(
            sa.select(*[proposed_rows.c[n] for n in target])
        )
        locked = sa.select(*key_labels, version.label("v"), *everything).where(in_proposed)
        if post.inferred_target_whereclause is not None:
            locked = locked.where(post.inferred_target_whereclause)
        old = locked.with_for_update(of=table).cte("chrononaut_o")

        excluded = statement.excluded

        def as_old(expr: Any) -> Any:
            """``expr`` of the DO UPDATE evaluated on o (old row) and v (proposed row)."""

            def swap(element: Any) -> Any:
                if isinstance(element, sa.Column) and element.table is table:
                    return old.c[f"c_{element.name}"]
                parent = getattr(element, "table", None)
                if (
                    isinstance(element, ColumnClause)
                    and parent is not None
                    and (parent is excluded or getattr(parent, "name", None) == "excluded")
                ):
                    if element.name not in proposed_rows.c:
                        raise ChrononautException(
                            f"set_ uses excluded.{element.name}, which the upsert's values "
                            "do not give: name it in .values(...)"
                        )
                    return proposed_rows.c[element.name]
                return None

            opts: dict[str, Any] = {}
            return visitors.replacement_traverse(cast(Any, expr), opts, swap)  # type: ignore[call-overload]

        in_set: list[Any] = []
        in_old: list[Any] = []
        hidden_names: list[Any] = []
        for key in sorted(meta.watched):
            column = meta.columns[key]
            if column.name not in set_:
                continue
            value = set_[column.name]
            in_set.append(_differs(value, column))
            differs_old = _differs(as_old(value), old.c[f"c_{column.name}"])
            in_old.append(differs_old)
            if key in meta.hidden:
                hidden_names.append(sa.case((differs_old, sa.literal(key)), else_=sa.null()))

        changed = sa.bindparam("chrononaut_changed", changed_at, type_=sa.DateTime(timezone=True))
        info: Any = sa.bindparam("chrononaut_ci", shared, type_=JSONB())
        source: Any = old.join(
            proposed_rows,
            sa.and_(*[old.c[f"c_{n}"] == proposed_rows.c[n] for n in target]),
        )
        extra = None
        if exceptional:
            extra = self._exceptional_rows(exceptional)
            source = source.outerjoin(
                extra,
                sa.and_(*[old.c[f"k{i}"] == extra.c[f"k{i}"] for i in range(len(pk_columns))]),
            )
            info = sa.func.coalesce(extra.c.ci, info, type_=JSONB())
        if hidden_names:
            names_changed = sa.func.array_remove(
                pg_array[Any](hidden_names, type_=sa.Text()), sa.null(), type_=ARRAY(sa.Text())
            )
            info = sa.case(
                (
                    sa.func.cardinality(names_changed) > 0,
                    info.op("||")(
                        sa.func.jsonb_build_object(
                            sa.literal("hidden_cols_changed"), sa.func.to_jsonb(names_changed)
                        )
                    ),
                ),
                else_=info,
            )
        copied = [old.c[f"c_{table.c[col_key].name}"] for _, col_key in tmap.columns]
        targets = [history.c[col_key] for _, col_key in tmap.columns]
        old_valid_from = old.c[f"c_{table.c[VALID_FROM_KEY].name}"]
        targets.append(history.c[VALID_FROM_KEY])
        copied.append(old_valid_from)
        ended = sa.func.greatest(changed, old_valid_from, type_=sa.DateTime(timezone=True))
        history_select = (
            sa.select(*copied, old.c.v, ended, sa.type_coerce(info, JSONB()))
            .select_from(source)
            .where(sa.or_(sa.false(), *in_old))
        )
        if post.update_whereclause is not None:
            history_select = history_select.where(as_old(post.update_whereclause))
        history_rows = (
            _NestedInsert(history)
            .from_select(
                [*targets, history.c.version, history.c.changed, history.c.change_info],
                history_select,
            )
            .cte("chrononaut_h")
        )

        key_text = sa.func.concat_ws(",", *pk_columns)
        unseen = sa.tuple_(*pk_columns).not_in(
            sa.select(*[old.c[f"k{i}"] for i in range(len(pk_columns))])
        )
        new_set: dict[Any, Any] = dict(set_)
        new_set[version.name] = sa.case(
            (unseen, sa.cast(sa.literal(f"{_STALE_UPSERT}:") + key_text, sa.Integer())),
            (sa.or_(sa.false(), *in_set), version + sa.literal_column("1")),
            else_=version,
        )
        live_valid_from = table.c[VALID_FROM_KEY]
        new_set[live_valid_from.name] = sa.case(
            (
                sa.or_(sa.false(), *in_set),
                sa.func.greatest(changed, live_valid_from, type_=sa.DateTime(timezone=True)),
            ),
            else_=live_valid_from,
        )
        # ``ext`` replaces the statement's ON CONFLICT clause with this one.
        main = statement.ext(
            OnConflictDoUpdate(
                constraint=post.constraint_target,
                index_elements=post.inferred_target_elements,
                index_where=post.inferred_target_whereclause,
                set_=new_set,
                where=post.update_whereclause,
            )
        )
        main = main.add_cte(proposed_rows).add_cte(old)
        if extra is not None:
            main = main.add_cte(extra)
        main = main.add_cte(history_rows)
        try:
            result = state.invoke_statement(statement=main)
        except sa.exc.DBAPIError as exc:
            if _STALE_UPSERT in str(exc.orig):
                raise StaleWriteError(
                    f"an upsert of {self.cls.__name__} took the update branch for a row "
                    "another transaction inserted after the statement began: nothing was "
                    "written; roll back and run the upsert again"
                ) from None
            raise
        if exceptional:
            self._written(exceptional, changed_at)
        return result

    def _target(self, post: OnConflictDoUpdate, table: sa.Table) -> list[str]:
        """Names of the conflict target's columns."""
        if post.constraint_target is not None:
            name = post.constraint_target
            for constraint in table.constraints:
                if not isinstance(constraint, (sa.UniqueConstraint, sa.PrimaryKeyConstraint)):
                    continue
                columns = [column.name for column in constraint.columns]
                # Unnamed in the metadata: PostgreSQL's default names.
                default = (
                    f"{table.name}_pkey"
                    if isinstance(constraint, sa.PrimaryKeyConstraint)
                    else f"{table.name}_{'_'.join(columns)}_key"
                )
                if name in (constraint.name, default if not constraint.name else None):
                    return columns
            for column in table.c:
                if column.unique and name == f"{table.name}_{column.name}_key":
                    return [column.name]
            for index in table.indexes:
                if (
                    index.name == name
                    and index.unique
                    and all(isinstance(e, sa.Column) for e in index.expressions)
                ):
                    return [e.name for e in index.expressions]  # type: ignore[union-attr]
        elif post.inferred_target_elements and all(
            isinstance(e, sa.Column) or (isinstance(e, str) and e in table.c)
            for e in post.inferred_target_elements
        ):
            # index_elements may name columns by string, as SQLAlchemy's docs do.
            return [e if isinstance(e, str) else e.name for e in post.inferred_target_elements]
        raise ChrononautException(
            f"an upsert of the Versioned model {self.cls.__name__} needs a conflict target "
            "of plain columns (index_elements=[...] or a named unique constraint)"
        )

    def _rows(self, statement: Any) -> list[dict[str, Any]]:
        """The proposed rows, by column name, all with the same columns."""
        rows: list[dict[str, Any]] = []
        if statement._multi_values:
            for group in statement._multi_values:
                for row in group:
                    if not isinstance(row, dict):
                        rows = []
                        break
                    rows.append({str(getattr(k, "name", k)): v for k, v in row.items()})
        elif statement._values:
            # The statement's own bind parameters belong to its VALUES clause: the
            # proposed rows get fresh ones for the same values.
            rows.append(
                {
                    str(getattr(k, "name", k)): (
                        v.effective_value if isinstance(v, BindParameter) else v
                    )
                    for k, v in statement._values.items()
                }
            )
        if not rows or any(row.keys() != rows[0].keys() for row in rows):
            raise ChrononautException(
                f"an upsert of the Versioned model {self.cls.__name__} is captured when "
                "every row in .values(...) names the same columns (as a dict)"
            )
        return rows
