"""History for ORM bulk statements."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import array as pg_array
from sqlalchemy.dialects.postgresql.dml import OnConflictDoUpdate
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    Label,
    TextClause,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from chrononaut._context import versioning_suppressed
from chrononaut.errors import ChrononautException, StaleWriteError
from chrononaut.versioning._change_info import ChangeInfoBuilder, Settings, consume_appended
from chrononaut.versioning._concurrency import _expected, forget_expected_version, stale_write_error
from chrononaut.versioning._meta import (
    VALID_FROM_KEY,
    VERSION_KEY,
    VersionMeta,
    copied_keys,
    history_column_keys,
    joined_descendants,
    meta_of,
    source_table,
)
from chrononaut.versioning._writes import (
    _Batch,
    _now,
    _require_context,
    ends_at,
    next_valid_from,
    next_version,
    reinserted,
)

__all__ = ["continue_rows", "continued_inserts", "run_bulk"]

_BULK_GUARD = "chrononaut_bulk_internal"
# Prefix of a key in _BulkStatement's selects that names a column of the model's
# table rather than an attribute of the class.
_COLUMN = "\0column:"
_ABSENT = object()


def run_bulk(settings: Settings, orm_execute_state: ORMExecuteState) -> Any:
    """The ``do_orm_execute`` listener's work: history for a bulk UPDATE/DELETE."""
    state = orm_execute_state
    statement = state.statement
    upsert = state.is_insert and isinstance(
        getattr(statement, "_post_values_clause", None), OnConflictDoUpdate
    )
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    if state.execution_options.get(_BULK_GUARD):
        return None
    mapper = state.bind_arguments.get("mapper")
    meta = meta_of(mapper.class_) if mapper is not None else None
    if state.is_insert and not upsert:
        return _insert_continuing(state, meta) if meta is not None else None
    if versioning_suppressed():
        return _suppressed_by_key(state, meta) if meta is not None else None
    if meta is None:
        return None
    _refuse_version_assignment(statement, meta, state.parameters)
    _refuse_unrecordable(state, meta)
    if upsert:
        _refuse_inserted_managed(statement, meta, state.parameters)
        _require_context(settings)
        return _Upsert(settings, state, meta).run()
    # SPEC §3: refused before anything is sent, whether or not a row would change.
    _require_context(settings)
    if _one_statement_possible(state, meta):
        return _OneStatement(settings, state, meta).run()
    return _BulkStatement(settings, state, meta).run()


def _cast(value: Any, type_: Any) -> Any:
    """``CAST(value AS type_)``, without a string type's collation (SQLAlchemy 2.0
    renders ``CAST(x AS VARCHAR COLLATE "C")``, which PostgreSQL refuses)."""
    if isinstance(type_, sa.String) and getattr(type_, "collation", None):
        type_ = type_.copy()
        type_.collation = None
    return sa.cast(value, type_)


def _assigned(statement: Any) -> list[Any]:
    """The keys (strings, columns or attributes) a statement's SET or VALUES
    assigns: ``values()`` and ``ordered_values()`` (which SQLAlchemy 2.0 keeps
    apart from ``_values``)."""
    keys: list[Any] = list(getattr(statement, "_values", None) or ())
    keys.extend(key for key, _ in getattr(statement, "_ordered_values", None) or ())
    return keys


def _set_names(statement: Any) -> set[Any]:
    """Names (column names or keys) a statement's SET assigns."""
    return {getattr(key, "name", None) or getattr(key, "key", key) for key in _assigned(statement)}


def _refuse_unrecordable(state: ORMExecuteState, meta: VersionMeta) -> None:
    """Bulk statements whose history could not be right, refused before anything is
    sent: a DELETE of a joined-table subclass (SQLAlchemy deletes only the
    subclass table's rows, the base rows stay), and an UPDATE that changes the
    primary key (history is kept by key)."""
    mapper = state.bind_arguments["mapper"]
    name = mapper.class_.__name__
    if state.is_delete and mapper.local_table is not mapper.base_mapper.local_table:
        base = mapper.base_mapper.class_.__name__
        raise ChrononautException(
            f"an ORM bulk DELETE of {name} deletes only its own table's rows and leaves "
            f"their {base} rows: delete from the base class instead, e.g. "
            f"delete({base}).where({base}.id.in_(select({name}.id).where(...)))"
        )
    if not state.is_update:
        return
    statement: Any = state.statement
    names = _set_names(statement)
    params = state.parameters
    if isinstance(params, dict):
        names.update(params)
    pk = {meta.columns[key].name for key in meta.pk_keys} | set(meta.pk_keys)
    if names & pk:
        raise ChrononautException(
            f"an ORM bulk UPDATE of the Versioned model {name} can't change its primary "
            "key (history is kept by key): change the key in a flush, or copy the rows "
            "to new keys and delete the old ones"
        )


