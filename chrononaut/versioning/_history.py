"""Reading history: the methods every ``Versioned`` record has."""

from __future__ import annotations

import copy
import datetime as dt
import weakref
from typing import TYPE_CHECKING, Any, Literal, overload

from sqlalchemy.orm import (
    InstanceState,
    Query,
    Session,
    object_session,
    scoped_session,
    with_polymorphic,
)
from sqlalchemy.orm.attributes import instance_state

from chrononaut.errors import ChrononautException
from chrononaut.versioning._meta import as_utc as _as_utc

if TYPE_CHECKING:
    from chrononaut.versioning._meta import HistoryRecord, VersionMeta

__all__ = ["CLOSES_KEY", "LAST_SESSION_KEY", "HistoryReadMixin", "remember_session"]

#: ``InstanceState.info`` key: (weak reference to the session that deleted or last
#: held the record, that session's close count then).
LAST_SESSION_KEY = "chrononaut._session"
#: ``Session.info`` key: how often the session was closed (``close()``, ``reset()``,
#: ``invalidate()``); a record it held before a close no longer reads through it.
CLOSES_KEY = "chrononaut.closes"


def remember_session(session: Session, state: InstanceState[Any]) -> None:
    """Note ``session`` as the one that deleted or last held ``state``'s record."""
    state.info[LAST_SESSION_KEY] = (weakref.ref(session), session.info.get(CLOSES_KEY, 0))


def _last_session(state: InstanceState[Any]) -> Session | None:
    """The session that deleted or last held the record, while it is open."""
    entry = state.info.get(LAST_SESSION_KEY)
    if entry is None:
        return None
    ref, closes = entry
    session: Session | None = ref()
    if session is None or session.info.get(CLOSES_KEY, 0) != closes:
        return None
    return session


