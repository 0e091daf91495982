"""What Chrononaut knows about each ``Versioned`` class — the one internal facade
the rest of the package reads (capture, bulk statements, reading, time travel,
concurrency, maintenance) — and the base class of the generated history classes.

It imports nothing of the other versioning modules but the SQL builders, so any
of them can import it without a cycle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from chrononaut._context import versioning_suppressed
from chrononaut.errors import ChrononautException, HiddenAttributeError, UntrackedAttributeError
from chrononaut.versioning import _statements as statements
from chrononaut.versioning._tables import VALID_FROM_KEY, VERSION_KEY

__all__ = [
    "CLOCK_KEY",
    "DECIDED_KEY",
    "FAST_DONE_KEY",
    "LATE_KEY",
    "META_ATTRIBUTE",
    "OWN_VALID_FROM_KEY",
    "VALID_FROM_KEY",
    "VERSION_KEY",
    "HistoryRecord",
    "TableMap",
    "VersionMeta",
    "as_utc",
    "history_class",
    "joined_descendants",
    "mapped_mappers",
    "meta_of",
    "note_update",
    "source_table",
]

#: The class attribute (in the class's own ``__dict__``) holding its VersionMeta.
META_ATTRIBUTE = "__chrononaut_meta__"


#: ``Session.info`` keys of one flush: ids of the states whose versioning the
#: flush's ``before_flush`` decided (bumped, inserted or deleted), and the states
#: SQLAlchemy then UPDATEd that were not among them (see :func:`note_update`).
DECIDED_KEY = "chrononaut.decided"
LATE_KEY = "chrononaut.late"
#: ids of the records the one-statement path wrote in this flush
FAST_DONE_KEY = "chrononaut.fast_done"


def note_update(mapper: Mapper[Any], connection: Any, state: Any) -> None:
    """``after_update`` of every Versioned mapper (raw): note a record the unit of
    work updated although this flush's ``before_flush`` did not version it. Its
    change was made after Chrononaut's ``before_flush`` listener ran (by a
    ``before_flush`` listener registered after it, a mapper ``before_update``
    listener): it is versioned in ``after_flush``. Sessions not made versioned
    have no ``DECIDED_KEY`` and are left alone."""
    if not state.committed_state:
        return  # nothing changed (the one-statement path commits what it wrote)
    session = state.session
    if session is None:
        return
    info = session.info
    decided = info.get(DECIDED_KEY)
    if decided is None or id(state) in decided:
        return
    done = info.get(FAST_DONE_KEY)
    if done and id(state.obj()) in done:
        return
    info.setdefault(LATE_KEY, []).append(state)


#: ``InstanceState.info`` keys of a new record: the flush's clock (when its
#: ``valid_from`` is SQL that continues an earlier key's ranges), and the
#: ``valid_from`` Chrononaut gave it (an application's own is refused).
CLOCK_KEY = "chrononaut.clock"
OWN_VALID_FROM_KEY = "chrononaut.valid_from"

#: ``Session.info`` key: [(deleted record, its stored values read, the instant its
#: version ended)] of SQLAlchemy's row switches in this flush (see note_switch).
SWITCHED_KEY = "chrononaut.switched"


def note_switch(mapper: Mapper[Any], connection: Any, state: Any) -> None:
    """``before_insert`` of every Versioned mapper (raw): SQLAlchemy's *row switch*.

    A new record whose key is that of a record the flush deletes is written as an
    UPDATE of the row instead of a DELETE and an INSERT. When the key was only
    known once the unit of work copied it in (from a parent's relationship) or
    the deleted record is an orphan the unit of work deleted itself, the flush's
    ``before_flush`` could not see the pair: here, before the UPDATE, the new
    record gets the next version and begins when the deleted one ends, and the
    deleted record's stored values are read for its history row (written in
    ``after_flush``).
    """
    session = state.session
    decided = session.info.get(DECIDED_KEY) if session is not None else None
    obj = state.obj()
    meta = meta_of(type(obj)) if obj is not None else None
    if decided is None or meta is None:
        return
    if versioning_suppressed():
        return
    # The unit of work has copied the key in by now; a record of the identity map
    # with that key is one the flush deletes (else SQLAlchemy's INSERT fails).
    existing = session.identity_map.get(mapper.identity_key_from_instance(obj))
    if existing is None or existing is obj:
        return
    old = sa.inspect(existing)
    old_meta = meta_of(type(existing))
    if old_meta is None:
        return
    wanted = [
        key for key in (*old_meta.tracked, VERSION_KEY, VALID_FROM_KEY) if key not in old.dict
    ]
    known: dict[str, Any] = {}
    if wanted:
        # The row still holds the deleted record's values until this UPDATE.
        cls = old_meta.mapper.class_
        where = [
            getattr(cls, key) == value
            for key, value in zip(old_meta.pk_keys, old.key[1], strict=True)
        ]
        row = connection.execute(
            sa.select(*[getattr(cls, key) for key in wanted]).select_from(cls).where(*where)
        ).first()
        if row is None:
            return  # gone: SQLAlchemy's UPDATE reports the stale write
        known = dict(zip(wanted, row, strict=True))
    stored = old.dict.get(VERSION_KEY, known.get(VERSION_KEY))
    began = old.dict.get(VALID_FROM_KEY, known.get(VALID_FROM_KEY))
    new_began = state.dict.get(VALID_FROM_KEY)
    if isinstance(new_began, sa.ClauseElement):
        # SQL continuing the key's ranges (a re-insert): decided here instead.
        new_began = state.info.get(CLOCK_KEY)
    ended = new_began if began is None or (new_began is not None and new_began > began) else began
    if state.dict.get(VERSION_KEY) != int(stored) + 1:
        setattr(obj, VERSION_KEY, int(stored) + 1)
    if ended is not None and ended is not state.dict.get(VALID_FROM_KEY):
        setattr(obj, VALID_FROM_KEY, ended)
        state.info[OWN_VALID_FROM_KEY] = ended
    if id(old) not in decided:
        decided.add(id(old))
        session.info.setdefault(SWITCHED_KEY, []).append((existing, known, ended))


def own_mapper_listener(fn: Any) -> bool:
    """Whether ``fn`` (from a mapper's dispatch) is one of Chrononaut's own."""
    return fn is note_update or fn is note_switch


def mapped_mappers(reg: sa.orm.registry) -> list[Mapper[Any]]:
    """The mappers of registry ``reg``.

    ``registry.mappers`` raises for a class whose declarative scan failed (a
    model refused at class definition stays registered, unmapped); those are
    skipped, so one refused model does not break every later flush.
    """
    try:
        return list(reg.mappers)
    except sa.orm.exc.UnmappedClassError:
        managers = getattr(reg, "_managers", ())
        return [manager.mapper for manager in list(managers) if manager.is_mapped]


def as_utc(value: object, name: str) -> dt.datetime:
    """``value`` as an aware datetime; naive ones are taken as UTC."""
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
        # Naive datetimes are taken as UTC, the way history stores time.
        return value.replace(tzinfo=dt.timezone.utc)
    return value


@dataclass
class TableMap:
    """How one source table's columns land in its history table."""

    history: sa.Table
    #: (attribute key on the model, column key in the history table)
    columns: list[tuple[str, str]] = field(default_factory=list)
    #: attribute keys of the primary-key columns, in history-table order
    pk: list[tuple[str, str]] = field(default_factory=list)
    base: bool = False


@dataclass(eq=False)
class VersionMeta:
    """What Chrononaut knows about one ``Versioned`` class (computed once)."""

    mapper: Mapper[Any]
    tracked: tuple[str, ...]
    hidden: frozenset[str]
    untracked: frozenset[str]
    tables: list[TableMap]
    pk_keys: tuple[str, ...]
    history_mapper: Mapper[Any]
    #: the ``version`` column (on the root table of the hierarchy)
    version_column: sa.Column[Any]
    #: attribute key -> the column it maps to in its own table
    columns: dict[str, sa.Column[Any]]

    def __post_init__(self) -> None:
        #: attribute keys whose change makes a new version
        self.watched: frozenset[str] = frozenset(self.tracked) | self.hidden
        self._fast_statements: dict[tuple[tuple[str, ...], bool, bool, bool], sa.Update] = {}
        self._onupdate = False
        self._onupdate_checked = -1
        self._settable: frozenset[str] | None = None
        self._onupdate_watched: tuple[str, ...] | None = None
        self._late_bump: sa.Update | None = None
        self._integer_keys: tuple[bool, ...] | None = None

    def fast_path_possible(self) -> bool:
        """Whether updates of this class may use the one-statement path.

        Not for joined inheritance (several tables), tables with ``onupdate`` /
        ``server_onupdate`` columns (SQLAlchemy computes those), or mappers with
        ``before_update`` / ``after_update`` listeners (they expect SQLAlchemy's
        UPDATE). Listeners can be added at any time, so this is checked per flush.
        """
        if len(self.tables) != 1 or self._has_onupdate:
            return False
        dispatch = self.mapper.dispatch
        return not (
            any(not own_mapper_listener(fn) for fn in dispatch.before_update)
            or any(not own_mapper_listener(fn) for fn in dispatch.after_update)
        )

    def changed_by_listeners(self) -> bool:
        """Whether mapper ``before_update`` listeners of the application's may change
        this class's records during the flush (after Chrononaut's ``before_flush``)."""
        return any(not own_mapper_listener(fn) for fn in self.mapper.dispatch.before_update)

    @property
    def onupdate_watched(self) -> tuple[str, ...]:
        """Tracked and hidden attribute keys whose columns change on every UPDATE of
        the row (``onupdate`` / ``server_onupdate``): any change of the record is a
        change of those."""
        if self._onupdate_watched is None:
            self._onupdate_watched = tuple(
                key
                for key, column in self.columns.items()
                if key in self.watched
                and (column.onupdate is not None or column.server_onupdate is not None)
            )
        return self._onupdate_watched

    def fast_settable_keys(self) -> frozenset[str]:
        """Attribute keys a one-statement UPDATE may set and then mark committed.

        Column attributes of plain scalar values, not of the primary key: for
        those, what ``set_committed_value()`` does is storing the value and
        committing the key, which the one-statement path does for several keys
        at once. Computed once (the columns of a class do not change).
        """
        if self._settable is None:
            manager = self.mapper.class_manager
            keys = set()
            for key in self.columns:
                if key in self.pk_keys or key not in manager:
                    continue
                impl = manager[key].impl
                if getattr(impl, "collection", True) is False and not getattr(
                    impl, "uses_objects", True
                ):
                    keys.add(key)
            self._settable = frozenset(keys)
        return self._settable

    @property
    def _has_onupdate(self) -> bool:
        # Single-table subclasses may add columns later: recount when the table grows.
        table = self.version_column.table
        count = len(table.c)
        if self._onupdate_checked != count:
            self._onupdate = any(
                c.onupdate is not None or c.server_onupdate is not None for c in table.c
            )
            self._onupdate_checked = count
        return self._onupdate

    def late_bump_statement(self) -> sa.Update:
        """``UPDATE <root> SET version = :v + 1, valid_from = :valid_from WHERE <key>
        AND version = :v``: the bump of a record changed after ``before_flush``."""
        if self._late_bump is None:
            table = self.version_column.table
            key = [
                column == sa.bindparam(f"chrononaut_k{i}")
                for i, column in enumerate(self.mapper.primary_key)
            ]
            old = sa.bindparam("chrononaut_v", type_=self.version_column.type)
            self._late_bump = (
                sa.update(table)
                .where(*key, self.version_column == old)
                .values(
                    {
                        self.version_column.key: old + 1,
                        table.c[VALID_FROM_KEY].key: sa.bindparam(
                            "chrononaut_valid_from", type_=table.c[VALID_FROM_KEY].type
                        ),
                    }
                )
            )
        return self._late_bump

    def fast_update_statement(
        self,
        keys: tuple[str, ...],
        many: bool,
        shared_info: bool = False,
        text_ints: bool = False,
    ) -> sa.Update:
        """The one-statement UPDATE + history INSERT for records setting ``keys``.

        ``many=False``: one record, parameters ``chrononaut_k<i>`` (primary key),
        ``chrononaut_v`` (old version), ``chrononaut_s<i>`` (new values),
        ``chrononaut_ci`` (change_info) and ``chrononaut_changed`` (prefixed: a
        bind parameter named like a column of the table is refused by SQLAlchemy).
        ``many=True``: the same names carry arrays, one element per record, that
        ``unnest`` turns into rows; the SQL text does not depend on the number of
        records, so it is compiled (and, with psycopg 3, prepared) once.
        ``shared_info=True`` (with ``many``): ``chrononaut_ci`` is one document for all
        records. ``text_ints=True`` (with ``many``): ``chrononaut_v`` and the key
        arrays of integer columns are the arrays' text forms (``'{1,2}'``).
        Built once per (keys, many, shared_info, text_ints) and reused.
        """
        cache_key = (keys, many, shared_info, text_ints)
        statement = self._fast_statements.get(cache_key)
        if statement is None:
            statement = statements.fast_update(self, keys, many, shared_info, text_ints)
            self._fast_statements[cache_key] = statement
        return statement

    def integer_keys(self) -> tuple[bool, ...]:
        """For each primary-key column, whether its values are plain ints."""
        if self._integer_keys is None:
            self._integer_keys = tuple(
                statements.is_integer(self.columns[key].type) for key in self.pk_keys
            )
        return self._integer_keys

    def arrays_supported(self, keys: tuple[str, ...]) -> bool:
        """Whether the columns of ``keys`` (and the key) can travel as arrays: not
        ARRAY columns (nor decorators of them). The values are checked too, per
        flush: see :func:`array_safe_values`."""
        names = (*self.pk_keys, *keys)
        return not any(_array_type(self.columns[k].type) for k in names)


def _array_type(type_: Any) -> bool:
    if isinstance(type_, sa.TypeDecorator):
        type_ = type_.impl_instance
    return isinstance(type_, sa.ARRAY)


def array_safe_values(values: list[Any]) -> bool:
    """Whether values can be the elements of one array parameter: a list or tuple
    among them (a JSON array, a pickled list, a decorated type's list) would be
    read as one more dimension of the array and spread across the rows."""
    return not any(isinstance(value, (list, tuple)) for value in values)


class HistoryRecord:
    """Base of the generated history classes: read-only snapshots of a record.

    Every history record has the tracked attributes of its model plus
    ``version`` (the version this snapshot was), ``changed`` (when it stopped
    being current, aware UTC) and ``change_info`` (who, why; SPEC §3).
    Reading a hidden attribute raises :class:`~chrononaut.HiddenAttributeError`,
    an untracked one :class:`~chrononaut.UntrackedAttributeError`.
    """

    __chrononaut_model__: ClassVar[type[Any]]
    __chrononaut_hidden_keys__: ClassVar[frozenset[str]] = frozenset()
    __chrononaut_untracked_keys__: ClassVar[frozenset[str]] = frozenset()

    version: int
    valid_from: Any
    changed: Any
    change_info: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        cls = type(self)
        if name in cls.__chrononaut_hidden_keys__:
            raise HiddenAttributeError(
                f"{name!r} is hidden (__chrononaut_hidden__ of "
                f"{cls.__chrononaut_model__.__name__}): its values are never stored in "
                f"history; read the live record instead"
            )
        if name in cls.__chrononaut_untracked_keys__:
            raise UntrackedAttributeError(
                f"{name!r} is untracked (__chrononaut_untracked__ of "
                f"{cls.__chrononaut_model__.__name__}): history does not record it; read "
                f"the live record instead"
            )
        raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_sa_"):
            object.__setattr__(self, name, value)
            return
        raise ChrononautException(
            f"{type(self).__name__} records are read-only history; change the live "
            f"{type(self).__chrononaut_model__.__name__} record instead (restore() copies "
            f"a version back)"
        )

    def __delattr__(self, name: str) -> None:
        raise ChrononautException(
            f"{type(self).__name__} records are read-only history; change the live "
            f"{type(self).__chrononaut_model__.__name__} record instead (restore() copies "
            f"a version back)"
        )

    def __repr__(self) -> str:
        model = type(self).__chrononaut_model__.__name__
        return f"<{model} history version={self.__dict__.get('version')!r}>"


def meta_of(cls: type[Any]) -> VersionMeta | None:
    """The :class:`VersionMeta` of a Versioned class (``None`` for other classes)."""
    meta = cls.__dict__.get(META_ATTRIBUTE)
    return meta if isinstance(meta, VersionMeta) else None


def joined_descendants(meta: VersionMeta) -> list[tuple[VersionMeta, TableMap]]:
    """History tables of joined-table subclasses below ``meta``'s class that
    ``meta``'s own history does not cover, each with the subclass that owns it.

    ``as_of(Base, at)`` loads their columns too; a bulk statement on a base class
    writes their rows for the subclass rows it changes or deletes.
    """
    known = {tmap.history for tmap in meta.tables}
    found: list[tuple[VersionMeta, TableMap]] = []
    for mapper in meta.mapper.self_and_descendants:
        sub = meta_of(mapper.class_)
        if sub is None or sub is meta:
            continue
        for tmap in sub.tables:
            if tmap.history not in known:
                known.add(tmap.history)
                found.append((sub, tmap))
    return found


def copied_keys(tmap: TableMap, source: sa.Table) -> list[str]:
    """Keys of the columns copied from the model table ``source`` into
    ``tmap.history``: the map's own, then those that single-table subclasses add to
    the same tables (a statement on a class changes and deletes its subclasses'
    rows too; their history rows must keep those columns)."""
    keys = [col_key for _, col_key in tmap.columns]
    own = {*keys, VERSION_KEY, VALID_FROM_KEY, "changed", "change_info"}
    keys.extend(c.key for c in tmap.history.c if c.key not in own and c.key in source.c)
    return keys


def history_column_keys(meta: VersionMeta) -> list[str]:
    """:func:`copied_keys` of ``meta``'s base history table."""
    return copied_keys(meta.tables[0], meta.version_column.table)


def source_table(meta: VersionMeta, tmap: TableMap) -> sa.Table:
    """The model table of ``meta``'s class whose history ``tmap.history`` is."""
    mapper = meta.mapper
    for table in mapper.tables:
        if not isinstance(table, sa.Table):
            continue
        try:
            if all(
                col_key in table.c and mapper.get_property_by_column(table.c[col_key]).key == key
                for key, col_key in tmap.columns
            ):
                return table
        except Exception:
            continue
    raise LookupError(tmap.history.name)  # pragma: no cover - built from these tables


def history_class(model: type[Any]) -> type[HistoryRecord]:
    """The mapped history class of a ``Versioned`` model.

    :param model: a Versioned model class (or a record of one).
    :raises TypeError: when ``model`` is not Versioned.
    """
    cls = model if isinstance(model, type) else type(model)
    meta = meta_of(cls)
    if meta is None:
        raise TypeError(f"{cls.__name__} is not a mapped Versioned model")
    history: type[HistoryRecord] = meta.history_mapper.class_
    return history
