"""The ``Versioned`` mixin and the history classes built for it at class definition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Mapper, declared_attr, object_session
from sqlalchemy.orm.properties import ColumnProperty

from chrononaut._leases import LeaseMixin
from chrononaut.errors import ChrononautException
from chrononaut.locking import LockableMixin
from chrononaut.versioning import _tables as tables
from chrononaut.versioning._concurrency import OptimisticMixin
from chrononaut.versioning._history import HistoryReadMixin
from chrononaut.versioning._meta import (
    META_ATTRIBUTE,
    HistoryRecord,
    TableMap,
    VersionMeta,
    history_class,
    meta_of,
    note_switch,
    note_update,
)

__all__ = ["HistoryRecord", "VersionMeta", "Versioned", "history_class", "meta_of"]

VERSION_KEY = tables.VERSION_KEY
VALID_FROM_KEY = tables.VALID_FROM_KEY


def _refuse_write(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise ChrononautException(
        f"{type(target).__name__} records are read-only; Chrononaut writes history itself"
    )


def _in_utc(values: dict[str, Any], key: str) -> None:
    value = values.get(key)
    if isinstance(value, dt.datetime) and value.tzinfo is not dt.timezone.utc:
        values[key] = value.astimezone(dt.timezone.utc)


def _utc_on_load(target: Any, context: Any, attrs: Any = None) -> None:
    """``load`` / ``refresh`` of Versioned records: ``valid_from`` in UTC, whatever
    the connection's ``TimeZone`` (PostgreSQL returns it in that zone: the same
    instant, another offset)."""
    _in_utc(target.__dict__, VALID_FROM_KEY)


def _history_utc_on_load(target: Any, context: Any, attrs: Any = None) -> None:
    """The same for history records, whose ``changed`` is Chrononaut's too."""
    values = target.__dict__
    _in_utc(values, VALID_FROM_KEY)
    _in_utc(values, "changed")


def _refuse_modified(target: Any, initiator: Any) -> None:
    # The value was changed in place before this event: expired, it is read from
    # the history row again on next access (when the record is in a session).
    key = getattr(initiator, "key", None)
    session = object_session(target)
    if key is not None and session is not None:
        session.expire(target, [key])
    raise ChrononautException(
        f"{type(target).__name__} records are read-only history; change the live "
        f"{type(target).__chrononaut_model__.__name__} record instead (restore() copies "
        f"a version back)"
    )


def _names(cls: type[Any], attribute: str) -> tuple[str, ...]:
    value = getattr(cls, attribute, None) or ()
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ChrononautException(
            f"{cls.__name__}.{attribute} must be a list of column names, not {value!r}"
        )
    for item in value:
        if not isinstance(item, str):
            raise ChrononautException(
                f"{cls.__name__}.{attribute} must hold column names (strings), not {item!r}"
            )
    return tuple(value)


def _resolve_keys(mapper: Mapper[Any], names: Sequence[str], attribute: str) -> frozenset[str]:
    """Map column names or attribute keys to attribute keys, refusing unknown ones."""
    props: dict[str, str] = {}
    known = _column_props(mapper)
    for prop in known:
        props[prop.key] = prop.key
        for column in prop.columns:
            if isinstance(column, sa.Column):
                props.setdefault(column.name, prop.key)
    keys = set()
    for name in names:
        if name not in props:
            raise ChrononautException(
                f"{mapper.class_.__name__}.{attribute} names {name!r}, which is not a mapped "
                f"column of {mapper.class_.__name__}; known columns: "
                f"{', '.join(sorted(p.key for p in known))}"
            )
        keys.add(props[name])
    return frozenset(keys)


def _column_props(mapper: Mapper[Any]) -> list[ColumnProperty[Any]]:
    """The mapper's column attributes that map table columns, in mapper order.

    Read from ``mapper.columns`` rather than ``mapper.column_attrs``: the latter
    configures every mapper of the registry, and this runs while the class is
    being defined, before the classes its relationships name may exist.
    """
    found: dict[str, ColumnProperty[Any]] = {}
    for column in mapper.columns:
        if not isinstance(column, sa.Column) or not isinstance(column.table, sa.Table):
            continue  # column_property() over an expression: nothing to copy
        prop = mapper.get_property_by_column(column)
        if isinstance(prop, ColumnProperty) and prop.key not in found:
            found[prop.key] = prop
    return list(found.values())