def _row_key(row: Any, meta: VersionMeta) -> tuple[Any, ...] | None:
    """The primary key a VALUES row or parameter set names (``None``: no complete
    key, or the row sets ``version`` itself)."""
    names = {key: meta.columns[key].name for key in meta.pk_keys}
    version_name = meta.version_column.name
    if not isinstance(row, dict):
        return None
    by_name = {str(getattr(k, "key", None) or getattr(k, "name", k)): v for k, v in row.items()}
    by_name.update({str(getattr(k, "name", k)): v for k, v in row.items()})
    if VERSION_KEY in by_name or version_name in by_name:
        return None  # refused at flush for records; here it is the caller's
    pk = tuple(by_name.get(key, by_name.get(names[key])) for key in meta.pk_keys)
    # ``values(id=1)`` keeps the value as a bound parameter.
    pk = tuple(v.effective_value if isinstance(v, BindParameter) else v for v in pk)
    if any(v is None or isinstance(v, sa.ClauseElement) for v in pk):
        return None
    return pk


def _insert_continuing(state: ORMExecuteState, meta: VersionMeta) -> Any:
    """An ORM bulk INSERT: rows whose primary key was used before (and deleted)
    continue that key's version sequence, as a flush's inserts do, and begin no
    earlier than the key's last version ended.

    Rows given with their key get ``version`` = the key's next version and
    ``valid_from`` = the later of the clock and the end of its newest history row:
    for parameter sets, from one SELECT of the keys' history; for ``values(...)``
    rows, as subqueries in the statement. Rows without a key (generated by the
    database) are new keys and keep version 0. ``version`` and ``valid_from``
    given by the application are refused (SPEC §2), except under
    ``suppress_versioning()``.
    """
    statement: Any = state.statement
    params = state.parameters
    if not versioning_suppressed():
        _refuse_inserted_managed(statement, meta, params)
    if isinstance(params, list) and params:
        continued = continue_rows(
            state.session.connection(bind_arguments={"mapper": meta.mapper}), meta, params
        )
        return None if continued is None else state.invoke_statement(params=continued)

    continued_statement = _continued_values(statement, meta)
    if continued_statement is None:
        return None
    return state.invoke_statement(statement=continued_statement)


def continue_rows(
    connection: sa.Connection, meta: VersionMeta, rows: list[Any]
) -> list[Any] | None:
    """``rows`` (parameter sets of an INSERT, by attribute key) with ``version`` and
    ``valid_from`` set for the keys inserted again; ``None`` when there are none."""
    keys = [_row_key(p, meta) for p in rows]
    wanted = sorted({k for k in keys if k is not None}, key=repr)
    found = reinserted(connection, meta, wanted)
    if not found:
        return None
    clock = _now()
    return [
        {**p, VERSION_KEY: found[k][0], VALID_FROM_KEY: ends_at(clock, found[k][1])}
        if k is not None and k in found
        else p
        for p, k in zip(rows, keys, strict=True)
    ]


def continued_inserts(
    session: Session, meta: VersionMeta, rows: list[Any], check: bool = True
) -> list[Any] | None:
    """:func:`continue_rows` for the legacy bulk insert methods (``check``: refuse
    rows that carry ``version`` or ``valid_from``, unless versioning is suppressed)."""
    if check and not versioning_suppressed():
        _refuse_inserted_managed(None, meta, rows)
    connection = session.connection(bind_arguments={"mapper": meta.mapper})
    return continue_rows(connection, meta, rows)


def _refuse_inserted_managed(statement: Any, meta: VersionMeta, params: Any) -> None:
    """SPEC §2: an INSERT's rows must not carry ``version`` or ``valid_from``."""
    rows: list[Any] = []
    if isinstance(params, list):
        rows.extend(params)
    elif isinstance(params, dict):
        rows.append(params)
    for group in getattr(statement, "_multi_values", None) or ():
        rows.extend(group)
    values = getattr(statement, "_values", None)
    if values:
        rows.append(dict(values))
    managed = {
        VERSION_KEY: meta.version_column.name,
        VALID_FROM_KEY: meta.version_column.table.c[VALID_FROM_KEY].name,
    }
    for row in rows:
        if not isinstance(row, dict):
            continue
        for key in row:
            name = key if isinstance(key, str) else getattr(key, "key", None)
            column = getattr(key, "name", None)
            for attr, column_name in managed.items():
                if attr in (name, column) or column_name in (name, column):
                    raise ChrononautException(
                        f"{meta.mapper.class_.__name__}.{attr} is set by Chrononaut: remove "
                        "it from the INSERT's rows (wrap imports of prepared rows in "
                        "suppress_versioning())"
                    )