class HistoryReadMixin:
    """History read API, mixed into :class:`~chrononaut.Versioned`."""

    def _chrononaut_meta(self) -> VersionMeta:
        from chrononaut.versioning._meta import meta_of

        meta = meta_of(type(self))
        if meta is None:  # pragma: no cover - Versioned classes always have one
            raise ChrononautException(f"{type(self).__name__} is not a mapped Versioned model")
        return meta

    def _chrononaut_session(self, session: Session | scoped_session[Any] | None = None) -> Session:
        if session is not None:
            if isinstance(session, scoped_session):
                # Flask-SQLAlchemy's db.session: the session of the current scope.
                session = session()
            if not isinstance(session, Session):
                raise TypeError(f"session must be a Session, not {type(session).__name__}")
            return session
        found = object_session(self)
        if found is None:
            # A record deleted by a committed flush (or expunged) is detached; the
            # session that deleted or last held it reads its history while that
            # session is open (SPEC §2).
            found = _last_session(instance_state(self))
        if found is None:
            raise ChrononautException(
                f"this {type(self).__name__} is not in a session; pass session=... to read "
                f"its history, or add it to one (or load it through one)"
            )
        return found

    def _history_query(self, session: Session | scoped_session[Any] | None = None) -> Query[Any]:
        meta = self._chrononaut_meta()
        state = instance_state(self)
        if state.key is None:
            raise ChrononautException(
                f"this {type(self).__name__} has not been saved yet, so it has no history"
            )
        history_cls = _history_class_of_tables(meta)
        base = meta.tables[0]
        criteria = [
            base.history.c[col_key] == value
            for (_, col_key), value in zip(base.pk, state.key[1], strict=True)
        ]
        query: Query[Any] = (
            self._chrononaut_session(session)
            .query(history_cls)
            .filter(*criteria)
            .order_by(base.history.c.version)
        )
        return query

    @overload
    def versions(
        self,
        before: dt.datetime | None = ...,
        after: dt.datetime | None = ...,
        return_query: Literal[False] = ...,
        *,
        session: Session | scoped_session[Any] | None = ...,
    ) -> list[Any]: ...

    @overload
    def versions(
        self,
        before: dt.datetime | None = ...,
        after: dt.datetime | None = ...,
        *,
        return_query: Literal[True],
        session: Session | scoped_session[Any] | None = ...,
    ) -> Query[Any]: ...

    def versions(
        self,
        before: dt.datetime | None = None,
        after: dt.datetime | None = None,
        return_query: bool = False,
        *,
        session: Session | scoped_session[Any] | None = None,
    ) -> list[Any] | Query[Any]:
        """This record's history records, oldest first.

        ``versions()[0]`` is the record as first saved (when it has changed since).

        :param before: keep versions that stopped being current at or before this time.
        :param after: keep versions that stopped being current at or after this time.
        :param return_query: return a query (``.all()``, ``.first()``, ``.count()``,
            ``.filter()``) instead of a list.
        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        :raises TypeError: for a ``before``/``after`` that is not a datetime (naive
            datetimes are taken as UTC).
        """
        query = self._history_query(session)
        changed = self._chrononaut_meta().tables[0].history.c.changed
        if before is not None:
            query = query.filter(changed <= _as_utc(before, "before"))
        if after is not None:
            query = query.filter(changed >= _as_utc(after, "after"))
        return query if return_query else query.all()

    def version_at(
        self, at: dt.datetime, *, session: Session | scoped_session[Any] | None = None
    ) -> Any:
        """The version of this record that was current at ``at``.

        That is the history record whose range ``[valid_from, changed)`` contains
        ``at``; this record itself when its current version began at or before
        ``at``; ``None`` when the record did not exist at ``at`` (before its insert,
        after its delete, between a delete and the re-insert of its key). A
        ``NULL`` ``valid_from`` (rows older than the column) begins where the
        key's previous history row ended, or at the beginning.

        :param at: the moment to look at (naive datetimes are taken as UTC).
        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        :raises TypeError: when ``at`` is not a datetime.
        """
        from chrononaut.versioning._as_of import version_at

        return version_at(self, _as_utc(at, "at"), session)

    def has_changed_since(
        self, since: dt.datetime, *, session: Session | scoped_session[Any] | None = None
    ) -> bool:
        """Whether a tracked or hidden change was made after ``since``.

        :param since: the moment to compare with (naive datetimes are taken as UTC).
        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        """
        changed = self._chrononaut_meta().tables[0].history.c.changed
        query = self._history_query(session).filter(changed > _as_utc(since, "since"))
        return bool(self._chrononaut_session(session).query(query.exists()).scalar())

    def previous_version(self, *, session: Session | scoped_session[Any] | None = None) -> Any:
        """The newest history record, or ``None`` when the record never changed.

        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        """
        version = self._chrononaut_meta().tables[0].history.c.version
        return self._history_query(session).order_by(None).order_by(version.desc()).first()

    def _check_own_history(self, record: object, name: str) -> HistoryRecord:
        from chrononaut.versioning._meta import HistoryRecord

        meta = self._chrononaut_meta()
        if not isinstance(record, HistoryRecord):
            raise ChrononautException(
                f"{name} must be a history record of this {type(self).__name__} "
                f"(from versions()), not {type(record).__name__}"
            )
        base_model = meta.mapper.base_mapper.class_
        if not issubclass(type(record).__chrononaut_model__, base_model):
            raise ChrononautException(
                f"{name} is a history record of {type(record).__chrononaut_model__.__name__}, "
                f"not of {type(self).__name__}"
            )
        own = tuple(getattr(self, key) for key in meta.pk_keys)
        # Attribute access, not __dict__: a commit may have expired the record.
        theirs = tuple(getattr(record, key, None) for key in meta.pk_keys)
        if own != theirs:
            raise ChrononautException(
                f"{name} is a history record of another {type(self).__name__} "
                f"(key {theirs!r}, not {own!r})"
            )
        return record

    def diff(
        self,
        from_model: Any,
        to: Any = None,
        include_hidden: bool = False,
        *,
        session: Session | scoped_session[Any] | None = None,
    ) -> dict[str, tuple[Any, Any]]:
        """The tracked attributes that differ between two versions of this record.

        :param from_model: a history record of this record.
        :param to: a later history record of this record, or ``None`` for the
            record's current state.
        :param include_hidden: also list each hidden column changed in between, as
            ``{name: (None, None)}`` (values are never available).
        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        :returns: ``{attribute: (from_value, to_value)}``.
        :raises ChrononautException: when a record is not a history record of this
            record, or ``from_model`` is newer than ``to``.
        """
        meta = self._chrononaut_meta()
        start = self._check_own_history(from_model, "from_model")
        target: Any
        if to is None or to is self:
            target = self
            end_version = None
        else:
            target = self._check_own_history(to, "to")
            end_version = target.version
            if end_version < start.version:
                raise ChrononautException(
                    f"from_model (version {start.version}) is newer than to (version "
                    f"{end_version}); pass the older version first"
                )
        result: dict[str, tuple[Any, Any]] = {}
        for key in meta.tracked:
            if key in meta.pk_keys:
                continue
            old = getattr(start, key, None)
            new = getattr(target, key, None)
            if old != new:
                result[key] = (old, new)
        if include_hidden and meta.hidden:
            version = meta.tables[0].history.c.version
            query = self._history_query(session).filter(version >= start.version)
            if end_version is not None:
                query = query.filter(version < end_version)
            changed_hidden: set[str] = set()
            for record in query:
                info = record.change_info or {}
                changed_hidden.update(info.get("hidden_cols_changed", ()))
            for name in sorted(changed_hidden & meta.hidden):
                result[name] = (None, None)
        return result

    def restore(
        self, version: int | Any, *, session: Session | scoped_session[Any] | None = None
    ) -> None:
        """Set the tracked columns to their values in ``version``.

        A normal change: it writes history when flushed. Hidden and untracked
        columns keep their current values, and so do columns the database
        generates (``Computed``, ``Identity(always=True)``). The live record gets
        copies of the values, never the history record's own objects. Does not
        commit.

        :param version: a version number, or a history record of this record.
        :param session: the session to read with; by default the record's own, else
            the session that deleted it (a deleted record is detached).
        :raises ChrononautException: when this record has no such version.
        """
        meta = self._chrononaut_meta()
        from chrononaut.versioning._meta import HistoryRecord

        if isinstance(version, HistoryRecord):
            record = self._check_own_history(version, "version")
        else:
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError(
                    f"version must be a version number or a history record, not "
                    f"{type(version).__name__}"
                )
            column = meta.tables[0].history.c.version
            found = self._history_query(session).filter(column == version).first()
            if found is None:
                raise ChrononautException(
                    f"{type(self).__name__} {self._pk_repr()} has no history version {version}"
                )
            record = found
        for key in meta.tracked:
            if key in meta.pk_keys:
                continue
            own = meta.columns.get(key)
            if own is not None and (
                own.computed is not None or (own.identity is not None and own.identity.always)
            ):
                continue  # generated by the database, which refuses values for it
            try:
                value = getattr(record, key)  # loads the record again if a commit expired it
            except AttributeError:
                continue  # a column of another subclass in the same hierarchy
            # A copy: a mutable value (a MutableDict) changed in place on the live
            # record must not change the read-only history record.
            setattr(self, key, copy.deepcopy(value))

    def _pk_repr(self) -> str:
        meta = self._chrononaut_meta()
        values = [getattr(self, key) for key in meta.pk_keys]
        return repr(values[0]) if len(values) == 1 else repr(tuple(values))


