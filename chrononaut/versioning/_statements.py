"""The SQL statements of history capture's fast paths, built from a class's
:class:`~chrononaut.versioning._model.VersionMeta`. Pure construction: nothing here
executes; ``VersionMeta`` builds each statement once and caches it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut.versioning._tables import VALID_FROM_KEY

if TYPE_CHECKING:
    from chrononaut.versioning._meta import VersionMeta

__all__ = ["fast_update", "is_integer"]


def _typed(name: str, type_: Any) -> sa.Cast[Any]:
    # Explicit casts: PostgreSQL must not guess the types of these parameters.
    return sa.cast(sa.bindparam(name, type_=type_), type_)


def _int_array_as_text(name: str, type_: Any) -> sa.Cast[Any]:
    # An integer array sent as its text form ('{1,2,3}'), cast by the server: for
    # psycopg 3, whose list dumping costs Python time per element.
    return sa.cast(sa.bindparam(name, type_=sa.Text()), ARRAY(type_))


def is_integer(type_: Any) -> bool:
    """Whether values of ``type_`` are plain Python ints (key columns' types)."""
    return isinstance(type_, sa.Integer) and not isinstance(type_, sa.TypeDecorator)


def fast_update(
    meta: VersionMeta,
    keys: tuple[str, ...],
    many: bool,
    shared_info: bool = False,
    text_ints: bool = False,
) -> sa.Update:
    """A version-checked UPDATE of ``keys`` whose CTE copies the stored rows into
    the history table (see ``VersionMeta.fast_update_statement`` for parameters).
    ``text_ints``: the version array, and key arrays of integer columns, are sent
    as text."""
    table = meta.version_column.table
    tmap = meta.tables[0]
    history = tmap.history
    pk_columns = [meta.columns[key] for key in meta.pk_keys]
    set_columns = [meta.columns[key] for key in keys]
    version = table.c[meta.version_column.key]

    if many:
        # One row per record, from parallel arrays.
        array_of = ARRAY

        def ints(name: str, type_: Any) -> sa.Cast[Any]:
            if text_ints and is_integer(type_):
                return _int_array_as_text(name, type_)
            return _typed(name, array_of(type_))

        arrays = [
            *[ints(f"chrononaut_k{i}", c.type) for i, c in enumerate(pk_columns)],
            ints("chrononaut_v", sa.Integer()),
            *[_typed(f"chrononaut_s{i}", array_of(c.type)) for i, c in enumerate(set_columns)],
        ]
        names = [
            *[sa.column(f"k{i}", c.type) for i, c in enumerate(pk_columns)],
            sa.column("v", sa.Integer()),
            *[sa.column(f"s{i}", c.type) for i, c in enumerate(set_columns)],
        ]
        if not shared_info:
            arrays.append(_typed("chrononaut_ci", array_of(JSONB())))
            names.append(sa.column("ci", JSONB()))
        rows = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="u")
        source_rows = sa.select(*rows.c).cte("chrononaut_v")
        key_values: list[Any] = [source_rows.c[f"k{i}"] for i in range(len(pk_columns))]
        old_version: Any = source_rows.c.v
        new_values: list[Any] = [source_rows.c[f"s{i}"] for i in range(len(set_columns))]
        # Usually every record of a flush has the same change_info: then it is one
        # parameter, not an array of identical JSON documents to encode and escape.
        change_info: Any = _typed("chrononaut_ci", JSONB()) if shared_info else source_rows.c.ci
    else:
        # One record (the common request): plain parameters, a simple plan.
        source_rows = None
        key_values = [
            sa.bindparam(f"chrononaut_k{i}", type_=c.type) for i, c in enumerate(pk_columns)
        ]
        old_version = sa.bindparam("chrononaut_v", type_=sa.Integer())
        new_values = [
            sa.bindparam(f"chrononaut_s{i}", type_=c.type) for i, c in enumerate(set_columns)
        ]
        change_info = _typed("chrononaut_ci", JSONB())
    match = sa.and_(
        *[c == value for c, value in zip(pk_columns, key_values, strict=True)],
        version == old_version,
    )
    # valid_from: the ended version covers [valid_from, changed), and the new one
    # begins at that changed, which is never before valid_from.
    valid_from = table.c[VALID_FROM_KEY]
    ended = sa.func.greatest(_typed("chrononaut_changed", sa.DateTime(timezone=True)), valid_from)
    source = sa.select(
        *[table.c[col_key] for _, col_key in tmap.columns],
        version,
        valid_from,
        ended,
        change_info,
    ).where(match)
    history_insert = (
        pg_insert(history)
        .from_select(
            [
                *[history.c[col_key] for _, col_key in tmap.columns],
                history.c.version,
                history.c[VALID_FROM_KEY],
                history.c.changed,
                history.c.change_info,
            ],
            source,
        )
        .on_conflict_do_nothing()
        .cte("chrononaut_h")
    )
    statement = (
        sa.update(table)
        .where(match)
        .values(
            {
                **{c: value for c, value in zip(set_columns, new_values, strict=True)},
                version: old_version + sa.literal_column("1"),
                valid_from: ended,
            }
        )
    )
    if source_rows is not None:
        statement = statement.returning(*pk_columns).add_cte(source_rows)
    return statement.add_cte(history_insert)