def _continued_values(statement: Any, meta: VersionMeta) -> Any:
    """``statement`` (an INSERT with ``values(...)`` rows) with ``version`` set to
    the key's next version and ``valid_from`` to when it may begin, for each row
    that names its key, or ``None``."""
    version_name = meta.version_column.name
    valid_from_name = meta.version_column.table.c[VALID_FROM_KEY].name
    clock = _now()

    def continued(row: dict[Any, Any], pk: tuple[Any, ...]) -> dict[Any, Any]:
        return {
            **row,
            version_name: next_version(meta, pk),
            valid_from_name: next_valid_from(meta, pk, clock),
        }

    multi = getattr(statement, "_multi_values", None)
    if multi:
        changed = False
        groups = []
        for group in multi:
            rows = []
            for row in group:
                pk = _row_key(row, meta)
                if pk is not None:
                    row = continued(row, pk)
                    changed = True
                rows.append(row)
            groups.append(rows)
        if not changed:
            return None
        result = statement._generate()
        result._multi_values = tuple(groups)
        return result
    values = getattr(statement, "_values", None)
    if values:
        pk = _row_key(dict(values), meta)
        if pk is None:
            return None
        return statement.values(continued({}, pk))
    return None


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
    keys = _assigned(statement)
    if isinstance(params, dict) and isinstance(statement, sa.Update):
        keys.extend(params)  # one parameter dict: SQLAlchemy SETs its keys
    post = getattr(statement, "_post_values_clause", None)
    if post is not None and hasattr(post, "update_values_to_set"):
        keys.extend(key for key, _ in _set_items(post))
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


def _set_items(post: Any) -> list[tuple[Any, Any]]:
    """An upsert's ``set_`` as (key, value) pairs (SQLAlchemy 2.1 keeps a dict,
    2.0 a list of pairs)."""
    values = post.update_values_to_set
    return list(values.items()) if isinstance(values, dict) else list(values)


def _column_name(element: Any) -> str | None:
    """The column name of a conflict-target element: a name, a ``Column``, or (as
    SQLAlchemy 2.0 keeps them uncoerced) an ORM attribute; ``None`` for others."""
    if isinstance(element, str):
        return element
    clause = getattr(element, "__clause_element__", None)
    if clause is not None:
        element = clause()
    return element.name if isinstance(element, sa.Column) else None


