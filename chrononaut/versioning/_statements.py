"""The SQL statements of history capture's fast paths, built from a class's
:class:`~chrononaut.versioning._model.VersionMeta`. Pure construction: nothing here
executes; ``VersionMeta`` builds each statement once and caches it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import array as pg_array
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut.versioning._tables import VALID_FROM_KEY

if TYPE_CHECKING:
    from chrononaut.versioning._model import VersionMeta

__all__ = ["bulk_history", "fast_update"]


def _typed(name: str, type_: Any) -> sa.Cast[Any]:
    # Explicit casts: PostgreSQL must not guess the types of these parameters.
    return sa.cast(sa.bindparam(name, type_=type_), type_)


def fast_update(
    meta: VersionMeta, keys: tuple[str, ...], many: bool, shared_info: bool = False
) -> sa.Update:
    """A version-checked UPDATE of ``keys`` whose CTE copies the stored rows into
    the history table (see ``VersionMeta.fast_update_statement`` for parameters)."""
    table = meta.version_column.table
    tmap = meta.tables[0]
    history = tmap.history
    pk_columns = [meta.columns[key] for key in meta.pk_keys]
    set_columns = [meta.columns[key] for key in keys]
    version = table.c[meta.version_column.key]

    if many:
        # One row per record, from parallel arrays.
        array_of = ARRAY
        arrays = [
            *[_typed(f"k{i}", array_of(c.type)) for i, c in enumerate(pk_columns)],
            _typed("v", array_of(sa.Integer())),
            *[_typed(f"s{i}", array_of(c.type)) for i, c in enumerate(set_columns)],
        ]
        names = [
            *[sa.column(f"k{i}", c.type) for i, c in enumerate(pk_columns)],
            sa.column("v", sa.Integer()),
            *[sa.column(f"s{i}", c.type) for i, c in enumerate(set_columns)],
        ]
        if not shared_info:
            arrays.append(_typed("ci", array_of(JSONB())))
            names.append(sa.column("ci", JSONB()))
        rows = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="u")
        source_rows = sa.select(*rows.c).cte("chrononaut_v")
        key_values: list[Any] = [source_rows.c[f"k{i}"] for i in range(len(pk_columns))]
        old_version: Any = source_rows.c.v
        new_values: list[Any] = [source_rows.c[f"s{i}"] for i in range(len(set_columns))]
        # Usually every record of a flush has the same change_info: then it is one
        # parameter, not an array of identical JSON documents to encode and escape.
        change_info: Any = _typed("ci", JSONB()) if shared_info else source_rows.c.ci
    else:
        # One record (the common request): plain parameters, a simple plan.
        source_rows = None
        key_values = [sa.bindparam(f"k{i}", type_=c.type) for i, c in enumerate(pk_columns)]
        old_version = sa.bindparam("v", type_=sa.Integer())
        new_values = [sa.bindparam(f"s{i}", type_=c.type) for i, c in enumerate(set_columns)]
        change_info = _typed("ci", JSONB())
    match = sa.and_(
        *[c == value for c, value in zip(pk_columns, key_values, strict=True)],
        version == old_version,
    )
    # valid_from: the ended version covers [valid_from, changed), and the new one
    # begins at that changed, which is never before valid_from.
    valid_from = table.c[VALID_FROM_KEY]
    ended = sa.func.greatest(_typed("changed", sa.DateTime(timezone=True)), valid_from)
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


def bulk_history(meta: VersionMeta) -> sa.Update | None:
    """After an ORM bulk UPDATE: compare, write history and bump versions in one
    statement (see ``VersionMeta.bulk_history_statement`` for parameters)."""
    tmap = meta.tables[0]
    if len(meta.tables) != 1 or not meta.arrays_supported(meta.tracked):
        return None
    table = meta.version_column.table
    history = tmap.history
    version = table.c[meta.version_column.key]
    pk_index = {key: i for i, key in enumerate(meta.pk_keys)}
    tracked = [(key, col_key) for key, col_key in tmap.columns if key not in pk_index]
    hidden = sorted(meta.hidden)
    if not tracked and not hidden:
        return None

    pk_types = [meta.columns[key].type for key in meta.pk_keys]
    tracked_types = [table.c[col_key].type for _, col_key in tracked]
    rows = (
        sa.func.unnest(
            *[_typed(f"k{i}", ARRAY(t)) for i, t in enumerate(pk_types)],
            _typed("v", ARRAY(sa.Integer())),
            *[_typed(f"t{j}", ARRAY(t)) for j, t in enumerate(tracked_types)],
            *[_typed(f"hh{m}", ARRAY(sa.Text())) for m in range(len(hidden))],
            _typed("ci", ARRAY(JSONB())),
        )
        .table_valued(
            *[sa.column(f"k{i}", t) for i, t in enumerate(pk_types)],
            sa.column("v", sa.Integer()),
            *[sa.column(f"t{j}", t) for j, t in enumerate(tracked_types)],
            *[sa.column(f"hh{m}", sa.Text()) for m in range(len(hidden))],
            sa.column("ci", JSONB()),
        )
        .render_derived(name="u")
    )
    old = sa.select(*rows.c).cte("chrononaut_o")

    def differs(live: Any, before: Any) -> sa.ColumnElement[bool]:
        if isinstance(live.type, sa.JSON) and not isinstance(live.type, JSONB):
            # json has no equality operator; its text is what was stored.
            return sa.cast(live, sa.Text()).is_distinct_from(sa.cast(before, sa.Text()))
        return live.is_distinct_from(before)  # type: ignore[no-any-return]

    hidden_differs = [
        sa.func.md5(sa.cast(meta.columns[key], sa.Text())).is_distinct_from(old.c[f"hh{m}"])
        for m, key in enumerate(hidden)
    ]
    conditions = [
        *[differs(table.c[col_key], old.c[f"t{j}"]) for j, (_, col_key) in enumerate(tracked)],
        *hidden_differs,
    ]
    key_match = [meta.columns[key] == old.c[f"k{i}"] for i, key in enumerate(meta.pk_keys)]
    extra: list[Any] = []
    if hidden:
        labels: list[sa.ColumnElement[Any]] = [
            sa.case((d, sa.literal(key, sa.Text())), else_=sa.null())
            for d, key in zip(hidden_differs, hidden, strict=True)
        ]
        names = sa.func.array_remove(
            pg_array[Any](labels, type_=sa.Text()),
            sa.null(),
            type_=ARRAY(sa.Text()),
        )
        extra.append(names.label("hc"))
    changed_rows = (
        sa.select(old, *extra)
        .select_from(table.join(old, sa.and_(*key_match)))
        .where(sa.or_(*conditions))
        .cte("chrononaut_c")
    )
    change_info: Any = changed_rows.c.ci
    if hidden:
        change_info = sa.case(
            (
                sa.func.cardinality(changed_rows.c.hc) > 0,
                changed_rows.c.ci.op("||")(
                    sa.func.jsonb_build_object(
                        sa.literal("hidden_cols_changed"), sa.func.to_jsonb(changed_rows.c.hc)
                    )
                ),
            ),
            else_=changed_rows.c.ci,
        )
    copied = []
    targets = []
    j = 0
    for key, col_key in tmap.columns:
        targets.append(history.c[col_key])
        if key in pk_index:
            copied.append(changed_rows.c[f"k{pk_index[key]}"])
        else:
            copied.append(changed_rows.c[f"t{j}"])
            j += 1
    history_insert = (
        pg_insert(history)
        .from_select(
            [*targets, history.c.version, history.c.changed, history.c.change_info],
            sa.select(
                *copied,
                changed_rows.c.v,
                _typed("changed", sa.DateTime(timezone=True)),
                change_info,
            ),
        )
        .cte("chrononaut_h")
    )
    return (
        sa.update(table)
        .where(
            *[meta.columns[key] == changed_rows.c[f"k{i}"] for i, key in enumerate(meta.pk_keys)]
        )
        .values({version: version + sa.literal_column("1")})
        .returning(*[meta.columns[key] for key in meta.pk_keys], version)
        .add_cte(old)
        .add_cte(changed_rows)
        .add_cte(history_insert)
    )