_polymorphic_history: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _history_class_of_tables(meta: Any) -> Any:
    """What to read a record's versions with.

    A class outside any hierarchy: its history class. A class in a hierarchy
    with a discriminator: the root's history class loading every subclass
    (``with_polymorphic``), so a key that was another class of the hierarchy
    before a delete — a single-table sibling, a joined-table one, the base — keeps
    its earlier versions, each loaded as the class it was then. Without a
    discriminator, the topmost class mapped to the same tables.
    """
    from chrononaut.versioning._meta import meta_of

    if meta.mapper.inherits is None and not meta.mapper.polymorphic_map:
        found: type[Any] = meta.history_mapper.class_
        return found
    own = meta
    cached = _polymorphic_history.get(own)
    if cached is not None:
        return cached
    root = meta
    while True:
        parent = root.mapper.inherits
        parent_meta = meta_of(parent.class_) if parent is not None else None
        if parent_meta is None:
            break
        root = parent_meta
    if root.history_mapper.polymorphic_on is not None:
        entity: Any = with_polymorphic(root.history_mapper.class_, "*")
    else:
        tables = [tmap.history for tmap in meta.tables]
        while True:
            parent = meta.mapper.inherits
            parent_meta = meta_of(parent.class_) if parent is not None else None
            if parent_meta is None or [t.history for t in parent_meta.tables] != tables:
                break
            meta = parent_meta
        entity = meta.history_mapper.class_
    _polymorphic_history[own] = entity
    return entity