def _configure(mapper: Mapper[Any]) -> None:
    """Build the history table, class and mapper of a freshly mapped Versioned class."""
    cls = mapper.class_
    hidden = _resolve_keys(mapper, _names(cls, "__chrononaut_hidden__"), "__chrononaut_hidden__")
    untracked = _resolve_keys(
        mapper, _names(cls, "__chrononaut_untracked__"), "__chrononaut_untracked__"
    )
    both = hidden & untracked
    if both:
        raise ChrononautException(
            f"{cls.__name__} lists {', '.join(sorted(both))} in both __chrononaut_hidden__ "
            f"and __chrononaut_untracked__; choose one"
        )
    pk_keys = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
    for key in sorted((hidden | untracked) & set(pk_keys)):
        raise ChrononautException(
            f"{cls.__name__}: primary-key column {key!r} can't be hidden or untracked; "
            f"history is keyed by it"
        )
    if VERSION_KEY in hidden | untracked:
        raise ChrononautException(
            f"{cls.__name__}: {VERSION_KEY!r} is Chrononaut's own column; it can't be "
            f"hidden or untracked"
        )

    parent = mapper.inherits
    parent_meta = meta_of(parent.class_) if parent is not None else None
    if parent is not None and parent_meta is None:
        raise ChrononautException(
            f"{cls.__name__} is Versioned but inherits from {parent.class_.__name__}, which is "
            f"not; put the Versioned mixin on the base of the hierarchy"
        )

    if VALID_FROM_KEY in hidden | untracked:
        raise ChrononautException(
            f"{cls.__name__}: {VALID_FROM_KEY!r} is Chrononaut's own column; it can't be "
            f"hidden or untracked"
        )
    excluded_keys = hidden | untracked | {VERSION_KEY, VALID_FROM_KEY}
    table_maps: list[TableMap]
    props: dict[str, Any] = {}
    local = mapper.local_table
    if not isinstance(local, sa.Table):
        raise ChrononautException(f"{cls.__name__} is not mapped to a table")

    def excluded_columns(table: sa.Table) -> set[str]:
        out = set()
        for column in table.c:
            try:
                prop = mapper.get_property_by_column(column)
            except Exception:
                out.add(column.key)
                continue
            if prop.key in excluded_keys:
                out.add(column.key)
        return out

    def column_map(table: sa.Table, history: sa.Table) -> TableMap:
        tmap = TableMap(history=history)
        skip = excluded_columns(table)
        for column in table.c:
            if column.key in skip or column.key not in history.c:
                continue
            key = mapper.get_property_by_column(column).key
            tmap.columns.append((key, column.key))
            if column.primary_key:
                tmap.pk.append((key, column.key))
        return tmap

    if parent is not None and parent_meta is not None and "__chrononaut_range_index__" in vars(cls):
        # Only the root's history table carries [valid_from, changed).
        raise ChrononautException(
            f"{cls.__name__} sets __chrononaut_range_index__, which only the root class of "
            f"a hierarchy can set: set it on {parent_meta.mapper.base_mapper.class_.__name__}"
        )
    if getattr(mapper, "column_prefix", None):
        raise ChrononautException(
            f"{cls.__name__} sets column_prefix in __mapper_args__, which would rename "
            f"Chrononaut's own 'version' and 'valid_from' attributes: give the columns "
            f"that need other attribute keys those keys explicitly "
            f"(e.g. _name = Column('name', ...)) instead"
        )
    if mapper.concrete:
        raise ChrononautException(
            f"{cls.__name__} uses concrete table inheritance, which Versioned does not "
            f"support: use joined-table or single-table inheritance, or make each "
            f"concrete class a Versioned model of its own (not inheriting from another)"
        )
    if parent is None or parent_meta is None:
        # The root of a hierarchy: versioned by SQLAlchemy's own version_id_col.
        # Chrononaut increments it itself (only for tracked or hidden changes), so
        # the generator is off; the UPDATE still checks the old value.
        if VERSION_KEY not in local.c:
            raise ChrononautException(f"{cls.__name__} has no {VERSION_KEY!r} column")
        own_version = mapper.version_id_col
        if own_version is not None and own_version is not local.c[VERSION_KEY]:
            raise ChrononautException(
                f"{cls.__name__} sets version_id_col in __mapper_args__; Versioned "
                f"maintains its own {VERSION_KEY!r} column as the version counter: drop "
                f"version_id_col (and version_id_generator) from __mapper_args__"
            )
        _check_own_column(cls, local, VERSION_KEY)
        _check_own_column(cls, local, VALID_FROM_KEY)
        mapper.version_id_col = local.c[VERSION_KEY]
        mapper.version_id_generator = False
        # Changes made after Chrononaut's before_flush (later listeners) are
        # versioned too: the unit of work reports each row it updates. Unwrapped
        # (raw, retval), so the one-statement path can tell it from others.
        event.listen(mapper, "after_update", note_update, raw=True, retval=True, propagate=True)
        event.listen(mapper, "before_insert", note_switch, raw=True, retval=True, propagate=True)
        name = tables.history_table_name(local.name, getattr(cls, "__chrononaut_tablename__", None))
        range_index = getattr(cls, "__chrononaut_range_index__", False)
        if not isinstance(range_index, bool):
            raise ChrononautException(
                f"{cls.__name__}.__chrononaut_range_index__ must be True or False, "
                f"not {range_index!r}"
            )
        history = tables.build_history_table(
            local, exclude=excluded_columns(local), name=name, base=True, range_index=range_index
        )
        base_map = column_map(local, history)
        base_map.base = True
        table_maps = [base_map]
        history_table: sa.Table | None = history
        inherit_kwargs: dict[str, Any] = {}
        for key, col_key in base_map.columns:
            props[key] = history.c[col_key]
    elif local is parent.local_table:
        # Single-table inheritance: columns added by this subclass go into the
        # history table of the table it shares (the root's, or that of the
        # joined-table subclass it extends).
        shared = parent_meta.tables[-1]
        new_columns = [
            c
            for c in local.c
            if c.key not in shared.history.c and c.key not in excluded_columns(local)
        ]
        tables.add_history_columns(shared.history, new_columns)
        own_map = TableMap(
            history=shared.history, columns=list(shared.columns), pk=shared.pk, base=shared.base
        )
        for column in new_columns:
            key = mapper.get_property_by_column(column).key
            own_map.columns.append((key, column.key))
            props[key] = shared.history.c[column.key]
        table_maps = [*parent_meta.tables[:-1], own_map]
        history_table = None
        inherit_kwargs = {"inherits": parent_meta.history_mapper}
    else:
        # Joined-table inheritance: a history table per table, joined on key + version.
        parent_history = parent_meta.tables[-1].history
        name = tables.history_table_name(local.name, cls.__dict__.get("__chrononaut_tablename__"))
        history = tables.build_history_table(
            local, exclude=excluded_columns(local), name=name, base=False
        )
        child_map = column_map(local, history)
        table_maps = [*parent_meta.tables, child_map]
        history_table = history
        parent_map = parent_meta.tables[-1]
        conditions = [history.c[VERSION_KEY] == parent_history.c[VERSION_KEY]]
        for (_, child_col), (_, parent_col) in zip(child_map.pk, parent_map.pk, strict=True):
            conditions.append(history.c[child_col] == parent_history.c[parent_col])
        inherit_kwargs = {
            "inherits": parent_meta.history_mapper,
            "inherit_condition": sa.and_(*conditions),
        }
        for key, col_key in child_map.columns:
            if parent_meta.history_mapper.has_property(key):
                existing = parent_meta.history_mapper.get_property(key, _configure_mappers=False)
                props[key] = [history.c[col_key], *existing.columns]
            else:
                props[key] = history.c[col_key]
        # Every level's version column, not just the parent's: the mapper keeps the
        # first one it finds of each property (the root's, three levels down).
        parent_version = parent_meta.history_mapper.get_property(
            VERSION_KEY, _configure_mappers=False
        )
        props[VERSION_KEY] = [history.c[VERSION_KEY], *parent_version.columns]

    # No active_history on the columns: loading an expired record when one of its
    # attributes is set would autoflush and drop pending relationship changes. The
    # flush reads the old values it lacks, one SELECT per class (capture.py).

    tracked = tuple(p.key for p in _column_props(mapper) if p.key not in excluded_keys)
    parent_history_cls = parent_meta.history_mapper.class_ if parent_meta else HistoryRecord
    history_cls: type[HistoryRecord] = type(
        f"{cls.__name__}History",
        (parent_history_cls,),
        {
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}History",
            "__doc__": f"Read-only history of :class:`{cls.__qualname__}` records.",
            "__chrononaut_model__": cls,
            "__chrononaut_hidden_keys__": hidden,
            "__chrononaut_untracked_keys__": untracked,
        },
    )
    polymorphic: dict[str, Any] = {}
    if mapper.polymorphic_identity is not None:
        polymorphic["polymorphic_identity"] = mapper.polymorphic_identity
    if parent is None and mapper.polymorphic_on is not None:
        on = mapper.polymorphic_on
        if isinstance(on, sa.Column) and on.key in table_maps[0].history.c:
            polymorphic["polymorphic_on"] = table_maps[0].history.c[on.key]
    history_mapper = mapper.registry.map_imperatively(
        history_cls,
        history_table,
        properties=props,
        **inherit_kwargs,
        **polymorphic,
    )
    if history_table is None and history_cls.__dict__.get("__table__", False) is None:
        # A single-table subclass's history class shares its parent's table, as
        # declarative's ``Sub.__table__`` is the parent's.
        type.__delattr__(history_cls, "__table__")
    for name in ("before_insert", "before_update", "before_delete"):
        event.listen(history_mapper, name, _refuse_write)
    if parent is None or parent_meta is None:
        for name in ("load", "refresh"):
            event.listen(history_mapper, name, _history_utc_on_load, propagate=True)
            event.listen(mapper, name, _utc_on_load, propagate=True)
    for attribute in history_mapper.class_manager.values():
        # In-place changes of mutable values (MutableDict, MutableList) flag the
        # attribute modified instead of setting it: refused the same, at once.
        event.listen(attribute, "modified", _refuse_modified)
    # Untyped foreign-key copies learn their type by the time the mappers are
    # configured (the referenced table may be defined after this class).
    history_tables = [tmap.history for tmap in table_maps]

    def resolve(*_: Any) -> None:
        for history in history_tables:
            tables.resolve_types(history)

    event.listen(mapper, "mapper_configured", resolve, once=True)

    columns: dict[str, sa.Column[Any]] = {}
    for prop in _column_props(mapper):
        column = prop.columns[0]
        if isinstance(column, sa.Column):
            columns[prop.key] = column
    version_column = parent_meta.version_column if parent_meta else local.c[VERSION_KEY]
    meta = VersionMeta(
        version_column=version_column,
        columns=columns,
        mapper=mapper,
        tracked=tracked,
        hidden=hidden,
        untracked=untracked,
        tables=table_maps,
        pk_keys=pk_keys,
        history_mapper=history_mapper,
    )
    type.__setattr__(cls, META_ATTRIBUTE, meta)
    type.__setattr__(cls, "__history_mapper__", history_mapper)


