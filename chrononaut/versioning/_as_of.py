"""Time travel: a versioned table, or one record, as it was at an instant.

Every history row covers ``[valid_from, changed)``; a live row covers
``[valid_from, ∞)``. The table as of ``at`` is therefore the history rows whose
range contains ``at`` plus the live rows whose current version began at or before
``at`` — one ``UNION ALL`` that PostgreSQL answers from the history table's btree
on ``changed`` (or its optional GiST index over the range) for the whole table, or
its ``(key, changed)`` btree for one key.

A ``NULL`` ``valid_from`` (rows written before the column existed) means "began
where the key's previous history row ended": those rows take a branch of their
own that reads a partial index holding only them, so a table without legacy rows
pays one probe of an empty index for it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapper, aliased
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.util import AliasedClass
from sqlalchemy.sql.visitors import InternalTraversal

from chrononaut.versioning._meta import as_utc as _as_utc
from chrononaut.versioning._meta import joined_descendants, source_table
from chrononaut.versioning._tables import (
    RANGE_INDEX_KEY,
    VALID_FROM_KEY,
    VERSION_KEY,
    history_range,
)

if TYPE_CHECKING:
    from chrononaut.versioning._meta import TableMap, VersionMeta

__all__ = ["as_of", "version_at"]

_TZ = sa.DateTime(timezone=True)


def _meta(model: object) -> VersionMeta:
    from chrononaut.versioning._meta import meta_of

    meta = meta_of(model) if isinstance(model, type) else None
    if meta is None:
        name = model.__name__ if isinstance(model, type) else type(model).__name__
        raise TypeError(f"as_of() needs a Versioned model class, not {name}")
    return meta


def _at(value: object) -> sa.BindParameter[dt.datetime]:
    # A unique parameter per use: two as_of() entities in one statement (a join)
    # may stand for different instants.
    return sa.bindparam(None, _as_utc(value, "at"), type_=_TZ, unique=True)


def _key_match(left: sa.FromClause, right: sa.FromClause, tmap: TableMap) -> list[Any]:
    return [left.c[col_key] == right.c[col_key] for _, col_key in tmap.pk]


def _detach_current(target: Any, context: Any) -> None:
    """A record of a still-current version (``changed`` is NULL: it came from the
    model's table) leaves the session as soon as it is loaded.

    Its identity (key, version) is also the identity of the history row its
    version becomes when it changes; in the identity map it would stand in for
    that row later, and after a commit it would try to refresh from a history row
    that does not exist yet. Detached, it keeps the values it was loaded with.
    """
    dict_ = instance_state(target).dict
    if "changed" in dict_ and dict_["changed"] is None:
        session = context.session
        if session is not None and target in session:
            session.expunge(target)


def _listen(meta: VersionMeta) -> None:
    root: Mapper[Any] = meta.history_mapper.base_mapper
    # Marked on the history class itself: ids of mappers are reused once collected.
    if not root.class_.__dict__.get("_chrononaut_detaches_current"):
        event.listen(root, "load", _detach_current, propagate=True)
        type.__setattr__(root.class_, "_chrononaut_detaches_current", True)


def _columns(meta: VersionMeta) -> tuple[list[sa.Column[Any]], list[Any]]:
    """Each history column of ``meta``'s hierarchy, with what the live branch selects
    for it (the model column, or a typed NULL for ``changed`` / ``change_info`` and
    for columns of sibling classes)."""
    root_table = meta.version_column.table
    history_columns: list[sa.Column[Any]] = []
    live_columns: list[Any] = []
    seen: set[sa.Table] = set()
    own = [(meta, tmap) for tmap in meta.tables]
    for owner, tmap in [*own, *joined_descendants(meta)]:
        if tmap.history in seen:
            continue
        seen.add(tmap.history)
        source = source_table(owner, tmap)
        for column in tmap.history.c:
            history_columns.append(column)
            if column.key == VERSION_KEY:
                live: Any = meta.version_column
            elif tmap.base and column.key == VALID_FROM_KEY:
                live = root_table.c[VALID_FROM_KEY]
            elif tmap.base and column.key in ("changed", "change_info"):
                live = sa.cast(sa.null(), column.type)
            elif column.key in source.c:
                live = source.c[column.key]
            else:
                live = sa.cast(sa.null(), column.type)
            live_columns.append(live)
    return history_columns, live_columns


def _polymorphic(meta: VersionMeta) -> list[Mapper[Any]]:
    """History mappers of the subclasses below ``meta``'s class, joined-table and
    single-table: their columns are loaded with the rows (a record of a
    still-current version leaves the session when loaded and could not load them
    later)."""
    from chrononaut.versioning._meta import meta_of

    mappers: list[Mapper[Any]] = []
    for mapper in meta.mapper.self_and_descendants:
        sub = meta_of(mapper.class_)
        if sub is not None and sub is not meta:
            mappers.append(sub.history_mapper)
    return mappers


def as_of_selectable(meta: VersionMeta, at: object) -> sa.Subquery:
    """The ``UNION ALL`` that ``as_of`` maps, as a plain Core subquery (for plans)."""
    return _union(meta, _at(at)).subquery()


def _union(meta: VersionMeta, at_param: sa.BindParameter[Any]) -> sa.CompoundSelect[Any]:
    base = meta.tables[0]
    history = base.history
    history_from: Any = meta.history_mapper.persist_selectable
    live_from: Any = meta.mapper.persist_selectable
    live_root = meta.version_column.table
    for owner, tmap in joined_descendants(meta):
        # Rows of other classes have no row there: outer joins, by key (and version).
        history_from = history_from.outerjoin(
            tmap.history,
            sa.and_(
                *[
                    tmap.history.c[col] == history.c[root]
                    for (_, col), (_, root) in zip(tmap.pk, base.pk, strict=True)
                ],
                tmap.history.c[VERSION_KEY] == history.c[VERSION_KEY],
            ),
        )
        source = source_table(owner, tmap)
        live_from = live_from.outerjoin(
            source,
            sa.and_(
                *[
                    source.c[col] == live_root.c[root]
                    for (_, col), (_, root) in zip(tmap.pk, base.pk, strict=True)
                ]
            ),
        )
    history_columns, live_columns = _columns_cached(meta)
    labels = _labels(history_columns)

    def history_select(*where: Any) -> sa.Select[Any]:
        return (
            sa.select(*[c.label(n) for c, n in zip(history_columns, labels, strict=True)])
            .select_from(history_from)
            .where(*where)
        )

    valid_from = history.c[VALID_FROM_KEY]
    changed = history.c.changed
    if history.info.get(RANGE_INDEX_KEY):
        # Exactly the GiST index's expression (the cast: with an untyped literal
        # PostgreSQL would read a range). A NULL lower bound is unbounded below:
        # legacy rows are kept out of this branch explicitly.
        began: Any = sa.and_(
            valid_from.isnot(None), history_range(history).op("@>")(sa.cast(at_param, _TZ))
        )
    else:
        began = valid_from <= at_param
    # Versions with a known start: the plain conditions a hand-written query has,
    # so PostgreSQL picks the same plan (the (key, changed) btree for one key, the
    # btree on changed or the GiST index for the whole table).
    known = history_select(began, changed > at_param)
    # Legacy versions (NULL valid_from) began where the key's previous version
    # ended. Their branch reads the partial index that holds only them; the
    # previous end is a scalar subquery PostgreSQL runs only for legacy rows
    # (cheaper to plan than an anti-join, which matters for one-key queries).
    legacy = history_select(
        valid_from.is_(None),
        changed > at_param,
        _no_later_than(_previous_end(history, base), at_param),
    )
    live_valid_from = meta.version_column.table.c[VALID_FROM_KEY]
    later = history.alias("chrononaut_later")
    live_keys = [meta.columns[key] for key, _ in base.pk]
    last_end = (
        sa.select(sa.func.max(later.c.changed))
        .where(
            *[
                later.c[col_key] == column
                for (_, col_key), column in zip(base.pk, live_keys, strict=True)
            ]
        )
        .scalar_subquery()
    )
    live = (
        sa.select(*[c.label(n) for c, n in zip(live_columns, labels, strict=True)])
        .select_from(live_from)
        # COALESCE stops at the first non-NULL value: the subquery runs only for a
        # legacy live row (which began where its last history row ended).
        .where(_no_later_than(sa.func.coalesce(live_valid_from, last_end), at_param))
    )
    criterion = meta.history_mapper._single_table_criterion
    if criterion is not None:
        known = known.where(criterion)
        legacy = legacy.where(criterion)
    live_criterion = meta.mapper._single_table_criterion
    if live_criterion is not None:
        live = live.where(live_criterion)
    return sa.union_all(known, legacy, live)


def _previous_end(history: sa.Table, base: TableMap) -> Any:
    """When the key's previous version ended: the latest ``changed`` of the history
    rows of the same key with a lower version (NULL for its first version)."""
    earlier = history.alias("chrononaut_earlier")
    return (
        sa.select(sa.func.max(earlier.c.changed))
        .where(*_key_match(earlier, history, base), earlier.c[VERSION_KEY] < history.c[VERSION_KEY])
        .scalar_subquery()
    )


def _no_later_than(end: Any, at_param: sa.BindParameter[Any]) -> Any:
    """``end <= at``, true also when there is no ``end`` (no earlier version: the
    legacy version began at the beginning)."""
    return (
        sa.func.coalesce(end, sa.literal_column("'-infinity'::timestamptz"), type_=_TZ) <= at_param
    )


_tokens = itertools.count(1)


class _AsOfUnion(sa.TextClause):
    """The union as a statement element whose cache key is one token per class and
    the instant's parameter.

    Building and traversing the full union for every ``as_of()`` call would cost
    several times the query's own round trip; this element is as cheap as a
    ``text()`` to make, to cache-key and to execute from SQLAlchemy's compiled
    cache, and renders the real union (through the compiler in use, so
    ``schema_translate_map`` applies) only when a statement is compiled.
    """

    # The cache key: the class's token and the instant's parameter (whose value
    # SQLAlchemy extracts per execution), nothing else.
    _traverse_internals = [
        ("text", InternalTraversal.dp_string),
        ("chrononaut_at", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, meta: VersionMeta, at_param: sa.BindParameter[Any]) -> None:
        token = meta.__dict__.get("_chrononaut_as_of_token")
        if token is None:
            # Unique per class for the process's lifetime: cached SQL is keyed by it.
            token = f"chrononaut_as_of_{next(_tokens)}"
            meta.__dict__["_chrononaut_as_of_token"] = token
        super().__init__(token)
        self.chrononaut_at = at_param
        self.chrononaut_meta = meta


@compiles(_AsOfUnion)
def _compile_as_of(element: _AsOfUnion, compiler: Any, **kw: Any) -> str:
    union = _union(element.chrononaut_meta, element.chrononaut_at)
    rendered: str = compiler.process(union, **kw)
    return rendered


class _AsOfSubquery(sa.Subquery):
    """The union's subquery, finding its column for a history column by a lookup
    made once per class.

    Every ``as_of()`` call makes a fresh aliased entity over a fresh subquery (each
    stands for its own instant, and two may meet in one join); SQLAlchemy's
    search of a new subquery's columns by lineage cost more than the one-key
    query's round trip. The columns are light ``column()`` objects, and
    ``corresponding_column`` answers from the positions of the history columns.
    """

    inherit_cache = True
    chrononaut_positions: dict[Any, int]

    def corresponding_column(self, column: Any, require_embedded: bool = False) -> Any:
        position = self.chrononaut_positions.get(column)
        if position is not None:
            return self.c[position]
        return super().corresponding_column(column, require_embedded)

    def alias(self, name: str | None = None, flat: bool = False) -> Any:
        """Another subquery of the same union (``aliased(Past)``, a self-join at the
        same instant), finding history columns the same way."""
        other = _AsOfSubquery._construct(self.element, name=name)
        other.chrononaut_positions = self.chrononaut_positions
        return other

    def _anonymous_fromclause(self, *, name: str | None = None, flat: bool = False) -> Any:
        return self.alias(name=name)


def _source(meta: VersionMeta, at: object) -> sa.Subquery:
    history_columns, _ = _columns_cached(meta)
    cached = meta.__dict__.get("_chrononaut_as_of_labels")
    if cached is None or len(cached[0]) != len(history_columns):
        names = _labels(history_columns)
        light = [sa.column(n, c.type) for n, c in zip(names, history_columns, strict=True)]
        positions = {c: i for i, c in enumerate(history_columns)}
        cached = (light, positions)
        meta.__dict__["_chrononaut_as_of_labels"] = cached
    light, positions = cached
    textual = _AsOfUnion(meta, _at(at)).columns(*light)
    subquery = _AsOfSubquery._construct(textual)
    subquery.chrononaut_positions = positions
    return subquery


def _labels(history_columns: list[sa.Column[Any]]) -> list[str]:
    """The union's column names: each history column's key (what a subquery or CTE
    of ``select(Past.id, ...)`` is then named by), numbered for a key an earlier
    table of the hierarchy has already used (``id_1``), and short enough for
    PostgreSQL's 63 bytes."""
    seen: set[str] = set()
    names: list[str] = []
    for column in history_columns:
        name = column.key
        if name in seen or len(name.encode()) > 63:
            n = 1
            while True:
                suffix = f"_{n}"
                name = column.key.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix
                if name not in seen:
                    break
                n += 1
        seen.add(name)
        names.append(name)
    return names


def _columns_cached(meta: VersionMeta) -> tuple[list[sa.Column[Any]], list[Any]]:
    # Single-table subclasses may add history columns later: recount.
    size = sum(len(tmap.history.c) for tmap in meta.tables)
    size += sum(len(tmap.history.c) for _, tmap in joined_descendants(meta))
    cached = meta.__dict__.get("_chrononaut_as_of_columns")
    if cached is None or cached[0] != size:
        cached = (size, _columns(meta))
        meta.__dict__["_chrononaut_as_of_columns"] = cached
    return cached[1]


def as_of(model: type[Any], at: dt.datetime) -> AliasedClass[Any]:
    """``model``'s table as it was at ``at``: an aliased class of its history class.

    ::

        Past = as_of(Account, at)
        rows = session.scalars(select(Past).where(Past.balance > 0)).all()

    For every row that existed at ``at`` it yields one read-only history record
    holding the row's state then, with ``version`` the version current then. Rows
    still in that version come from the model's table (``changed`` and
    ``change_info`` are ``None``); such records are not kept in the session (they
    stay readable after a commit, and never stand in for the history row their
    version becomes later). It composes like any aliased class: ``where``,
    ``order_by``, ``limit``, ``select(func.count()).select_from(Past)``, joins
    between ``as_of`` entities, ``db.paginate()``.

    :param model: a Versioned model class; a subclass yields only its own rows.
    :param at: the instant (a naive datetime is taken as UTC; a future one gives
        the current state).
    :raises TypeError: for a model that is not Versioned or an ``at`` that is not a
        datetime.
    """
    meta = _meta(model)
    selectable = _source(meta, at)
    _listen(meta)
    subclasses = _polymorphic(meta)
    if subclasses:
        # What with_polymorphic() makes, without its search for the subclasses'
        # tables in the selectable (they are inside the union, out of its sight).
        return AliasedClass(
            meta.history_mapper.class_,
            selectable,
            with_polymorphic_mappers=[meta.history_mapper, *subclasses],
            with_polymorphic_discriminator=None,
            represents_outer_join=True,
        )
    return cast("AliasedClass[Any]", aliased(meta.history_mapper.class_, selectable))


def version_at(record: Any, at: dt.datetime, session: Any = None) -> Any:
    """See :meth:`~chrononaut.Versioned.version_at` (``at`` already aware)."""
    meta: VersionMeta = record._chrononaut_meta()
    base = meta.tables[0]
    history = base.history
    query = record._history_query(session)
    # The first version of the key that ended after at; it contains at unless at
    # falls before its start (a NULL start is the previous version's end).
    start = sa.func.coalesce(history.c[VALID_FROM_KEY], _previous_end(history, base), type_=_TZ)
    found = (
        query.add_columns(start.label("chrononaut_start"))
        .filter(history.c.changed > at)
        .order_by(None)
        .order_by(history.c.changed, history.c[VERSION_KEY])
        .first()
    )
    if found is not None:
        version, began = found
        return version if began is None or began <= at else None
    state = instance_state(record)
    if state.deleted or state.was_deleted:
        return None
    began = getattr(record, VALID_FROM_KEY)
    if began is None:
        ended = query.order_by(None).with_entities(sa.func.max(history.c.changed)).scalar()
        began = ended
    return record if began is None or began <= at else None