def _ordered(statement: Any) -> bool:
    """Whether an UPDATE sets its values with ``ordered_values()`` (SQLAlchemy 2.1
    flags it; 2.0 keeps such values in ``_ordered_values``)."""
    return bool(
        getattr(statement, "_maintain_values_ordering", False)
        or getattr(statement, "_ordered_values", None)
    )


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
        #: select labels (``_COLUMN`` + n) -> the model-table column they read
        self._extra_columns: dict[str, sa.Column[Any]] = {}

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
            else self._extra_columns[k]
            if k.startswith(_COLUMN)
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
                sa.and_(
                    *[c == _cast(proposed.c[f"k{i}"], c.type) for i, c in enumerate(pk_columns)]
                ),
            )
            for m, key in enumerate(hidden):
                column = meta.columns[key]
                # Cast: PostgreSQL types a VALUES column from its literals (text for
                # an enum's or for only NULLs), not from the column it is compared with.
                flags[key] = sa.and_(
                    proposed.c[f"p{m}"],
                    _differs(_cast(proposed.c[f"h{m}"], column.type), column),
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
        # Columns single-table subclasses add to this class's tables: by column,
        # not by this class's attributes.
        extra: dict[str, tuple[sa.Table, str]] = {}
        for tmap in meta.tables:
            source = meta.version_column.table if tmap.base else source_table(meta, tmap)
            own = {col_key for _, col_key in tmap.columns}
            for col_key in copied_keys(tmap, source):
                if col_key not in own:
                    label = f"{_COLUMN}{len(extra)}"
                    extra[label] = (tmap.history, col_key)
                    self._extra_columns[label] = source.c[col_key]
        keys = list(dict.fromkeys([*keys, *extra]))
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
        if state.is_delete:
            # Before the statement: deleting the base rows may cascade to them.
            _write_descendant_history(
                self.session, meta, {pk: values[VERSION_KEY] for pk, values in old.items()}
            )
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
        # Which loaded records SQLAlchemy synchronises ("evaluate" may not match a
        # record the SQL WHERE matched): the ones whose SET attributes it touches.
        before = self._snapshot(list(old)) if restrict else None
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

        def add_history(pk: tuple[Any, ...], values: dict[str, Any], info: Any) -> None:
            """The history rows of the row ``pk`` held ``values`` before the statement."""
            began = values[VALID_FROM_KEY]
            batch.add(
                meta,
                {**dict(zip(meta.pk_keys, pk, strict=True)), **values},
                values[VERSION_KEY],
                ends_at(changed_at, began),
                info,
                began,
                {target: values[label] for label, target in extra.items()},
            )

        if state.is_delete:
            _require_context(self.settings)
            for pk, values in old.items():
                obj_state = self._identity_state(identity_map, pk)
                add_history(pk, values, builder.build(self.cls, obj_state, deleted=True))
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
            hidden = [k for k in changed if k in meta.hidden]
            add_history(pk, values, builder.build(self.cls, obj_state, hidden_changed=hidden))
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
            _write_descendant_history(
                self.session, meta, {pk: old[pk][VERSION_KEY] for pk in bumped}
            )
            # The rows' version and valid_from now (the UPDATE above computed the same).
            bumped_to = {
                pk: (old[pk][VERSION_KEY] + 1, ends_at(changed_at, old[pk][VALID_FROM_KEY]))
                for pk in bumped
            }
            # SPEC §2: loaded records learn their new version only where SQLAlchemy
            # synchronises the statement's values into the session.
            synchronised = _sync_mode(state) is not False
            for pk in bumped if synchronised else ():
                obj_state = self._identity_state(identity_map, pk)
                if before is not None and not self._touched(obj_state, before.get(pk)):
                    continue
                if obj_state is not None and obj_state.obj() is not None:
                    set_committed_value(obj_state.obj(), VERSION_KEY, bumped_to[pk][0])
                    set_committed_value(obj_state.obj(), VALID_FROM_KEY, bumped_to[pk][1])
            if getattr(statement, "_returning", None):
                every = len(bumped) == len(old)
                result = self._returned_after_bump(statement, result, bumped_to, every, changed_at)
        return result

    def _returned_after_bump(
        self,
        statement: Any,
        result: Any,
        after: dict[tuple[Any, ...], tuple[int, Any]],
        every: bool,
        changed_at: dt.datetime,
    ) -> Any:
        """The statement's RETURNING rows with ``version`` and ``valid_from`` as the
        rows hold them after the bump (SPEC §2: RETURNING shows the row after the
        statement). A row is found by its returned key or entity; without the key,
        when ``every`` row was bumped, each returned version is the one it had
        plus one (the statement itself leaves both columns alone)."""
        meta = self.meta
        table = meta.version_column.table
        version_column = meta.version_column
        valid_from_column = table.c[VALID_FROM_KEY]
        pk_columns = [meta.columns[key] for key in meta.pk_keys]
        positions: dict[str, list[int]] = {"version": [], "valid_from": [], "entity": []}
        key_at: dict[int, int] = {}
        for i, element in enumerate(statement._returning):
            entity = getattr(element, "_annotations", {}).get("parententity")
            column = element
            while isinstance(column, Label):  # returning(User.version.label("v"))
                column = column.element
            column = column._deannotate() if hasattr(column, "_deannotate") else column
            if column is version_column:
                positions["version"].append(i)
            elif column is valid_from_column:
                positions["valid_from"].append(i)
            elif any(column is c for c in pk_columns):
                key_at[next(n for n, c in enumerate(pk_columns) if c is column)] = i
            elif entity is not None and not isinstance(element, sa.ColumnElement):
                positions["entity"].append(i)
        if not (positions["version"] or positions["valid_from"] or positions["entity"]):
            return result
        frozen = result.freeze()
        scalars = getattr(frozen, "_source_supports_scalars", False)
        rows = [[row] if scalars else list(row) for row in frozen.data]
        complete = len(key_at) == len(pk_columns)
        for values in rows:
            for i in positions["entity"]:
                obj = values[i]
                state = instance_state(obj) if obj is not None else None
                pk = tuple(state.key[1]) if state is not None and state.key else None
                if pk in after:
                    set_committed_value(obj, VERSION_KEY, after[pk][0])
                    set_committed_value(obj, VALID_FROM_KEY, after[pk][1])
            if complete:
                pk = tuple(values[key_at[n]] for n in range(len(pk_columns)))
                if pk in after:
                    for i in positions["version"]:
                        values[i] = after[pk][0]
                    for i in positions["valid_from"]:
                        values[i] = after[pk][1]
            elif every:
                for i in positions["version"]:
                    values[i] = values[i] + 1
                for i in positions["valid_from"]:
                    values[i] = ends_at(changed_at, values[i])
        return frozen.with_new_rows([tuple(values) for values in rows])()

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

    def _set_keys(self) -> list[str]:
        """Attribute keys of the columns the statement's SET names."""
        names = _set_names(self.state.statement)
        return [
            key for key, column in self.meta.columns.items() if column.name in names or key in names
        ]

    def _snapshot(self, pks: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The SET attributes' values of the loaded records of ``pks``."""
        keys = self._set_keys()
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        for pk in pks:
            obj_state = self._identity_state(self.session.identity_map, pk)
            if obj_state is not None:
                found[pk] = {k: obj_state.dict.get(k, _ABSENT) for k in keys}
        return found

    @staticmethod
    def _touched(obj_state: InstanceState[Any] | None, before: dict[str, Any] | None) -> bool:
        """Whether SQLAlchemy's synchronisation set or expired a SET attribute."""
        if obj_state is None or before is None:
            return False
        dict_ = obj_state.dict
        return not before or any(
            dict_.get(k, _ABSENT) is not v and dict_.get(k, _ABSENT) != v for k, v in before.items()
        )

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


def _write_descendant_history(
    session: Session, meta: VersionMeta, versions: dict[tuple[Any, ...], int]
) -> None:
    """Copy the subclass parts of the rows ``versions`` names (primary key in
    ``meta.pk_keys`` order -> the version their history rows hold) into the
    subclasses' history tables, in the database: rows of other classes have no
    row in a subclass table and are left out by the join."""
    if not versions:
        return
    for sub, tmap in joined_descendants(meta):
        source = source_table(sub, tmap)
        key_columns = [source.c[col] for _, col in tmap.pk]
        wanted = sa.values(
            *[sa.column(f"k{i}", column.type) for i, column in enumerate(key_columns)],
            sa.column("v", sa.Integer()),
            name="chrononaut_kv",
        ).data([(*pk, version) for pk, version in versions.items()])
        copied = copied_keys(tmap, source)
        rows = sa.select(*[source.c[col] for col in copied], wanted.c.v).select_from(
            source.join(
                wanted,
                sa.and_(*[column == wanted.c[f"k{i}"] for i, column in enumerate(key_columns)]),
            )
        )
        insert = tmap.history.insert().from_select(
            [*[tmap.history.c[col] for col in copied], tmap.history.c[VERSION_KEY]], rows
        )
        session.connection(bind_arguments={"mapper": sub.mapper}).execute(insert)


def _one_statement_possible(state: ORMExecuteState, meta: VersionMeta) -> bool:
    """Whether the statement can carry its history in the same statement.

    Not for: ORM bulk UPDATE by primary key (SQLAlchemy runs its own
    executemany), SET values given as execution parameters, ordered SET, keys
    changed by the SET, joined inheritance (several tables, also a base class
    whose joined-table subclasses have rows among the affected ones), ``onupdate``
    columns (SQLAlchemy adds them to the SET), volatile expressions.
    """
    statement = state.statement
    if state.parameters:
        return False
    if not isinstance(statement, (sa.Update, sa.Delete)) or len(meta.tables) != 1:
        return False
    if joined_descendants(meta):
        return False  # subclass rows need history rows in their own history tables
    if meta._has_onupdate or any(isinstance(c.type, sa.ARRAY) for c in _pk_columns(meta)):
        return False
    if any(getattr(option, "_is_criteria_option", False) for option in statement._with_options):
        return False  # with_loader_criteria(): SQLAlchemy adds WHERE terms we don't see
    clauses: list[Any] = [statement.whereclause]
    if isinstance(statement, sa.Update):
        if _ordered(statement) or not statement._values:
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


def _returning_form_possible(statement: Any) -> bool:
    """Whether a DELETE can be sent as ``WITH chrononaut_d AS (DELETE ... RETURNING
    ...) INSERT INTO <history> ...``: not when it has CTEs of its own (a WITH
    holding a data-modifying statement must be the outermost one). Whether it
    returns rows is only known when it compiles: see :class:`_DeleteIntoHistory`."""
    if statement._independent_ctes:
        return False
    where = statement.whereclause
    if where is None:
        return True
    return not any(isinstance(element, sa.CTE) for element in visitors.iterate(where))


class _DeleteIntoHistory(sa.Delete):
    """A versioned ORM bulk DELETE that writes its history rows from its RETURNING.

    Rendered as::

        WITH chrononaut_d AS (DELETE FROM t WHERE <user's WHERE>
                              RETURNING <key>, version, <tracked>, valid_from)
        INSERT INTO t_history (...)
        SELECT d.<key>, d.<tracked>, d.valid_from, d.version, <changed>, <change_info>
        FROM chrononaut_d d [LEFT JOIN (<exceptional rows>) chrononaut_x ON key]

    A DELETE's RETURNING gives each row as it was when deleted (also after waiting
    on a concurrent writer at READ COMMITTED), so no lock-first SELECT and no join
    back are needed. The statement's row count is the INSERT's: one history row
    per deleted row, so it equals the rows deleted (a pinned ``(key, version)``
    DELETE relies on it). SQLAlchemy still compiles and executes it as the ORM
    DELETE it is (the WHERE, a single-table subclass's discriminator and
    ``synchronize_session`` "evaluate"/False work as for the user's statement).

    A DELETE that must return rows (the user's ``returning(...)``, or the keys
    ``synchronize_session="fetch"`` reads back, also when "auto" falls back to it)
    is compiled as ``_chrononaut_fallback`` instead, the lock-first statement of
    :class:`_OneStatement`: its rows are the DELETE's own.
    """

    inherit_cache = True
    _chrononaut_returned: tuple[Any, ...]
    _chrononaut_history: Any
    _chrononaut_fallback: Any
    # Part of the cache key: statements that differ only in these (exceptional
    # rows, the fallback's CTEs) must not share a compiled form.
    _traverse_internals = [
        *sa.Delete._traverse_internals,
        ("_chrononaut_returned", InternalTraversal.dp_clauseelement_tuple),
        ("_chrononaut_history", InternalTraversal.dp_clauseelement),
        ("_chrononaut_fallback", InternalTraversal.dp_clauseelement),
    ]


@compiles(_DeleteIntoHistory)
def _compile_delete_into_history(element: _DeleteIntoHistory, compiler: Any, **kw: Any) -> str:
    # The ORM adds RETURNING of the keys for "fetch" when it compiles the DELETE
    # (the resolved strategy is in the statement's annotations by then).
    returns_rows = bool(element._returning) or (
        compiler._annotations.get("synchronize_session") == "fetch"
    )
    if returns_rows or compiler.stack or kw.get("visiting_cte") is not None:
        return str(compiler.process(element._chrononaut_fallback, **kw))
    text = str(compiler.visit_delete(element, **kw))
    if compiler.implicit_returning or compiler.returning:
        raise ChrononautException("internal error: a history-writing DELETE returned rows")
    quote = compiler.preparer.quote
    returning = ", ".join(
        f"{quote(label.element.name)} AS {quote(label.name)}"
        for label in element._chrononaut_returned
    )
    # Rendered as a statement nested in this one, like an INSERT in a WITH: it
    # must not become the compiled statement's own (its flags, its RETURNING).
    compiler.stack.append({"correlate_froms": set(), "asfrom_froms": set(), "selectable": element})
    try:
        history = str(compiler.process(element._chrononaut_history, **kw))
    finally:
        compiler.stack.pop(-1)
    return f"WITH chrononaut_d AS ({text} RETURNING {returning}) {history}"


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

    (DELETE: ``DELETE FROM t USING chrononaut_o ...``, every row gets a history row;
    a DELETE that returns no rows is sent as the cheaper :class:`_DeleteIntoHistory`
    instead.) Hidden columns are compared inside the database; only their names come
    out, into change_info. change_info shared by all rows is sent once;
    ``chrononaut_x`` (an ``unnest`` of two small arrays) carries the rows whose
    change_info differs: records of the identity map locked in this session or with
    ``append_change_info`` notes.
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
        copied_keys = history_column_keys(meta)
        tracked = [table.c[col_key] for col_key in copied_keys]
        columns: list[Any] = [column.label(f"k{i}") for i, column in enumerate(pk_columns)]
        columns.append(version.label("v"))
        non_key = [column for column in tracked if column.name not in pk_names]
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
        info_shared = sa.bindparam("chrononaut_ci", shared, type_=JSONB())
        info: Any = info_shared
        source: Any = old
        extra = extra_rows = None
        if exceptional:
            extra_rows = self._exceptional_rows(exceptional)
            extra = extra_rows.cte("chrononaut_x")
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
        # The history columns in order, by their label in chrononaut_o.
        copied_from: list[str] = []
        targets: list[Any] = []
        j = 0
        for column, col_key in zip(tracked, copied_keys, strict=True):
            targets.append(history.c[col_key])
            if column.name in pk_names:
                copied_from.append(f"k{[c.name for c in pk_columns].index(column.name)}")
            else:
                copied_from.append(f"t{j}")
                j += 1
        targets.append(history.c[VALID_FROM_KEY])
        copied_from.append("vf")
        copied = [old.c[label] for label in copied_from]
        # The old version ends where the new one begins; never before it began.
        ended = sa.func.greatest(changed, old.c.vf, type_=sa.DateTime(timezone=True))
        rows = sa.select(*copied, old.c.v, ended, sa.type_coerce(info, JSONB())).select_from(source)
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
        if delete and _returning_form_possible(statement):
            main = self._returning_form(
                statement, main, copied_from, targets, changed, info_shared, extra_rows
            )

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

    def _returning_form(
        self,
        statement: Any,
        fallback: Any,
        copied_from: list[str],
        targets: list[Any],
        changed: Any,
        info: Any,
        extra_rows: Any,
    ) -> Any:
        """The user's DELETE as a :class:`_DeleteIntoHistory`: the deleted rows, as
        its ``RETURNING`` gives them, copied into the history table (``fallback``:
        the lock-first statement, sent instead when the DELETE must return rows)."""
        meta = self.meta
        table = meta.version_column.table
        pk_columns = _pk_columns(meta)
        pk_names = {column.name for column in pk_columns}
        history = meta.tables[0].history
        # What chrononaut_o selects, under the same labels (see run()).
        returned: list[Any] = [column.label(f"k{i}") for i, column in enumerate(pk_columns)]
        returned.append(table.c[meta.version_column.key].label("v"))
        non_key = [
            table.c[col_key]
            for col_key in history_column_keys(meta)
            if table.c[col_key].name not in pk_names
        ]
        returned.extend(column.label(f"t{j}") for j, column in enumerate(non_key))
        returned.append(table.c[VALID_FROM_KEY].label("vf"))
        # A name only (a TableClause: no schema, so schema_translate_map leaves it).
        deleted = sa.table(
            "chrononaut_d", *[sa.column(label.name, label.element.type) for label in returned]
        )
        source: Any = deleted
        if extra_rows is not None:
            # A derived table, not a CTE: this INSERT is rendered after the
            # DELETE's own WITH would be.
            extra = extra_rows.subquery("chrononaut_x")
            source = deleted.outerjoin(
                extra,
                sa.and_(*[deleted.c[f"k{i}"] == extra.c[f"k{i}"] for i in range(len(pk_columns))]),
            )
            info = sa.func.coalesce(extra.c.ci, info, type_=JSONB())
        ended = sa.func.greatest(changed, deleted.c.vf, type_=sa.DateTime(timezone=True))
        rows = sa.select(
            *[deleted.c[label] for label in copied_from],
            deleted.c.v,
            ended,
            sa.type_coerce(info, JSONB()),
        ).select_from(source)
        history_rows = _NestedInsert(history).from_select(
            [*targets, history.c.version, history.c.changed, history.c.change_info], rows
        )
        main = _DeleteIntoHistory.__new__(_DeleteIntoHistory)
        main.__dict__ = statement._generate().__dict__
        main._chrononaut_returned = tuple(returned)
        main._chrononaut_history = history_rows
        main._chrononaut_fallback = fallback
        return main

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
        return sa.select(*rows.render_derived(name="x").c)

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
        # A base class with joined-table subclasses: the update branch would change
        # subclass rows whose subclass history rows this statement cannot write.
        if state.parameters or len(meta.tables) != 1 or joined_descendants(meta):
            raise ChrononautException(
                f"an upsert of the Versioned model {self.cls.__name__} is captured only "
                "with its rows in .values(...) (not as execute() parameters) and on "
                "single-table models without joined-table subclasses: write these rows "
                "in a flush instead"
            )
        post: OnConflictDoUpdate = statement._post_values_clause
        table = meta.version_column.table
        tmap = meta.tables[0]
        history = tmap.history
        pk_columns = _pk_columns(meta)
        pk_names = [column.name for column in pk_columns]
        version = table.c[meta.version_column.key]
        target = self._target(post, table)
        rows = self._rows(statement, table)
        names = list(rows[0])
        named = {column.name: column for column in table.c}
        set_ = {getattr(key, "name", key): value for key, value in _set_items(post)}
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
            *[sa.column(n, named[n].type) for n in names], name="chrononaut_pv"
        ).data([tuple(row[n] for n in names) for row in rows])
        # Each proposed value as the column's type, as the INSERT (and so excluded.*)
        # has it: PostgreSQL types a VALUES column from its literals (text for an
        # enum's or for only NULLs, an unrounded numeric for Numeric(10, 2)).
        proposed_rows = sa.select(
            *[_cast(proposed.c[n], named[n].type).label(n) for n in names]
        ).cte("chrononaut_v")
        changed_at = _now()
        builder = ChangeInfoBuilder(self.session, self.settings)
        shared = builder.build(self.cls, None)
        exceptional = self._exceptional(builder, shared, False)

        key_labels = [column.label(f"k{i}") for i, column in enumerate(pk_columns)]
        everything = [column.label(f"c_{column.name}") for column in table.c]
        targets_of_table = [named[n] for n in target]
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
            if isinstance(value, BindParameter) or not isinstance(value, sa.ClauseElement):
                # set_={"name": "x"}: a value, compared as the column stores it
                # (rounded for Numeric(10, 2), as excluded.* values are).
                given = value.effective_value if isinstance(value, BindParameter) else value
                value = _cast(sa.literal(given, column.type), column.type)
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
            extra = self._exceptional_rows(exceptional).cte("chrononaut_x")
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
        copied_keys = history_column_keys(meta)
        copied = [old.c[f"c_{table.c[col_key].name}"] for col_key in copied_keys]
        targets = [history.c[col_key] for col_key in copied_keys]
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
        # By Column: a string in set_ is taken for a column *key*.
        new_set: dict[Any, Any] = {named[name]: value for name, value in set_.items()}
        new_set[version] = sa.case(
            (unseen, sa.cast(sa.literal(f"{_STALE_UPSERT}:") + key_text, sa.Integer())),
            (sa.or_(sa.false(), *in_set), version + sa.literal_column("1")),
            else_=version,
        )
        live_valid_from = table.c[VALID_FROM_KEY]
        new_set[live_valid_from] = sa.case(
            (
                sa.or_(sa.false(), *in_set),
                sa.func.greatest(changed, live_valid_from, type_=sa.DateTime(timezone=True)),
            ),
            else_=live_valid_from,
        )
        # A copy of the statement with this ON CONFLICT clause instead of the user's
        # (SQLAlchemy 2.1's ``ext()`` would do; 2.0 has no public way).
        main = statement._generate()
        main._post_values_clause = OnConflictDoUpdate(
            constraint=post.constraint_target,
            index_elements=post.inferred_target_elements,
            index_where=post.inferred_target_whereclause,
            set_=new_set,
            where=post.update_whereclause,
        )
        # Rows taking the insert branch for a key deleted earlier continue its
        # version sequence (the update branch sets ``version`` above).
        continued = _continued_values(main, meta)
        if continued is not None:
            main = continued
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
        elif post.inferred_target_elements:
            names = [_column_name(e) for e in post.inferred_target_elements]
            if all(name is not None for name in names):
                return [name for name in names if name is not None]
        raise ChrononautException(
            f"an upsert of the Versioned model {self.cls.__name__} needs a conflict target "
            "of plain columns (index_elements=[...] or a named unique constraint)"
        )

    def _rows(self, statement: Any, table: sa.Table) -> list[dict[str, Any]]:
        """The proposed rows, by column name, all with the same columns."""
        rows: list[dict[str, Any]] = []

        def name_of(key: Any) -> str:
            # A Column (or attribute) by its name; a string is a column key, which
            # differs from the name for Column("db name", key="kk").
            if isinstance(key, str):
                return table.c[key].name if key in table.c else key
            return str(getattr(key, "name", key))

        if statement._multi_values:
            for group in statement._multi_values:
                for row in group:
                    if not isinstance(row, dict):
                        rows = []
                        break
                    rows.append({name_of(k): v for k, v in row.items()})
        elif statement._values:
            # The statement's own bind parameters belong to its VALUES clause: the
            # proposed rows get fresh ones for the same values.
            rows.append(
                {
                    name_of(k): (v.effective_value if isinstance(v, BindParameter) else v)
                    for k, v in statement._values.items()
                }
            )
        if not rows or any(row.keys() != rows[0].keys() for row in rows):
            raise ChrononautException(
                f"an upsert of the Versioned model {self.cls.__name__} is captured when "
                "every row in .values(...) names the same columns (as a dict)"
            )
        return rows