def _check_own_column(cls: type[Any], table: sa.Table, key: str) -> None:
    """Refuse a model that declares ``version`` / ``valid_from`` itself: Chrononaut
    sets these columns, so a column of the model's own would be silently overwritten."""
    column = table.c.get(key)
    if column is None or column.info.get(tables.INFO_KEY) != key:
        raise ChrononautException(
            f"{cls.__name__} defines a {key!r} column of its own; Versioned adds and sets "
            f"{key!r} itself: rename the model's column (e.g. with "
            f"Column('{key}_', ...)) or drop it"
        )


def _on_mapper_constructed(mapper: Mapper[Any], class_: type[Any]) -> None:
    _configure(mapper)


class Versioned(HistoryReadMixin, OptimisticMixin, LockableMixin, LeaseMixin):
    """Mixin for models whose changes are kept in a history table.

    Adds an integer ``version`` column (0 for a new row, the mapper's
    ``version_id_col``) and builds ``<table>_history`` (or
    ``__chrononaut_tablename__``) in the same MetaData when the class is defined.

    Works with every declarative style (``db.Model``, ``DeclarativeBase``,
    ``MappedAsDataclass`` — where ``version`` is not a constructor argument —
    ``Mapped[...]`` annotations, attribute keys that differ from column names).
    ``version`` is set by Chrononaut only: assigning it raises
    :class:`~chrononaut.ChrononautException` at flush.

    Class attributes a model may set:

    - ``__chrononaut_hidden__``: columns whose changes make a version but whose
      values are never stored.
    - ``__chrononaut_untracked__``: columns ignored by history entirely.
    - ``__chrononaut_tablename__``: the history table's name.
    - ``__chrononaut_range_index__``: ``True`` adds a GiST index over each history
      row's ``[valid_from, changed)`` for whole-table :func:`~chrononaut.as_of`
      queries far in the past (every history row written costs more; set on the
      root class of a hierarchy).
    """

    __chrononaut_hidden__: ClassVar[Sequence[str]] = ()
    __chrononaut_untracked__: ClassVar[Sequence[str]] = ()
    __chrononaut_tablename__: ClassVar[str | None] = None
    __chrononaut_range_index__: ClassVar[bool] = False
    __history_mapper__: ClassVar[Mapper[Any]]

    @declared_attr
    def version(cls) -> Mapped[int]:
        """The record's version: 0 when inserted, +1 for each tracked or hidden change."""
        return _own_column(  # type: ignore[return-value]
            cls,
            VERSION_KEY,
            sa.Integer,
            nullable=False,
            default=0,
            # Existing rows of a table that becomes Versioned start at version 0.
            server_default=sa.text("0"),
            info={tables.INFO_KEY: "version"},
        )

    @declared_attr
    def valid_from(cls) -> Mapped[Any]:
        """When the record's current version began (set by Chrononaut, never by the
        application; ``NULL`` for rows that predate the column)."""
        return _own_column(  # type: ignore[return-value]
            cls,
            VALID_FROM_KEY,
            sa.DateTime(timezone=True),
            nullable=True,
            # Rows inserted outside the ORM; the ORM sends the flush's own instant.
            server_default=sa.func.now(),
            info={tables.INFO_KEY: VALID_FROM_KEY},
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

        try:
            mapper = sa.inspect(cls, raiseerr=False)
        except sa.orm.exc.UnmappedClassError:
            # AbstractConcreteBase: mapped only when configured, concretely.
            raise ChrononautException(
                f"{cls.__name__} uses concrete table inheritance (AbstractConcreteBase), "
                f"which Versioned does not support: use joined-table or single-table "
                f"inheritance, or make each concrete class a Versioned model of its own"
            ) from None
        if isinstance(mapper, Mapper) and mapper.class_ is cls:
            # Declarative bases that map in __init_subclass__ got here first.
            _configure(mapper)
        else:
            # Metaclass-based declarative (Flask-SQLAlchemy's default db.Model)
            # maps after __init_subclass__; this listener is on this class only.
            event.listen(cls, "after_mapper_constructed", _on_mapper_constructed)

    @classmethod
    def _fetch_current_user_id(cls) -> object:
        """The acting user's id when no :func:`~chrononaut.acting_as` block is active.

        By default Flask-Login's ``current_user.get_id()`` for an authenticated user
        inside a request, else ``None``. Override to use another source.
        """
        from chrononaut._context import flask_actor

        return flask_actor().user_id

    # resolve_actor() asks Flask directly when the model keeps this default.
    _fetch_current_user_id.__func__._chrononaut_default = True  # type: ignore[attr-defined]


def _own_column(cls: Any, name: str, *args: Any, **kwargs: Any) -> sa.Column[Any]:
    """Chrononaut's column ``name``; for a class given its ``Table`` (``__table__``,
    declarative with an imperative table), appended to that table, since
    declarative adds no column to a table it was handed."""
    _refuse_column_named(cls, name)
    column: sa.Column[Any] = sa.Column(name, *args, **kwargs)
    table = cls.__dict__.get("__table__")
    if isinstance(table, sa.Table):
        if name not in table.c:
            table.append_column(column)
        own: sa.Column[Any] = table.c[name]
        return own
    return column


def _refuse_column_named(cls: Any, name: str) -> None:
    """Refuse a column of the model's own *named* ``name`` under another attribute
    key (``mine = Column("version", ...)``), as :func:`_check_own_column` refuses one
    under the key itself; declarative would raise a bare duplicate-column error."""
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            column = getattr(value, "column", value)  # mapped_column() holds a Column
            if isinstance(column, sa.Column) and column.name == name and attr != name:
                if column.info.get(tables.INFO_KEY) == name:
                    continue
                raise ChrononautException(
                    f"{cls.__name__}.{attr} is a column named {name!r}; Versioned adds and "
                    f"sets a {name!r} column itself: give the model's column another name "
                    f"(e.g. Column('{name}_', ...))"
                )


# Declarative reads a declared_attr's return annotation as a field declaration;
# under MappedAsDataclass a field from a mixin that is not a dataclass is refused.
# Without it, ``version`` is a mapped column outside the dataclass (init=False in
# effect), for every declarative style; type checkers still see the annotation.
for _key in tables.MANAGED_KEYS:
    vars(Versioned)[_key].fget.__annotations__.pop("return", None)
