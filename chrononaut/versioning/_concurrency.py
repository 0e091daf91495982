"""Optimistic concurrency: explaining stale writes.

SQLAlchemy's ``version_id_col`` detects a stale UPDATE or DELETE (its row count is
0) and raises ``StaleDataError`` without saying which record or what happened.
Chrononaut turns that into a :class:`~chrononaut.StaleWriteError` that names the
record, the version the session had, the row's version now and the history rows
in between: who changed what, and when.

A failed flush rolls its database transaction back, and with it any change the
same transaction made before (an ORM bulk ``UPDATE`` with
``synchronize_session=False`` that left a loaded copy behind). So the row and its
history are read *before* that rollback, from the engine's ``rollback`` event,
on the connection and in the transaction the flush failed in; the read after the
rollback stays as the fallback. A successful flush never reaches that event.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState

from chrononaut.errors import _NO_USER, ChrononautException, StaleWriteError
from chrononaut.versioning._tables import VERSION_KEY

if TYPE_CHECKING:
    from chrononaut.versioning._meta import VersionMeta

__all__ = [
    "CANDIDATES_KEY",
    "EXPLAINED_KEY",
    "OptimisticMixin",
    "changed_fields",
    "check_expected_version",
    "end_flushing",
    "explain_stale_write",
    "flushing",
    "parse_version",
    "stale_write_error",
    "watch_rollbacks",
]

#: ``session.info`` key: ``(record, version the session had)`` for each versioned
#: record the running flush updates or deletes (set by history capture).
CANDIDATES_KEY = "chrononaut.flush_candidates"
#: ``session.info`` key: the StaleWriteError built before a failed flush's rollback
#: (or the error that lost the connection while building it).
EXPLAINED_KEY = "chrononaut.stale_explained"


# Versions that came back from a client, per record (identity, not __eq__).
_expected: weakref.WeakKeyDictionary[InstanceState[Any], int] = weakref.WeakKeyDictionary()


def meta_of(cls: type[Any]) -> VersionMeta | None:
    from chrononaut.versioning._meta import meta_of as _meta_of

    return _meta_of(cls)


class OptimisticMixin:
    """Optimistic-concurrency methods of :class:`~chrononaut.Versioned` records."""

    def expect_version(self, version: int | str) -> None:
        """Declare the version a client based its edit on (a form field, ``If-Match``).

        Raises :class:`~chrononaut.StaleWriteError` at once unless ``version`` is the
        record's current version; the record's next write is then checked against
        it too, even if the record is refreshed (for example by ``lock()``) in between.

        :param version: the version the client saw: an ``int``, or the ``str`` a
            form field or query parameter brought back (ASCII digits).
        :raises TypeError: when ``version`` is neither an int nor a str.
        :raises ChrononautException: when the record is not persistent.
        :raises StaleWriteError: when the record has moved on since ``version``, or
            a str ``version`` is not a well-formed version (a mismatch, never a
            server error).
        """
        text: str | None = None
        if isinstance(version, str):
            text = version
            parsed = parse_version(version)
            version = -1 if parsed is None else parsed
        elif isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"version must be an int or a str, not {type(version).__name__}")
        state = instance_state(self)
        if state.key is None or state.deleted or state.detached:
            raise ChrononautException(
                f"expect_version() needs a persistent {type(self).__name__} loaded from the "
                f"database"
            )
        current = getattr(self, VERSION_KEY)
        if version < 0 or version > MAX_VERSION:
            if text is None:
                shown = repr(version) if abs(version) < 10**20 else "a huge number"
            else:
                shown = repr(text if len(text) <= 20 else f"{text[:20]}…")
            raise StaleWriteError(
                f"{shown} is not a version of this {type(self).__name__} (it is at "
                f"version {current}); reload it and apply the change again",
                record=self,
                expected_version=None,
                current_version=current,
            )
        if current != version:
            session = state.session
            error = None
            meta = meta_of(type(self))
            if session is not None and meta is not None:
                error = stale_write_error(session, self, version)
                if error is None and not state.modified:
                    # The row *is* at the client's version; only this session's copy
                    # is older (a long-lived session). Catch up instead of refusing.
                    session.refresh(self)
                    if getattr(self, VERSION_KEY) == version:
                        _expected[state] = version
                        return
            if error is None:
                error = StaleWriteError(
                    f"{type(self).__name__} is at version {current}, not {version}; reload "
                    f"it and apply the change again",
                    record=self,
                    expected_version=version,
                    current_version=current,
                )
            raise error
        _expected[state] = version


#: Versions are PostgreSQL integers.
MAX_VERSION = 2**31 - 1


def parse_version(text: str) -> int | None:
    """The version a client's text names, or ``None`` when it is not one.

    Only ASCII digits (surrounding whitespace allowed) of a value up to
    :data:`MAX_VERSION`; anything else — signs, Unicode digits such as ``²``, a
    5,000-digit number — is not a version.
    """
    stripped = text.strip()
    if not stripped or len(stripped) > 10 or not stripped.isascii() or not stripped.isdigit():
        return None
    value = int(stripped)
    return value if value <= MAX_VERSION else None


def check_expected_version(
    session: Session, obj: Any, state: InstanceState[Any], version: int
) -> None:
    """Refuse to flush ``obj`` when a version declared with ``expect_version`` differs
    from the version the write is based on. Called by history capture per flush."""
    if not _expected:
        return  # the usual case, without making a weak reference to look it up
    expected = _expected.get(state)
    if expected is None or expected == version:
        return
    meta = meta_of(type(obj))
    error = None
    if meta is not None:
        error = stale_write_error(session, obj, expected)
    if error is None:
        error = StaleWriteError(
            f"{type(obj).__name__} was expected at version {expected} but the write is based "
            f"on version {version}; reload it and apply the change again",
            record=obj,
            expected_version=expected,
            current_version=version,
        )
    raise error


def any_expected_version() -> bool:
    """Whether any record has a declared version (if not, a flush skips the
    per-record lookups)."""
    return bool(_expected)


def forget_expected_version(state: InstanceState[Any]) -> None:
    """Drop the declared version once the write it guarded was flushed."""
    if _expected:
        _expected.pop(state, None)


def drop_expected_versions(session: Session, previous_transaction: Any) -> None:
    """``after_soft_rollback`` listener: when the session's outermost transaction
    rolls back, the unit of work that declared versions is over, so are they.

    (Keyed by the record's state, not kept in ``session.info``: a declaration
    must also survive the record being refreshed, e.g. by ``lock()``.)
    """
    if previous_transaction.parent is not None or not _expected:
        return
    for state in list(_expected.keys()):
        if state.session is session:
            _expected.pop(state, None)


def _pk_of(obj: Any, meta: VersionMeta) -> tuple[Any, ...]:
    state = instance_state(obj)
    if state.key is not None:
        return tuple(state.key[1])
    return tuple(getattr(obj, key) for key in meta.pk_keys)


def changed_fields(
    changes: Sequence[Any], meta: VersionMeta, current: dict[str, Any] | None
) -> list[list[str]]:
    """The names of the fields each history record's change touched.

    A change is the step from history record ``i`` to record ``i + 1`` (or to the
    live row, ``current``, for the newest); hidden columns come by name from
    ``change_info["hidden_cols_changed"]``. A delete (``current`` is ``None``)
    lists no field.
    """
    result = []
    for index, record in enumerate(changes):
        after: Any = changes[index + 1] if index + 1 < len(changes) else current
        fields: list[str] = []
        if after is not None:
            for key in meta.tracked:
                if key in meta.pk_keys:
                    continue
                after_value = (
                    after.get(key) if isinstance(after, dict) else getattr(after, key, None)
                )
                if getattr(record, key, None) != after_value:
                    fields.append(key)
        info = record.change_info or {}
        fields.extend(info.get("hidden_cols_changed", ()))
        result.append(fields)
    return result


def _describe_changes(changes: Sequence[Any], fields_per_change: list[list[str]]) -> list[str]:
    """One phrase per change: ``bob changed title at 10:05 (replacing version 3)``.

    A history record holds the version a change replaced (``version`` *n* is the
    state before the step to *n + 1*), so that is how its number is worded.
    """
    parts = []
    for record, fields in zip(changes, fields_per_change, strict=True):
        info = record.change_info or {}
        who = info.get("user_id") or _NO_USER
        when = record.changed.isoformat(timespec="seconds") if record.changed else "?"
        if info.get("deleted"):
            parts.append(f"{who} deleted it at {when} (it was at version {record.version})")
            continue
        verb = f"changed {', '.join(fields)}" if fields else "changed it"
        parts.append(f"{who} {verb} at {when} (replacing version {record.version})")
    return parts


def held_connection(session: Session, mapper: Any) -> sa.Connection:
    """The connection ``session`` already holds for ``mapper``'s bind.

    After a failed flush the session's transaction is inactive but keeps its
    connection checked out (SQLAlchemy rolled the database transaction back);
    reading on it needs no second connection from the pool, so a stale write is
    explained with a pool of one. Without a held connection, the session's
    :meth:`~sqlalchemy.orm.Session.connection` (its transaction begins).
    """
    bind = session.get_bind(mapper=mapper)
    transaction = session.get_transaction()
    connections = getattr(transaction, "_connections", None) if transaction else None
    if connections:
        engine = bind.engine if isinstance(bind, sa.Connection) else bind
        for key in (bind, engine):
            held = connections.get(key)
            if held is not None and not held[0].closed and not held[0].invalidated:
                conn: sa.Connection = held[0]
                return conn
    return session.connection(bind_arguments={"mapper": mapper})


@contextlib.contextmanager
def _reading_on(where: sa.Engine | sa.Connection | Session, mapper: Any) -> Iterator[sa.Connection]:
    """A connection to read the row and its history on, handed back as it was found."""
    if isinstance(where, sa.Engine):
        # Only for callers that have nothing better to give (a second connection).
        with where.connect() as fresh:
            yield fresh
        return
    conn = held_connection(where, mapper) if isinstance(where, Session) else where
    if conn.in_transaction():
        # The caller's own transaction (expect_version, a bulk statement): read in it.
        yield conn
        return
    # The transaction of a failed flush was rolled back: read in a short one of
    # our own on the same connection and end it, leaving the connection as it was.
    try:
        yield conn
    finally:
        if conn.in_transaction():
            conn.rollback()


def _row_source(meta: VersionMeta) -> sa.FromClause:
    """The live tables of ``meta``'s class, the root table outer-joined to each
    joined-inheritance table below it.

    Outer, because this is also read inside a failing flush, which may already
    have deleted a subclass table's row before its version-checked DELETE of the
    root row failed; the version is in the root table.
    """
    chain = list(meta.mapper.iterate_to_root())[::-1]
    source: sa.FromClause = chain[0].local_table
    previous = chain[0].local_table
    for mapper in chain[1:]:
        if mapper.local_table is not previous and mapper.inherit_condition is not None:
            source = source.outerjoin(mapper.local_table, mapper.inherit_condition)
            previous = mapper.local_table
    return source


def stale_write_error(
    session_bind: sa.Engine | sa.Connection | Session,
    obj: Any,
    expected_version: int,
    *,
    model: type[Any] | None = None,
    pk: tuple[Any, ...] | None = None,
) -> StaleWriteError | None:
    """Build the error for ``obj`` if its row no longer has ``expected_version``.

    Reads the row and its history on the connection the session already holds
    (pass the ``Session`` or that ``Connection``), so it works with a pool of one
    connection: inside the caller's transaction when one is open, else (after a
    failed flush, which rolled the database transaction back) in a short read
    transaction ended before returning. An ``Engine`` is still accepted and then
    costs a second connection.

    :param obj: the record, or ``None`` for a row the session does not hold
        (an ORM bulk statement); then ``model`` and ``pk`` name the row.
    :returns: ``None`` when the row still has ``expected_version``.
    """
    cls = type(obj) if obj is not None else model
    meta = meta_of(cls) if cls is not None else None
    if meta is None or cls is None:
        return None
    if pk is None:
        pk = _pk_of(obj, meta)
    base = meta.tables[0]
    version_col = meta.version_column
    live = version_col.table
    pk_cols = [live.c[col_key] for _, col_key in base.pk]
    tracked_cols = [meta.columns[key] for key in meta.tracked]
    with _reading_on(session_bind, meta.mapper) as connection:
        row = connection.execute(
            sa.select(version_col, *tracked_cols)
            .select_from(_row_source(meta))
            .where(*[c == v for c, v in zip(pk_cols, pk, strict=True)])
        ).one_or_none()
        current_version: int | None = None if row is None else row[0]
        if current_version == expected_version:
            return None
        current = None if row is None else dict(zip(meta.tracked, row[1:], strict=True))
        with Session(bind=connection) as reader:
            history_cls = meta.history_mapper.class_
            query = reader.query(history_cls).filter(
                *[
                    base.history.c[col_key] == v
                    for (_, col_key), v in zip(base.pk, pk, strict=True)
                ],
                base.history.c[VERSION_KEY] >= expected_version,
            )
            if current_version is not None:
                query = query.filter(base.history.c[VERSION_KEY] < current_version)
            changes = query.order_by(base.history.c[VERSION_KEY]).all()
            reader.expunge_all()
    key_repr = repr(pk[0]) if len(pk) == 1 else repr(pk)
    what = f"{cls.__name__} {key_repr}"
    fields = changed_fields(changes, meta, current)
    described = _describe_changes(changes, fields)
    since = "; ".join(described) if described else "it was changed by another transaction"
    now = "was deleted" if current_version is None else f"is at version {current_version}"
    message = (
        f"{what} {now}, but this write was based on version {expected_version}: {since}. "
        f"Nothing was written; reload the record and apply the change again."
    )
    return StaleWriteError(
        message,
        record=obj,
        expected_version=expected_version,
        current_version=current_version,
        changes=changes,
        changed_fields=fields,
    )


def explain_stale_write(
    session: Session, candidates: Sequence[tuple[Any, int | None]], original: Exception
) -> StaleWriteError:
    """The :class:`StaleWriteError` for a failed flush of ``candidates``.

    :param candidates: ``(record, version the session had)`` for each versioned
        record the flush updated or deleted.
    :param original: SQLAlchemy's ``StaleDataError``, used when no record can be
        identified (its message is kept).
    """
    for obj, expected in candidates:
        if expected is None:
            continue
        meta = meta_of(type(obj))
        if meta is None:
            continue
        error = stale_write_error(session, obj, expected)
        if error is not None:
            return error
    return StaleWriteError(
        f"{original} Another transaction changed or deleted a row this flush was "
        f"based on; reload and apply the change again."
    )


# The session whose flush is running in this thread / task (set by the wrapped
# ``Session.flush``): the engine's rollback event names only a connection.
_flushing: ContextVar[Session | None] = ContextVar("chrononaut_flushing", default=None)

# Engines whose rollback event has our listener (a set lookup per transaction
# instead of event.contains(); the lock only guards the first registration).
_watched: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_watch_lock = threading.Lock()


def flushing(session: Session | None) -> Any:
    """Mark ``session`` as flushing in this context; returns the token to reset."""
    return _flushing.set(session)


def end_flushing(token: Any) -> None:
    """Undo :func:`flushing`."""
    _flushing.reset(token)


def watch_rollbacks(
    session: Session, transaction: SessionTransaction, connection: sa.Connection
) -> None:
    """``after_begin`` listener: have ``connection``'s engine report rollbacks to
    :func:`_explain_before_rollback` (registered once per engine).

    The listener is on the engine because SQLAlchemy offers no session event
    between a flush's failure and its rollback; a commit never calls it.
    """
    engine = connection.engine
    if engine in _watched:
        return
    with _watch_lock:
        if engine not in _watched:
            if not event.contains(engine, "rollback", _explain_before_rollback):
                event.listen(engine, "rollback", _explain_before_rollback)
            _watched.add(engine)


def _explain_before_rollback(connection: sa.Connection) -> None:
    """Engine ``rollback`` listener: when a versioned session's flush failed with
    ``StaleDataError``, build its StaleWriteError now, while ``connection`` is
    still in the transaction the flush saw (``session.info[EXPLAINED_KEY]``).

    Runs before SQLAlchemy sends ROLLBACK: the read needs no SAVEPOINT and sees
    what this transaction wrote itself (a same-transaction bulk ``UPDATE`` and its
    history rows). Any other rollback returns at the first checks.
    """
    session = _flushing.get()
    if session is None or EXPLAINED_KEY in session.info:
        return
    # The flush rolls back from within its ``except`` clause: the exception being
    # handled is the flush's failure.
    failure = sys.exc_info()[1]
    if not isinstance(failure, StaleDataError) or isinstance(failure, StaleWriteError):
        return
    candidates = session.info.get(CANDIDATES_KEY)
    if not candidates or not connection.in_transaction():
        return
    engine = connection.engine
    for obj, expected in candidates:
        if expected is None:
            continue
        meta = meta_of(type(obj))
        if meta is None:
            continue
        try:
            bind = session.get_bind(mapper=meta.mapper)
            if (bind.engine if isinstance(bind, sa.Connection) else bind) is not engine:
                continue  # another bind's connection: explained when it rolls back
            error = stale_write_error(connection, obj, expected)
        except sa.exc.SQLAlchemyError as failed:
            # Never let the explanation stop the rollback. The flush wrapper reads
            # again after it (the fallback it always had) unless the connection is
            # gone (a terminated backend): then it raises this error, as a read
            # after the rollback would have.
            if connection.invalidated or connection.closed:
                session.info[EXPLAINED_KEY] = failed
            return
        if error is not None:
            session.info[EXPLAINED_KEY] = error
            return
