"""Building history tables: pure functions, table in → table out.

Nothing here touches a database or a mapper, so the shape of a history table can
be tested (and reasoned about by Alembic autogenerate) on its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, TSTZRANGE
from sqlalchemy.sql.base import SchemaEventTarget

from chrononaut.errors import ChrononautException

__all__ = [
    "GENERATED_COLUMNS",
    "INFO_KEY",
    "MANAGED_KEYS",
    "RANGE_INDEX_KEY",
    "VALID_FROM_KEY",
    "VERSION_KEY",
    "add_history_columns",
    "build_history_table",
    "copy_column",
    "history_range",
    "history_table_name",
]

#: ``Column.info`` key under which Chrononaut marks the columns it generates.
INFO_KEY = "chrononaut"

#: The version column's name, on the model's table and in its history table.
VERSION_KEY = "version"

#: When the row's current version began (model table) / a history row's version began.
VALID_FROM_KEY = "valid_from"

#: Attribute keys of the columns Chrononaut sets on versioned rows itself; an
#: application's own assignment to one of them is refused.
MANAGED_KEYS: tuple[str, ...] = (VERSION_KEY, VALID_FROM_KEY)

#: ``Table.info`` key set on a base history table built with its GiST range index.
RANGE_INDEX_KEY = "chrononaut_range_index"

#: Names of the columns a base history table adds to the copied ones.
GENERATED_COLUMNS = (VERSION_KEY, VALID_FROM_KEY, "changed", "change_info")


def history_table_name(table_name: str, override: str | None = None) -> str:
    """The name of the history table for ``table_name``.

    :param table_name: the versioned table's name.
    :param override: ``__chrononaut_tablename__`` when the model sets one.
    """
    if override is not None:
        if not isinstance(override, str) or not override:
            raise ChrononautException(
                f"__chrononaut_tablename__ must be a non-empty string, not {override!r}"
            )
        name = override
    else:
        name = f"{table_name}_history"
    if len(name.encode()) > 63:
        # PostgreSQL would cut the name at 63 bytes (create_all fails on it).
        raise ChrononautException(
            f"the history table name {name!r} is longer than PostgreSQL's 63 bytes: "
            f"set __chrononaut_tablename__ on the model to a shorter name"
        )
    return name


def copy_column(column: sa.Column[object]) -> sa.Column[object]:
    """A history copy of ``column``: same name, key and type, nothing else.

    History rows are snapshots, so the copy has no unique constraint, index,
    default, server default, foreign key (the referenced row may be gone by the
    time history is read), identity or sequence. Non-key columns are nullable, so
    history written before a column became NOT NULL stays valid.
    """
    type_ = _own_type(column.type)
    copy = sa.Column(
        column.name,
        type_,
        key=column.key,
        primary_key=column.primary_key,
        nullable=not column.primary_key,
        autoincrement=False,
        comment=column.comment,
        info={INFO_KEY: "copy"},
    )
    if type_._isnull and column.foreign_keys:
        # A foreign key without a type of its own takes the referenced column's
        # once that table is defined, possibly after this class: so will the copy.
        _types_from[copy] = column
    return copy


def _own_type(type_: Any) -> Any:
    # Schema-bound types (Enum, Boolean with constraints) attach themselves to
    # the table they are used in; each table needs its own copy.
    return cast(Any, type_).copy() if isinstance(type_, SchemaEventTarget) else type_


# History copies of foreign-key columns still without a type -> their source column.
_types_from: weakref.WeakKeyDictionary[sa.Column[Any], sa.Column[Any]] = weakref.WeakKeyDictionary()


def resolve_types(history: sa.Table) -> None:
    """Give copies of untyped foreign-key columns the type their source column took
    from the referenced column (when the referenced table was defined later)."""
    for column in history.c:
        source = _types_from.get(column)
        if source is not None and not source.type._isnull:
            column.type = _own_type(source.type)
            del _types_from[column]


def _resolve_before_create(target: sa.Table, connection: Any, **kw: Any) -> None:
    resolve_types(target)


def _resolve_on_create(history: sa.Table) -> None:
    """Have ``create_all`` resolve ``history``'s untyped copies first, if it has any."""
    if any(column in _types_from for column in history.c) and not sa.event.contains(
        history, "before_create", _resolve_before_create
    ):
        sa.event.listen(history, "before_create", _resolve_before_create)


def _generated_columns(base: bool) -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [
        sa.Column(
            "version", sa.Integer, primary_key=True, autoincrement=False, info={INFO_KEY: "version"}
        )
    ]
    if base:
        columns.append(
            sa.Column(
                VALID_FROM_KEY,
                sa.DateTime(timezone=True),
                nullable=True,  # NULL: began where the key's previous history row ended
                info={INFO_KEY: VALID_FROM_KEY},
            )
        )
        columns.append(
            sa.Column(
                "changed",
                sa.DateTime(timezone=True),
                nullable=False,
                info={INFO_KEY: "changed"},
            )
        )
        columns.append(
            sa.Column("change_info", JSONB, nullable=True, info={INFO_KEY: "change_info"})
        )
    return columns


