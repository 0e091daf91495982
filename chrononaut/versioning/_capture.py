"""History capture: turning flushes and ORM bulk statements into history rows.

One flush writes at most one INSERT per history table (an executemany), emitted in
``after_flush``: *after* SQLAlchemy's version-checked UPDATE/DELETE statements, so a
stale write fails as a stale write and never as a duplicate history key.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import MANYTOONE, ONETOMANY, Mapper, ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_dict, instance_state, set_committed_value
from sqlalchemy.orm.base import NO_RAISE, NO_VALUE, PASSIVE_NO_INITIALIZE, PASSIVE_OFF
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.orm.state import InstanceState

from chrononaut._context import own_listener, versioning_suppressed
from chrononaut.errors import ChrononautException
from chrononaut.versioning._bulk import run_bulk
from chrononaut.versioning._change_info import (
    ChangeInfoBuilder,
    Settings,
    any_appended,
    consume_appended,
)
from chrononaut.versioning._concurrency import (
    CANDIDATES_KEY,
    any_expected_version,
    check_expected_version,
    forget_expected_version,
)
from chrononaut.versioning._history import remember_session
from chrononaut.versioning._meta import (
    CLOCK_KEY,
    DECIDED_KEY,
    FAST_DONE_KEY,
    LATE_KEY,
    OWN_VALID_FROM_KEY,
    SWITCHED_KEY,
    VALID_FROM_KEY,
    VERSION_KEY,
    VersionMeta,
    array_safe_values,
    mapped_mappers,
    meta_of,
)
from chrononaut.versioning._tables import MANAGED_KEYS
from chrononaut.versioning._writes import (
    _Batch,
    _execute_lean,
    _now,
    _require_context,
    ends_at,
    next_valid_from,
    next_version,
    reinserted,
)

__all__ = ["Capture"]

PENDING_KEY = "chrononaut.pending_history"
# Session.info: id(state) -> old values read in before_flush (set while expired)
_KNOWN_KEY = "chrononaut.known_values"
_BULK_GUARD = "chrononaut_bulk_internal"


def _fast_eligible(
    settable: frozenset[str], committed: dict[str, Any], dict_: dict[str, Any]
) -> bool:
    """Whether a dirty record's change can go through the one-statement path
    (``settable``: ``VersionMeta.fast_settable_keys()`` of its class)."""
    if not settable.issuperset(committed):
        # Relationship changes and key changes need SQLAlchemy's ordering.
        return False
    for key in committed:
        if isinstance(dict_.get(key), sa.ClauseElement):
            return False  # SQL expressions are evaluated by SQLAlchemy's UPDATE
    return True


class _FastKeys(dict[VersionMeta, frozenset[str]]):
    """Per flush: each class's keys the one-statement path may set (empty when the
    path is closed to the class). Listeners can be added between flushes, so this
    is decided once per flush and class, not once per record nor for good."""

    def __missing__(self, meta: VersionMeta) -> frozenset[str]:
        keys = meta.fast_settable_keys() if meta.fast_path_possible() else frozenset()
        self[meta] = keys
        return keys


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
        #: (class, changed keys) -> [(record, state, its dict, old version, change_info)]
        self.groups: dict[tuple[Any, tuple[str, ...]], list[_Member]] = {}
        # committed_state keys as iterated -> the sorted changed keys: most records
        # of a flush change the same columns
        self._sorted: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._appended = True
        self._expected = True

    def __bool__(self) -> bool:
        return bool(self.groups)

    def add(
        self,
        meta: VersionMeta,
        obj: Any,
        state: InstanceState[Any],
        dict_: dict[str, Any],
        old_version: int,
        info: dict[str, Any],
    ) -> None:
        seen = tuple(state.committed_state)
        keys = self._sorted.get(seen)
        if keys is None:
            keys = self._sorted[seen] = tuple(sorted(key for key in seen if key != VERSION_KEY))
        self.groups.setdefault((meta, keys), []).append((obj, state, dict_, old_version, info))

    def execute(self, session: Session, changed_at: dt.datetime) -> set[int]:
        """Run the statements; return ids of the records written."""
        done: set[int] = set()
        # Nothing is appended or declared during a flush: looked up once, not per record.
        self._appended = any_appended()
        self._expected = any_expected_version()
        for (meta, keys), members in self.groups.items():
            connection = session.connection(bind_arguments={"mapper": meta.mapper})
            # The keys each written record commits (once per group, not per record).
            commit = (*keys, VERSION_KEY, VALID_FROM_KEY), (*keys, VERSION_KEY)
            if len(members) > 1 and meta.arrays_supported(keys):
                for start in range(0, len(members), _FAST_CHUNK):
                    chunk = members[start : start + _FAST_CHUNK]
                    written = self._many(connection, meta, keys, chunk, changed_at)
                    if written is None:  # values that can't travel as arrays
                        written = [
                            self._one(connection, meta, keys, member, changed_at)
                            for member in chunk
                        ]
                    for member, was_written in zip(chunk, written, strict=True):
                        if was_written:
                            done.add(self._written(keys, commit, member, changed_at))
            else:
                for member in members:
                    if self._one(connection, meta, keys, member, changed_at):
                        done.add(self._written(keys, commit, member, changed_at))
        return done

    @staticmethod
    def _one(
        connection: sa.Connection,
        meta: VersionMeta,
        keys: tuple[str, ...],
        member: _Member,
        changed_at: dt.datetime,
    ) -> bool:
        _, state, dict_, old_version, info = member
        params: dict[str, Any] = {
            "chrononaut_changed": changed_at,
            "chrononaut_v": old_version,
            "chrononaut_ci": info,
        }
        for i, value in enumerate(_key_of(state)):
            params[f"chrononaut_k{i}"] = value
        for i, key in enumerate(keys):
            params[f"chrononaut_s{i}"] = dict_.get(key)
        statement = meta.fast_update_statement(keys, many=False)
        result = _execute_lean(connection, statement, params)
        # 0 rows: the version moved on; SQLAlchemy's UPDATE will report it as stale.
        return result.rowcount == 1

    @staticmethod
    def _many(
        connection: sa.Connection,
        meta: VersionMeta,
        keys: tuple[str, ...],
        chunk: list[_Member],
        changed_at: dt.datetime,
    ) -> list[bool] | None:
        """Run one statement for ``chunk``; whether each member's row was written
        (``None``: nothing sent, its values can't travel as arrays)."""
        # psycopg 3 dumps a list element by element in Python; integer arrays go
        # as their text form instead, joined in C (psycopg2 adapts lists in C).
        text_ints = connection.dialect.driver == "psycopg"
        params: dict[str, Any] = {"chrononaut_changed": changed_at}
        versions = [member[3] for member in chunk]
        params["chrononaut_v"] = _int_array_text(versions) if text_ints else versions
        infos = [member[4] for member in chunk]
        first = infos[0]
        # Rows without parts of their own share one document (ChangeInfoBuilder).
        shared = all(info is first or info == first for info in infos)
        params["chrononaut_ci"] = first if shared else infos
        key_values = [_key_of(member[1]) for member in chunk]
        integer_keys = meta.integer_keys()
        for i in range(len(meta.pk_keys)):
            column = [pk[i] for pk in key_values]
            if text_ints and integer_keys[i]:
                params[f"chrononaut_k{i}"] = _int_array_text(column)
            else:
                params[f"chrononaut_k{i}"] = column
        dicts = [member[2] for member in chunk]
        for i, key in enumerate(keys):
            values = [dict_.get(key) for dict_ in dicts]
            if not array_safe_values(values):
                return None
            params[f"chrononaut_s{i}"] = values
        statement = meta.fast_update_statement(
            keys, many=True, shared_info=shared, text_ints=text_ints
        )
        written = {tuple(row) for row in connection.execute(statement, params).all()}
        return [key in written for key in key_values]

    def _written(
        self,
        keys: tuple[str, ...],
        commit: tuple[tuple[str, ...], tuple[str, ...]],
        member: _Member,
        changed_at: dt.datetime,
    ) -> int:
        """Tell the session the record's row now holds its values: no UPDATE left.
        ``commit``: the keys to commit with ``valid_from`` loaded, and without."""
        obj, state, dict_, old_version, _ = member
        # What set_committed_value() does for a column attribute (the only kind in
        # ``keys``: VersionMeta.fast_settable_keys), for all keys at once: store
        # the value, then one InstanceState._commit() of them (drops their
        # history, expiry and loader callables; no events).
        for key in keys:
            if key not in dict_:
                dict_[key] = None  # deleted (del record.attr): the row holds NULL
        dict_[VERSION_KEY] = old_version + 1
        # The statement set valid_from = greatest(changed, valid_from), the same
        # computation as here from the value the version check vouches for.
        began = dict_.get(VALID_FROM_KEY, _NOT_LOADED)
        if began is not _NOT_LOADED:
            dict_[VALID_FROM_KEY] = (
                began if began is not None and began > changed_at else changed_at
            )
            state._commit(dict_, commit[0])
        else:
            state._commit(dict_, commit[1])
            state._expire_attributes(dict_, [VALID_FROM_KEY])
        if self._appended:
            consume_appended(state)
        if self._expected:
            forget_expected_version(state)
        return id(obj)


def _int_array_text(values: list[int]) -> str:
    """PostgreSQL's text form of an integer array (versions, integer keys: ints
    as loaded, never None)."""
    return "{" + ",".join(map(str, values)) + "}"


#: A fast-path member: (record, state, its dict, old version, change_info).
_Member = tuple[Any, InstanceState[Any], dict[str, Any], int, dict[str, Any]]
_NOT_LOADED = object()


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
        if value is None or VALID_FROM_KEY not in state.committed_state:
            # Unset, or carried over from a loaded row (make_transient()):
            # Chrononaut sets it for the new row.
            return
    if value is state.info.get(OWN_VALID_FROM_KEY):
        return  # ours, from an earlier attempt at this flush
    raise ChrononautException(
        f"{type(obj).__name__}.valid_from is set by Chrononaut (when the record's "
        f"current version began); don't assign it"
    )


def _set_valid_from(obj: Any, state: InstanceState[Any], value: dt.datetime) -> None:
    state.info[OWN_VALID_FROM_KEY] = value
    setattr(obj, VALID_FROM_KEY, value)


def _old_valid_from(
    obj: Any, state: InstanceState[Any], known: dict[str, Any]
) -> dt.datetime | None:
    """``valid_from`` as the row holds it before this flush (from ``known``, the
    values read for this flush, when the session does not hold it)."""
    committed = state.committed_state
    if VALID_FROM_KEY in committed:
        old = committed[VALID_FROM_KEY]
        if old is not NO_VALUE:
            return old  # type: ignore[no-any-return]
    if VALID_FROM_KEY in state.dict:
        return state.dict[VALID_FROM_KEY]  # type: ignore[no-any-return]
    if VALID_FROM_KEY in known:
        return known[VALID_FROM_KEY]  # type: ignore[no-any-return]
    return getattr(obj, VALID_FROM_KEY)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Relation:
    """A relationship that sets foreign-key columns of a Versioned record."""

    key: str
    #: True: the record holding the relationship holds the key columns (many-to-one);
    #: False: the related objects of the collection do (one-to-many)
    many_to_one: bool
    #: (attribute key of the key column on the side holding it, attribute key of
    #: the column it copies on the other side)
    pairs: tuple[tuple[str, str], ...]
    #: removing a child deletes it (delete-orphan): the delete writes its history
    orphans_deleted: bool
    #: deleting the parent sets the children's key columns to NULL (one-to-many
    #: without delete cascade or passive_deletes="all"); False, True (the loaded
    #: children) or "load" (SQLAlchemy loads the collection to do it)
    nulls_on_delete: bool | str = False


_relations_cache: weakref.WeakKeyDictionary[Mapper[Any], dict[str, _Relation]] = (
    weakref.WeakKeyDictionary()
)


def _relations(mapper: Mapper[Any]) -> dict[str, _Relation]:
    """The relationships of ``mapper`` that can change a Versioned record's key columns."""
    found = _relations_cache.get(mapper)
    if found is not None:
        return found
    found = {}
    own = meta_of(mapper.class_)
    for prop in mapper.relationships:
        if prop.viewonly or prop.secondary is not None:
            continue  # many-to-many rows live in the association table
        pairs: list[tuple[str, str]] = []
        other = prop.mapper
        try:
            if prop.direction is MANYTOONE:
                if own is None:
                    continue
                for local, remote in prop.local_remote_pairs or ():
                    pairs.append(
                        (
                            mapper.get_property_by_column(local).key,
                            other.get_property_by_column(remote).key,
                        )
                    )
                if not any(key in own.watched for key, _ in pairs):
                    continue
            elif prop.direction is ONETOMANY:
                if not any(meta_of(m.class_) is not None for m in other.self_and_descendants):
                    continue
                for local, remote in prop.local_remote_pairs or ():
                    pairs.append(
                        (
                            other.get_property_by_column(remote).key,
                            mapper.get_property_by_column(local).key,
                        )
                    )
            else:
                continue
        except UnmappedColumnError:
            continue  # a join condition over columns that are not attributes
        nulls: bool | str = False
        if (
            prop.direction is ONETOMANY
            and not prop.cascade.delete
            # Dynamic and write-only collections are not held in the session: the
            # unit of work nulls their children by a query of its own.
            and prop.lazy not in ("dynamic", "write_only")
        ):
            # As OneToManyDP.process_deletes: passive_deletes=True still nulls the
            # loaded children, "all" none.
            if prop.passive_deletes is False:
                nulls = "load"
            else:
                nulls = prop.passive_deletes != "all"
        found[prop.key] = _Relation(
            prop.key,
            prop.direction is MANYTOONE,
            tuple(pairs),
            prop.cascade.delete_orphan,
            nulls,
        )
    _relations_cache[mapper] = found
    return found


_UNKNOWN = object()


def _insert_key(obj: Any, meta: VersionMeta) -> tuple[Any, ...] | None:
    """The primary key a new record will be inserted with, when Python knows it
    before the flush: its attributes, else a constant column default, else the key
    of the persistent object a many-to-one relationship points to (the unit of
    work copies it into the key columns). ``None``: generated (by the database, a
    callable default, a pending parent): a new key, which can't collide with the
    history of a deleted one."""
    state = instance_state(obj)
    dict_ = state.dict
    values: list[Any] = []
    from_relationships: dict[str, Any] | None = None
    for key in meta.pk_keys:
        value = dict_.get(key)
        if value is None:
            default = meta.columns[key].default
            if isinstance(default, sa.ColumnDefault) and default.is_scalar:
                value = default.arg
        if value is None:
            if from_relationships is None:
                from_relationships = _keys_from_targets(obj, state)
            value = from_relationships.get(key)
        if value is None or value is _UNKNOWN:
            return None
        values.append(value)
    return tuple(values)


def _keys_from_targets(obj: Any, state: InstanceState[Any]) -> dict[str, Any]:
    """Key column values the many-to-one relationships of a new record will set."""
    found: dict[str, Any] = {}
    for relation in _relations(state.mapper).values():
        if not relation.many_to_one:
            continue
        target = state.dict.get(relation.key)
        if target is None:
            continue
        for (local, _), value in zip(
            relation.pairs, _target_values(target, relation.pairs), strict=True
        ):
            found[local] = value
    return found


def settle_version(mapper: Any, connection: Any, target: Any) -> None:
    """``after_insert`` / ``after_update`` of a Versioned model's mapper: a record
    of a model with a ``post_update`` relationship holds the version its row now
    has as its committed value. The post_update UPDATE that follows in the same
    flush checks the committed value (SQLAlchemy 2.0: still the one from before
    the flush, or none for an insert)."""
    if not _has_post_update(mapper):
        return
    version = instance_state(target).dict.get(VERSION_KEY)
    if version is not None and not isinstance(version, sa.ClauseElement):
        set_committed_value(target, VERSION_KEY, version)


def _replacing(meta: VersionMeta, key: tuple[Any, ...], replaced: dict[Any, int]) -> int | None:
    """The version of a new record that replaces one this flush deletes (the same
    key: SQLAlchemy's row switch), else ``None``. ``replaced``: identity key ->
    version of the records the flush deletes."""
    if not replaced:
        return None
    identity = meta.mapper.identity_key_from_primary_key(key)
    return replaced[identity] + 1 if identity in replaced else None


_post_update_cache: weakref.WeakKeyDictionary[Mapper[Any], bool] = weakref.WeakKeyDictionary()


def _has_post_update(mapper: Mapper[Any]) -> bool:
    """Whether a ``post_update`` UPDATE may follow writes of ``mapper``'s rows in a
    flush: a post_update relationship of its own, or a one-to-many of another
    class whose children these rows are. Such mappers get :func:`settle_version`
    (registered on them when first seen, so other models' writes pay nothing)."""
    found = _post_update_cache.get(mapper)
    if found is None:
        found = any(p.post_update for p in mapper.relationships) or any(
            prop.post_update and prop.direction is ONETOMANY and mapper.isa(prop.mapper)
            for other in mapped_mappers(mapper.registry)
            for prop in other.relationships
        )
        _post_update_cache[mapper] = found
        if found:
            event.listen(mapper, "after_insert", settle_version)
            event.listen(mapper, "after_update", settle_version)
    return found


def _members(collection: Any) -> Iterable[Any]:
    """The objects of a relationship collection (list, set, or dict values)."""
    return collection.values() if isinstance(collection, dict) else collection


def _target_values(target: Any, pairs: tuple[tuple[str, str], ...]) -> list[Any]:
    """What the key columns will hold when they reference ``target`` (or ``None``)."""
    if target is None:
        return [None] * len(pairs)
    tstate = instance_state(target)
    values: list[Any] = []
    for _, remote in pairs:
        if tstate.key is not None:
            value = tstate.dict.get(remote, NO_VALUE)
            if value is NO_VALUE:
                # An expired target: its key is in its identity, no need to load it.
                mapper = tstate.mapper
                pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
                if remote in pk_keys:
                    value = tstate.key[1][pk_keys.index(remote)]
                else:
                    value = getattr(target, remote)
            values.append(value)
        else:
            value = tstate.dict.get(remote)
            # A pending object's generated key is only known after its INSERT.
            values.append(_UNKNOWN if value is None else value)
    return values


def _key_changes(obj: Any, pairs: tuple[tuple[str, str], ...], new: list[Any]) -> dict[str, Any]:
    """The tracked key columns of ``obj`` that may change to ``new`` (attribute key ->
    new value); a column whose old value is not loaded is decided once it is."""
    state = instance_state(obj)
    committed = state.committed_state
    dict_ = state.dict
    meta = meta_of(type(obj))
    if meta is None:
        return {}
    changed: dict[str, Any] = {}
    for (local, _), value in zip(pairs, new, strict=True):
        if local not in meta.watched:
            continue
        old = committed.get(local, NO_VALUE)
        if old is NO_VALUE:
            old = dict_.get(local, NO_VALUE)
        if value is _UNKNOWN or old is NO_VALUE or old != value:
            changed[local] = value
    return changed


def _relationship_changes(
    dirty: Iterable[Any], new: Any, deleted: Any, orphans: list[Any]
) -> dict[int, tuple[Any, dict[str, Any]]]:
    """Versioned records whose tracked key columns this flush may change through a
    relationship: id -> (record, {attribute key: new value}).

    SQLAlchemy copies a related object's key into the columns only during the
    flush, after ``before_flush``; the values are computed here from the related
    objects, the way the unit of work will (a pending object's generated key is
    not known yet, but it differs from any stored one: ``_UNKNOWN``). Versioned
    children removed from a delete-orphan collection that the flush will delete
    are appended to ``orphans``: their delete writes a history row too.
    """
    found: dict[int, tuple[Any, dict[str, Any]]] = {}
    gone = {id(o) for o in deleted} | {id(o) for o in new}
    # id(child) -> (child, pairs, new key values); being added to a collection wins
    # over being removed from another one
    # Keyed by child and key columns: one child may have several foreign keys
    # that different relationships set.
    moved: dict[tuple[int, Any], tuple[Any, tuple[tuple[str, str], ...], list[Any]]] = {}
    orphaned: dict[int, Any] = {}
    by_class: dict[type[Any], dict[str, _Relation]] = {}
    for obj in (*dirty, *new):
        cls = type(obj)
        relations = by_class.get(cls)
        if relations is None:
            relations = by_class[cls] = _relations(instance_state(obj).mapper)
        if not relations:
            continue  # most flushes: one dict lookup per record
        state = instance_state(obj)
        committed = state.committed_state
        for key, relation in relations.items():
            if key not in committed:
                continue
            if relation.many_to_one:
                if id(obj) in gone:
                    continue
                target = state.dict.get(key)
                values = _target_values(target, relation.pairs)
                added = (
                    state.manager[key]
                    .impl.get_history(state, state.dict, PASSIVE_NO_INITIALIZE)
                    .added
                )
                if added:
                    # The unit of work copies the new target's key over any
                    # assignment to the key columns themselves: decide on that.
                    for (local, _), value in zip(relation.pairs, values, strict=True):
                        if value is not _UNKNOWN and local in committed:
                            state.dict[local] = value
                changed = _key_changes(obj, relation.pairs, values)
                if changed:
                    found.setdefault(id(obj), (obj, {}))[1].update(changed)
                continue
            history = state.manager[key].impl.get_history(state, state.dict, PASSIVE_NO_INITIALIZE)
            for child in history.deleted or ():
                if child is None or id(child) in gone:
                    continue
                if relation.orphans_deleted:
                    orphaned[id(child)] = child
                    continue
                moved.setdefault(
                    (id(child), relation.pairs),
                    (child, relation.pairs, [None] * len(relation.pairs)),
                )
            for child in history.added or ():
                if child is None or id(child) in gone:
                    continue
                moved[(id(child), relation.pairs)] = (
                    child,
                    relation.pairs,
                    _target_values(obj, relation.pairs),
                )
    for obj in deleted:
        # Deleting a parent sets the key columns of its remaining children to NULL.
        cls = type(obj)
        relations = by_class.get(cls)
        if relations is None:
            relations = by_class[cls] = _relations(instance_state(obj).mapper)
        for key, relation in relations.items():
            if relation.many_to_one or not relation.nulls_on_delete:
                continue
            state = instance_state(obj)
            if key not in state.dict and not (
                relation.nulls_on_delete == "load" and state.key is not None
            ):
                continue
            # Loaded as the unit of work loads it (lazy="raise" does not apply).
            history = state.manager[key].impl.get_history(state, state.dict, PASSIVE_OFF | NO_RAISE)
            for child in (*history.unchanged, *history.added, *history.deleted):
                if child is None or id(child) in gone:
                    continue
                moved.setdefault(
                    (id(child), relation.pairs),
                    (child, relation.pairs, [None] * len(relation.pairs)),
                )
    moved_ids = {id(child) for child, _, _ in moved.values()}
    for child in orphaned.values():
        cstate = instance_state(child)
        if cstate.key is None or meta_of(type(child)) is None or id(child) in moved_ids:
            continue
        # The unit of work deletes it when no delete-orphan parent holds it any more.
        if cstate.mapper._is_orphan(cstate):
            orphans.append(child)
    for child, pairs, values in moved.values():
        if instance_state(child).key is None or meta_of(type(child)) is None:
            continue
        changed = _key_changes(child, pairs, values)
        if changed:
            found.setdefault(id(child), (child, {}))[1].update(changed)
    return found


@dataclass
class _Pending:
    """A changed or deleted record for the general path (history row after the flush)."""

    obj: Any
    meta: VersionMeta
    state: InstanceState[Any]
    changed_tracked: list[str]
    changed_hidden: list[str]
    #: changed attributes whose old value the session does not hold
    unknown: list[str]
    #: key columns a relationship sets: attribute key -> new value (or _UNKNOWN)
    via: dict[str, Any] | None
    deleted: bool
    #: whether it may change anything versioned (False: only checked for staleness)
    changes: bool = False
    #: whether it may take the one-statement path
    fast: bool = False


def _restore_key(obj: Any, meta: VersionMeta, state: InstanceState[Any]) -> None:
    """Put an expired record's primary key back from its identity: the unit of
    work needs it for its statements, and would otherwise load it per record."""
    if state.key is None:
        return
    for key, value in zip(meta.pk_keys, state.key[1], strict=True):
        if key not in state.dict:
            set_committed_value(obj, key, value)


def _same(state: InstanceState[Any], key: str, old: Any, new: Any) -> bool:
    """Whether ``new`` is no change from ``old`` for attribute ``key``: SQLAlchemy's
    comparison, and NaN replaced by NaN (PostgreSQL holds them equal, as bulk
    statements compare with IS DISTINCT FROM; Python's ``==`` says otherwise)."""
    if state.manager[key].impl.is_equal(old, new):
        return True
    return isinstance(old, float) and isinstance(new, float) and old != old and new != new


def _column_changed(state: InstanceState[Any], meta: VersionMeta) -> bool:
    """Whether the flush will UPDATE ``state``'s row: a column attribute changed."""
    committed = state.committed_state
    dict_ = state.dict
    for key in committed:
        if key not in meta.columns:
            continue
        old = committed[key]
        if old is NO_VALUE or not _same(state, key, old, dict_.get(key)):
            return True
    return False


def _want(
    loads: dict[VersionMeta, dict[int, tuple[Any, set[str]]]],
    meta: VersionMeta,
    obj: Any,
    keys: set[str],
) -> None:
    entry = loads.setdefault(meta, {}).setdefault(id(obj), (obj, set()))
    entry[1].update(keys)


def _load_values(
    session: Session, loads: dict[VersionMeta, dict[int, tuple[Any, set[str]]]]
) -> dict[int, dict[str, Any]]:
    """Stored values the session does not hold (expired, deferred, set while
    expired): one SELECT per history table for all its records of this flush.

    Classes mapped to one table (single-table inheritance included) are read
    together from that table; a joined-inheritance class is read through its
    mapper (a join of its tables).
    """
    groups: dict[Any, list[tuple[VersionMeta, dict[int, tuple[Any, set[str]]]]]] = {}
    for meta, wanted in loads.items():
        group = meta.version_column.table if len(meta.tables) == 1 else meta
        groups.setdefault(group, []).append((meta, wanted))
    out: dict[int, dict[str, Any]] = {}
    for group, members in groups.items():
        first = members[0][0]
        by_pk: dict[tuple[Any, ...], tuple[Any, set[str]]] = {}
        needed: set[str] = set()
        columns: dict[str, Any] = {}
        for meta, wanted in members:
            for obj, asked in wanted.values():
                state = instance_state(obj)
                if state.key is not None:
                    by_pk[tuple(state.key[1])] = (obj, asked)
                    needed.update(asked)
            if isinstance(group, sa.Table):
                columns.update(meta.columns)
        if not by_pk:
            continue
        keys = sorted(needed)
        if isinstance(group, sa.Table):
            pk_columns = [columns[key] for key in first.pk_keys]
            selected = [columns[key] for key in keys]
        else:
            cls = first.mapper.class_
            pk_columns = [getattr(cls, key) for key in first.pk_keys]
            selected = [getattr(cls, key) for key in keys]
        if len(pk_columns) == 1:
            where = pk_columns[0].in_([pk[0] for pk in by_pk])
        else:
            where = sa.tuple_(*pk_columns).in_(list(by_pk))
        statement = (
            sa.select(*pk_columns, *selected).where(where).execution_options(**{_BULK_GUARD: True})
        )
        n = len(pk_columns)
        rows = session.execute(statement, bind_arguments={"mapper": first.mapper})
        for row in rows:
            found = by_pk.get(tuple(row[:n]))
            if found is not None:
                obj, wanted_keys = found
                values = dict(zip(keys, row[n:], strict=True))
                # Only its own attributes: single-table siblings add theirs.
                out[id(obj)] = {key: values[key] for key in wanted_keys}
    return out


def _refuse_managed(obj: Any, values: Any, new: bool = False) -> None:
    """An application's own assignment to a column Chrononaut sets (SPEC §2)."""
    for key in _MANAGED:
        if new:
            value = values.get(key)
            state = instance_state(obj)
            if key not in state.committed_state and key in state.dict:
                # Carried over from a loaded row (make_transient() to copy it), not
                # assigned: Chrononaut sets it for the new row.
                del state.dict[key]
                continue
            # A SQL expression there is ours: the next version of a re-used key.
            assigned = value is not None and not isinstance(value, sa.ClauseElement)
        else:
            old = values.get(key, NO_VALUE)
            state = instance_state(obj)
            assigned = old is not NO_VALUE and not state.manager[key].impl.is_equal(
                old, state.dict.get(key)
            )
        if assigned:
            raise ChrononautException(
                f"{type(obj).__name__}.{key} is set by Chrononaut; do not assign it "
                f"(use expect_version() to pin the version a change is based on)"
            )


def _bump(obj: Any, state: InstanceState[Any], old_version: int, ended: dt.datetime) -> None:
    """Everything Chrononaut sets on a record whose change makes a new version (the
    one-statement path sets the same in SQL: statements.py)."""
    setattr(obj, VERSION_KEY, old_version + 1)
    _set_valid_from(obj, state, ended)


# valid_from is set by Chrononaut in before_flush itself: _refuse_valid_from tells
# the application's assignments from ours.
_MANAGED = frozenset(MANAGED_KEYS) - {VALID_FROM_KEY}

#: False sends every flush through the general path (the test suite runs once so,
#: to prove both paths write the same rows and raise the same errors).
fast_path_enabled = True


class Capture:
    """The session listeners of one versioned session factory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- flushes -----------------------------------------------------------------

    @own_listener
    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        candidates: list[tuple[Any, int | None]] = []
        session.info[CANDIDATES_KEY] = candidates
        batch = _Batch()
        session.info[PENDING_KEY] = batch
        # States whose versioning this listener decides; the unit of work reports
        # the others it updates (note_update), changed by later listeners.
        decided: set[int] = set()
        session.info[DECIDED_KEY] = decided
        session.info.pop(LATE_KEY, None)
        session.info.pop(_KNOWN_KEY, None)
        session.info.pop(FAST_DONE_KEY, None)
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
        new = session.new
        deleted: Any = session.deleted

        # Relationship changes set foreign-key columns only later in the flush: find
        # the records whose tracked key columns they will change (SPEC §2), and the
        # children a delete-orphan cascade will delete.
        orphans: list[Any] = []
        related = _relationship_changes(dirty, new, deleted, orphans)
        if orphans:
            deleted = [*deleted, *orphans]
        for obj in new:
            # valid_from: the INSERT carries the flush's instant (no extra round trip).
            if meta_of(type(obj)) is not None:
                new_state = instance_state(obj)
                decided.add(id(new_state))
                _refuse_valid_from(obj, new_state, committed=False)
                _set_valid_from(obj, new_state, changed_at)
        fast_allowed = (
            fast_path_enabled and only is None and not suppressed and not new and not deleted
        )
        fast = _FastUpdates()
        fast_keys = _FastKeys()
        expected = any_expected_version()
        # before_flush listeners of the application's may run after this one and
        # change records it saw unchanged (note_update versions those changes).
        late_possible = any(
            not getattr(fn, "_chrononaut_listener", False) for fn in session.dispatch.before_flush
        )
        if related:
            dirty = list(dirty)
            seen = {id(o) for o in dirty}
            dirty.extend(obj for obj, _ in related.values() if id(obj) not in seen)
        if orphans:
            # An orphan is also dirty (its backref cleared the key): its delete
            # writes its one history row, not an update as well.
            doomed = {id(o) for o in orphans}
            dirty = [o for o in dirty if id(o) not in doomed]

        # Changed and deleted records; the stored values the session lacks are read
        # for all of them at once, one SELECT per class (never one per record).
        pending: list[_Pending] = []
        loads: dict[VersionMeta, dict[int, tuple[Any, set[str]]]] = {}

        for obj in dirty:
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            committed = state.committed_state
            dict_ = instance_dict(obj)
            if not _MANAGED.isdisjoint(committed):
                _refuse_managed(obj, committed)
            if VALID_FROM_KEY in committed:
                _refuse_valid_from(obj, state, committed=True)
            via = related[id(obj)][1] if related and id(obj) in related else None
            watched = meta.watched
            hidden = meta.hidden
            changed_tracked: list[str] = []
            changed_hidden: list[str] = []
            unknown: list[str] = []
            for key in committed:
                if key not in watched:
                    continue
                old = committed[key]
                if old is NO_VALUE:
                    unknown.append(key)
                    continue
                if _same(state, key, old, dict_.get(key)):
                    continue
                (changed_hidden if key in hidden else changed_tracked).append(key)
            changes = bool(changed_tracked or changed_hidden or unknown or via) and not suppressed
            forced: tuple[str, ...] = ()
            if not changes and not suppressed and meta.onupdate_watched:
                # An UPDATE of the row (for an untracked column) changes these too.
                if _column_changed(state, meta):
                    forced = meta.onupdate_watched
                    changes = True
            version = dict_.get(VERSION_KEY)
            # The one-statement path copies the history row in the database: it
            # needs no stored values but the changed ones.
            fast_ok = (
                changes
                and fast_allowed
                and via is None
                and _fast_eligible(fast_keys[meta], committed, dict_)
            )
            if fast_ok and version is not None and not unknown:
                # Everything is known already: straight to the one-statement path.
                old_version = int(version)
                if expected:
                    check_expected_version(session, obj, state, old_version)
                candidates.append((obj, old_version))
                info = change_info().build(type(obj), state, hidden_changed=changed_hidden)
                fast.add(meta, obj, state, dict_, old_version, info)
                continue
            missing: set[str] = set()
            if version is None:
                missing.add(VERSION_KEY)
                _restore_key(obj, meta, state)
            if changes:
                missing.update(unknown)
                if not fast_ok:
                    missing.update(key for key in meta.tracked if key not in dict_)
                    if VALID_FROM_KEY not in dict_ and VALID_FROM_KEY not in committed:
                        missing.add(VALID_FROM_KEY)
                    if via:
                        missing.update(k for k in via if k not in dict_ and k not in committed)
            elif not suppressed and (late_possible or meta.changed_by_listeners()):
                # Not a change (yet): a later listener may still change it, and its
                # history row would need the old values the session lacks.
                missing.update(k for k in meta.tracked if k not in dict_ and k not in committed)
                if VALID_FROM_KEY not in dict_ and VALID_FROM_KEY not in committed:
                    missing.add(VALID_FROM_KEY)
            if missing:
                _want(loads, meta, obj, missing)
            for key in forced:
                (changed_hidden if key in meta.hidden else changed_tracked).append(key)
            pending.append(
                _Pending(obj, meta, state, changed_tracked, changed_hidden, unknown, via, False)
            )
            pending[-1].fast = fast_ok
            pending[-1].changes = changes

        for obj in deleted:
            if only is not None and id(obj) not in only:
                continue
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            decided.add(id(state))
            dict_ = state.dict
            # Detached once the delete commits; its history stays readable (SPEC §2).
            remember_session(session, state)
            missing = set() if suppressed else {k for k in meta.tracked if k not in dict_}
            if missing or (not suppressed and VALID_FROM_KEY not in dict_):
                missing.add(VALID_FROM_KEY)
            if dict_.get(VERSION_KEY) is None:
                missing.add(VERSION_KEY)
                _restore_key(obj, meta, state)
            if missing:
                _want(loads, meta, obj, missing)
            pending.append(_Pending(obj, meta, state, [], [], [], None, True))
            pending[-1].changes = not suppressed

        fetched = _load_values(session, loads) if loads else {}

        general: list[tuple[_Pending, int, list[str], list[str], dict[str, Any]]] = []
        for item in pending:
            obj, meta, state = item.obj, item.meta, item.state
            known = fetched.get(id(obj), {})
            if known:
                # Old values read for attributes set while expired: a later look at
                # this record (after_flush) judges its changes by them too.
                session.info.setdefault(_KNOWN_KEY, {})[id(state)] = known
            committed = state.committed_state
            dict_ = state.dict
            for key, value in known.items():
                if key not in dict_ and key not in committed and key != VERSION_KEY:
                    # Loaded for history anyway: the record holds it now (a deleted
                    # record keeps readable final values once it is detached).
                    set_committed_value(obj, key, value)
            if dict_.get(VERSION_KEY) is not None:
                old_version = int(dict_[VERSION_KEY])
            elif VERSION_KEY in known:
                old_version = int(known[VERSION_KEY])
                # SQLAlchemy's version-checked statement reads it from here instead
                # of loading it once more for this record.
                set_committed_value(obj, VERSION_KEY, old_version)
            else:
                continue  # the row is gone: SQLAlchemy reports the stale write
            check_expected_version(session, obj, state, old_version)
            candidates.append((obj, old_version))
            if not item.changes:
                continue
            if item.deleted:
                general.append((item, old_version, [], [], known))
                continue
            changed_tracked = list(item.changed_tracked)
            changed_hidden = list(item.changed_hidden)
            for key in item.unknown:
                if key not in known:
                    continue
                if _same(state, key, known[key], dict_.get(key)):
                    continue
                (changed_hidden if key in meta.hidden else changed_tracked).append(key)
            for key, value in (item.via or {}).items():
                if key in changed_tracked or key in changed_hidden:
                    continue
                old = committed.get(key, NO_VALUE)
                if old is NO_VALUE:
                    old = dict_[key] if key in dict_ else known.get(key)
                if value is _UNKNOWN or old != value:
                    (changed_hidden if key in meta.hidden else changed_tracked).append(key)
            if not (changed_tracked or changed_hidden):
                continue
            if item.fast:
                info = change_info().build(type(obj), state, hidden_changed=changed_hidden)
                fast.add(meta, obj, state, dict_, old_version, info)
            else:
                general.append((item, old_version, changed_tracked, changed_hidden, known))

        if fast:
            done = fast.execute(session, changed_at)
            if done:
                # Written: a later listener's change to one joins its version.
                session.info[FAST_DONE_KEY] = done
                session.info[CANDIDATES_KEY] = [c for c in candidates if id(c[0]) not in done]
                candidates = session.info[CANDIDATES_KEY]

        for item, old_version, _, changed_hidden, known in general:
            obj, meta, state = item.obj, item.meta, item.state
            if item.deleted:
                info = change_info().build(type(obj), state, deleted=True)
            else:
                info = change_info().build(type(obj), state, hidden_changed=changed_hidden)
            began = _old_valid_from(obj, state, known)
            ended = ends_at(changed_at, began)
            values = _stored_values(obj, meta, known)
            batch.add(meta, values, old_version, ended, info, valid_from=began)
            batch.states.append(state)
            decided.add(id(state))
            if not item.deleted:
                _bump(obj, state, old_version, ended)
                _has_post_update(meta.mapper)  # registers settle_version where needed

        # A record deleted and a new one with its key added in one flush: SQLAlchemy
        # turns the pair into an UPDATE of the row ("row switch"), before the
        # deleted version's history row exists.
        replaced: dict[Any, int] = {}
        for obj in deleted:
            old_state = instance_state(obj)
            stored = old_state.dict.get(VERSION_KEY)
            if old_state.key is not None and stored is not None:
                replaced[old_state.key] = int(stored)
        post_updated: dict[VersionMeta, list[Any]] = {}
        for obj in new:
            meta = meta_of(type(obj))
            if meta is not None:
                _refuse_managed(obj, instance_state(obj).dict, new=True)
                if _has_post_update(meta.mapper):
                    post_updated.setdefault(meta, []).append(obj)
                else:
                    self._continue_sequence(obj, meta, replaced)
        for meta, objs in post_updated.items():
            # A post_update UPDATE after the INSERT needs the inserted version as a
            # value for its WHERE, not the SQL that computes it: read the keys'
            # history once (one SELECT for all of them).
            keyed: list[tuple[Any, tuple[Any, ...]]] = []
            for obj in objs:
                dict_ = instance_state(obj).dict
                insert_key = _insert_key(obj, meta)
                if dict_.get(VERSION_KEY) is None and insert_key is not None:
                    keyed.append((obj, insert_key))
            connection = session.connection(bind_arguments={"mapper": meta.mapper})
            found = reinserted(connection, meta, [key_values for _, key_values in keyed])
            for obj, key_values in keyed:
                version = _replacing(meta, key_values, replaced)
                if version is None:
                    version = found[key_values][0] if key_values in found else 0
                setattr(obj, VERSION_KEY, version)

    @staticmethod
    def _continue_sequence(obj: Any, meta: VersionMeta, replaced: dict[Any, int]) -> None:
        """Give a new row whose key was used before the next version of that key.

        Only rows whose primary key is set in Python can collide with an old key;
        generated keys are new by construction and keep version 0 at no cost.
        ``replaced``: identity key -> version of the records this flush deletes.
        """
        state = instance_state(obj)
        dict_ = state.dict
        if dict_.get(VERSION_KEY) is not None:
            return
        insert_key = _insert_key(obj, meta)
        if insert_key is None:
            return
        version = _replacing(meta, insert_key, replaced)
        if version is None:
            setattr(obj, VERSION_KEY, next_version(meta, insert_key))
            # A key deleted earlier began its last version's end at that delete's
            # clock, which may be later than this writer's (clocks differ): the
            # new version begins no earlier, so the ranges never overlap.
            clock = state.dict.get(VALID_FROM_KEY)
            if isinstance(clock, dt.datetime):
                state.info[CLOCK_KEY] = clock
                _set_valid_from(obj, state, next_valid_from(meta, insert_key, clock))
        else:
            setattr(obj, VERSION_KEY, version)

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        batch = session.info.pop(PENDING_KEY, None)
        session.info.pop(DECIDED_KEY, None)
        session.info.pop(FAST_DONE_KEY, None)
        late = session.info.pop(LATE_KEY, None)
        judged = session.info.pop(_KNOWN_KEY, None) or {}
        switched = session.info.pop(SWITCHED_KEY, None)
        if (late or switched) and not versioning_suppressed():
            if batch is None:
                batch = _Batch()
            if switched:
                self._switched_deletes(session, switched, batch)
            if late:
                self._version_late(session, late, batch, judged)
        if batch:
            batch.write(session)
        # Kept until here: a stale write found by the history INSERT is explained
        # from them, as one found by SQLAlchemy's statements.
        session.info.pop(CANDIDATES_KEY, None)

    def _switched_deletes(
        self,
        session: Session,
        switched: list[tuple[Any, dict[str, Any], dt.datetime | None]],
        batch: _Batch,
    ) -> None:
        """The history rows of records deleted by a row switch that ``before_flush``
        could not see (see ``note_switch``): their final values, marked deleted."""
        _require_context(self.settings)
        builder = ChangeInfoBuilder(session, self.settings)
        for obj, known, ended in switched:
            meta = meta_of(type(obj))
            if meta is None:
                continue
            state = instance_state(obj)
            old_version = int(state.dict.get(VERSION_KEY, known.get(VERSION_KEY, 0)))
            began = state.dict.get(VALID_FROM_KEY, known.get(VALID_FROM_KEY))
            values = _stored_values(obj, meta, known)
            info = builder.build(type(obj), state, deleted=True)
            batch.add(meta, values, old_version, ended or _now(), info, valid_from=began)
            batch.states.append(state)

    def _version_late(
        self,
        session: Session,
        states: list[InstanceState[Any]],
        batch: _Batch,
        judged: dict[int, dict[str, Any]],
    ) -> None:
        """Version the records the unit of work updated with changes made after
        ``before_flush`` (later ``before_flush`` listeners, mapper ``before_update``
        listeners): their UPDATE checked the version but did not bump it.

        As in ``before_flush``: the old values are the session's committed ones,
        the unloaded (unchanged) ones read with one SELECT per class; then one
        UPDATE per record bumps ``version`` and ``valid_from`` (a rare path, where
        a statement per record is cheaper than being clever).
        """
        changed_at = _now()
        loads: dict[VersionMeta, dict[int, tuple[Any, set[str]]]] = {}
        items: list[tuple[Any, VersionMeta, InstanceState[Any], list[str]]] = []
        for state in states:
            obj = state.obj()
            meta = meta_of(type(obj)) if obj is not None else None
            if meta is None or state.key is None:
                continue
            committed = state.committed_state
            dict_ = state.dict
            hidden: list[str] = []
            changed = False
            read = judged.get(id(state), {})
            for key in committed:
                if key not in meta.watched:
                    continue
                old = committed[key]
                if old is NO_VALUE:
                    old = read.get(key, NO_VALUE)
                if old is not NO_VALUE and _same(state, key, old, dict_.get(key)):
                    continue
                changed = True
                if key in meta.hidden:
                    hidden.append(key)
            if not changed:
                continue
            missing = {key for key in meta.tracked if key not in dict_ and key not in committed}
            if VALID_FROM_KEY not in dict_ and VALID_FROM_KEY not in committed:
                missing.add(VALID_FROM_KEY)
            if missing:
                _want(loads, meta, obj, missing)
            items.append((obj, meta, state, hidden))
        if not items:
            return
        _require_context(self.settings)
        builder = ChangeInfoBuilder(session, self.settings)
        fetched = _load_values(session, loads) if loads else {}
        for obj, meta, state, hidden in items:
            identity = state.key
            assert identity is not None  # persistent: checked above
            known = {**judged.get(id(state), {}), **fetched.get(id(obj), {})}
            old_version = int(state.dict[VERSION_KEY])
            check_expected_version(session, obj, state, old_version)
            began = _old_valid_from(obj, state, known)
            ended = ends_at(changed_at, began)
            values = _stored_values(obj, meta, known)
            info = builder.build(type(obj), state, hidden_changed=hidden)
            batch.add(meta, values, old_version, ended, info, valid_from=began)
            batch.states.append(state)
            connection = session.connection(bind_arguments={"mapper": meta.mapper})
            connection.execute(
                meta.late_bump_statement(),
                {
                    "chrononaut_v": old_version,
                    "chrononaut_valid_from": ended,
                    **{f"chrononaut_k{i}": v for i, v in enumerate(identity[1])},
                },
            )
            set_committed_value(obj, VERSION_KEY, old_version + 1)
            if VALID_FROM_KEY in meta.columns:
                set_committed_value(obj, VALID_FROM_KEY, ended)

    # -- ORM bulk statements -----------------------------------------------------

    def do_orm_execute(self, orm_execute_state: ORMExecuteState) -> Any:

        return run_bulk(self.settings, orm_execute_state)