def build_history_table(
    table: sa.Table,
    *,
    exclude: Collection[str] = (),
    name: str | None = None,
    metadata: sa.MetaData | None = None,
    base: bool = True,
    range_index: bool = False,
) -> sa.Table:
    """Build the history table of ``table``.

    :param table: the versioned table.
    :param exclude: keys of columns not to copy (hidden, untracked and the
        table's own ``version`` column).
    :param name: the history table's name; default ``<table>_history``.
    :param metadata: where to put it; default the table's own MetaData, so that
        ``create_all`` and Alembic autogenerate see it.
    :param base: whether this is the root table of a hierarchy. Only the root's
        history table carries ``changed`` and ``change_info``; a joined-inheritance
        subclass's history table joins to it on primary key and version.
    :param range_index: also build a GiST index over ``[valid_from, changed)``
        (``ix_<history>_range``) for whole-table :func:`~chrononaut.as_of` queries
        far in the past; only for a base table.
    """
    if range_index and not base:
        raise ChrononautException("range_index applies to the base history table only")
    for generated in GENERATED_COLUMNS:
        if generated in table.c and generated not in exclude:
            raise ChrononautException(
                f"table {table.name!r} has a column named {generated!r}, which its history "
                f"table needs for itself; rename the column or list it in "
                f"__chrononaut_untracked__"
            )
    columns = [copy_column(c) for c in table.c if c.key not in exclude]
    key_columns = [c for c in columns if c.primary_key]
    if not key_columns:
        raise ChrononautException(f"table {table.name!r} has no primary key to version by")
    name = name or history_table_name(table.name)
    added = _generated_columns(base)
    indexes = []
    if base:
        # version_at() and has_changed_since() look for a record's rows by time:
        # (key, changed) lets them range-scan instead of filtering every version.
        changed = next(c for c in added if c.name == "changed")
        indexes.append(
            sa.Index(_index_name(name, "changed"), *[c.name for c in key_columns], changed.name)
        )
        # as_of() over the whole table reads the versions that ended after t
        # (changed > t): history is appended in the order versions end, so this
        # btree stays cheap to maintain, and retention's "changed < cutoff" uses
        # it too. A GiST index over [valid_from, changed) answers "contains t"
        # without reading the versions that began after t, but costs several
        # times more per history row written: opt in with range_index.
        valid_from = next(c for c in added if c.name == VALID_FROM_KEY)
        indexes.append(sa.Index(_index_name(name, "ended"), changed.name))
        if range_index:
            indexes.append(
                sa.Index(
                    _index_name(name, "range"),
                    _range_expression(valid_from, changed),
                    postgresql_using="gist",
                )
            )
        # Legacy rows (NULL valid_from) are found through a partial index that
        # stays empty, and costs nothing, once they are backfilled or absent.
        indexes.append(
            sa.Index(
                _index_name(name, "legacy"),
                changed.name,
                postgresql_where=valid_from.is_(None),
            )
        )
    history = sa.Table(
        name,
        metadata if metadata is not None else table.metadata,
        *columns,
        *added,
        *indexes,
        schema=table.schema,
        comment=f"History of {table.fullname} (written by Chrononaut)",
    )
    if range_index:
        history.info[RANGE_INDEX_KEY] = True
    _resolve_on_create(history)
    return history


def _range_expression(valid_from: sa.ColumnElement[Any], changed: sa.ColumnElement[Any]) -> Any:
    # greatest(): a row whose clocks disagreed covers an empty range, never an
    # invalid one (tstzrange refuses a lower bound above its upper bound).
    return sa.func.tstzrange(valid_from, sa.func.greatest(changed, valid_from), type_=TSTZRANGE())


def history_range(history: sa.FromClause) -> Any:
    """``[valid_from, changed)`` of a base history table's rows, as the expression
    its optional GiST index is built on (queries must use exactly this to use it).

    :param history: a base history table (or an alias of one).
    """
    return _range_expression(history.c[VALID_FROM_KEY], history.c.changed)


def _index_name(table_name: str, suffix: str) -> str:
    """``ix_<table>_<suffix>``, shortened to PostgreSQL's 63-byte identifier limit."""
    name = f"ix_{table_name}_{suffix}"
    if len(name.encode()) <= 63:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}"


def add_history_columns(history: sa.Table, columns: Iterable[sa.Column[object]]) -> None:
    """Add copies of ``columns`` to an existing history table.

    Single-table inheritance subclasses add columns to their base class's table
    after its history table was built; their copies go into that history table.
    """
    for column in columns:
        if column.key not in history.c:
            history.append_column(copy_column(column))
    _resolve_on_create(history)
