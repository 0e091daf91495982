"""Advisory locks: :func:`advisory_lock` and ``record.advisory_lock()``."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chrononaut._context import resolve_actor
from chrononaut._db_errors import describe_db_error, sqlstate
from chrononaut.errors import (
    LockError,
    LockNotAvailableError,
    LockTimeoutError,
)
from chrononaut.locking import _block
from chrononaut.locking._common import (
    SQLSTATE_LOCK_NOT_AVAILABLE,
    app_name,
    check_bool,
    check_session,
    check_wait,
    default_session,
    held_by,
    session_tag,
)
from chrononaut.locking._holders import advisory_holder
from chrononaut.locking._keys import AdvisoryKey, advisory_key, physical_table, record_key_text
from chrononaut.locking._records import check_record, primary_key, target

SCOPES = ("transaction", "session")


def _function(shared: bool, nowait: bool, scope: str) -> str:
    name = "pg_try_advisory" if nowait else "pg_advisory"
    name += "_xact_lock" if scope == "transaction" else "_lock"
    return name + ("_shared" if shared else "")


def _args(key: AdvisoryKey) -> tuple[str, dict[str, int]]:
    if isinstance(key, tuple):
        return "CAST(:k1 AS integer), CAST(:k2 AS integer)", {"k1": key[0], "k2": key[1]}
    return "CAST(:k AS bigint)", {"k": key}


_statements: dict[tuple[str, ...], sa.TextClause] = {}


def _statement(kind: str, function: str, args: str) -> sa.TextClause:
    """The (cached) statement of one kind of lock attempt.

    Target lists are evaluated left to right. A waiting attempt tags the
    transaction *before* the lock function, so ``flask chrononaut locks`` can name
    a waiting user; a failed timed attempt rolls its savepoint (and so the tag)
    back, any other failed wait aborts the transaction. A ``try`` attempt never
    waits and tags only when it got the lock: it runs without a savepoint.
    """
    cache_key = (kind, function, args)
    stmt = _statements.get(cache_key)
    if stmt is None:
        # Always transaction-local: a session-scope lock holds its connection in
        # an open transaction for the block, so the tag ends with the block.
        local = "true"
        if kind.endswith("try"):
            sql = (
                f"SELECT s.ok, CASE WHEN s.ok THEN set_config('application_name', :app, {local}) "
                f"END FROM (SELECT {function}({args}) AS ok OFFSET 0) AS s"
            )
        elif kind == "xact-timeout":
            sql = (
                f"SELECT set_config('application_name', :app, true), {function}({args}), "
                "set_config('lock_timeout', :old, true)"
            )
        elif kind == "session-timeout":
            # In a savepoint of the block's transaction: a RELEASE keeps a local
            # setting, so the old lock_timeout (read first, in the fenced FROM) is
            # put back once the lock is granted; a timeout rolls the savepoint back.
            sql = (
                "SELECT set_config('lock_timeout', :t, true), "
                f"set_config('application_name', :app, true), {function}({args}), "
                "set_config('lock_timeout', o.old, true) "
                "FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) AS o"
            )
        else:
            sql = f"SELECT set_config('application_name', :app, {local}), {function}({args})"
        stmt = _statements[cache_key] = sa.text(sql)
    return stmt


def _not_available(key: object, holder: Any) -> LockNotAvailableError:
    who = held_by(holder)
    return LockNotAvailableError(
        f"advisory lock {key!r} is held by another session{who}; try again later",
        holder=holder,
    )


def _timed_out(key: object, timeout_ms: int, holder: Any) -> LockTimeoutError:
    return LockTimeoutError(
        f"could not take advisory lock {key!r} within {timeout_ms / 1000:g} s{held_by(holder)}",
        holder=holder,
    )


def _check(
    key: object,
    shared: object,
    nowait: object,
    timeout: object,
    scope: object,
    commit: object,
    session: object,
) -> tuple[AdvisoryKey, int | None]:
    normalised = advisory_key(key)
    check_bool("shared", shared)
    timeout_ms = check_wait(nowait, timeout)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"scope must be 'transaction' or 'session', got {scope!r}")
    check_bool("commit", commit)
    if session is not None:
        check_session(session)
    return normalised, timeout_ms


def advisory_lock(
    key: int | str | tuple[int, int],
    *,
    shared: bool = False,
    nowait: bool = False,
    timeout: float | None = None,
    scope: str = "transaction",
    session: Session | Any | None = None,
    commit: bool = True,
) -> contextlib.AbstractContextManager[None]:
    """Hold a PostgreSQL advisory lock for the block.

    :param key: an int in the signed 64-bit range, a str (hashed to a stable 64-bit
        key, see :func:`chrononaut.locking.string_key`), or a pair of ints in the
        signed 32-bit range.
    :param shared: take a shared lock (many holders; excludes exclusive ones).
    :param nowait: raise :class:`~chrononaut.LockNotAvailableError` at once when held.
    :param timeout: seconds (> 0) before :class:`~chrononaut.LockTimeoutError`,
        decided by the server's ``lock_timeout``.
    :param scope: ``"transaction"`` (default; ``pg_advisory_xact_lock`` in the
        session's transaction, released when it ends; the block commits / rolls
        back like ``record.lock()``) or ``"session"`` (``pg_advisory_lock`` on a
        connection of its own held for the block and released on exit; the ORM
        session's transaction is left alone).
    :param session: the ORM session (default: the Flask app's ``db.session``).
    :param commit: with ``scope="transaction"``: commit on normal exit of the
        outermost lock block. Ignored for ``scope="session"``.
    :raises TypeError: a key of another type; a non-bool flag; a non-session.
    :raises ValueError: a key out of range, a bad ``timeout`` or ``scope``, or both
        ``nowait`` and ``timeout``.
    """
    normalised, timeout_ms = _check(key, shared, nowait, timeout, scope, commit, session)
    real = check_session(session) if session is not None else default_session()
    user_id = resolve_actor(None).user_id
    if scope == "session":
        return _session_lock(real, key, normalised, shared, nowait, timeout_ms, user_id)
    return _transaction_lock(real, key, normalised, shared, nowait, timeout_ms, commit, user_id)


def _transaction_lock(
    session: Session,
    key: object,
    normalised: AdvisoryKey,
    shared: bool,
    nowait: bool,
    timeout_ms: int | None,
    commit: bool,
    user_id: str | None,
    bind_mapper: Any = None,
) -> contextlib.AbstractContextManager[None]:
    function = _function(shared, nowait, "transaction")
    args, params = _args(normalised)
    params_any: dict[str, Any] = dict(params)

    def acquire() -> None:
        if bind_mapper is not None:
            conn = session.connection(bind_arguments={"mapper": bind_mapper})
        else:
            conn = session.connection()
        params_any["app"] = session_tag(session, user_id, key if isinstance(key, str) else None)
        if nowait:
            ok = conn.execute(_statement("xact-try", function, args), params_any).scalar()
            if not ok:
                holder = advisory_holder(conn, normalised, exclude_self=True)
                raise _not_available(key, holder)
            return
        if timeout_ms is None:
            conn.execute(_statement("xact", function, args), params_any)
            return
        _block.savepoint(conn)
        try:
            old = conn.execute(
                sa.text(
                    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', :t, true)"
                ),
                {"t": f"{timeout_ms}ms"},
            ).scalar()
            params_any["old"] = str(old)
            conn.execute(_statement("xact-timeout", function, args), params_any)
        except sa_exc.DBAPIError as error:
            _block.undo(conn, error)
            if sqlstate(error) == SQLSTATE_LOCK_NOT_AVAILABLE:
                holder = advisory_holder(conn, normalised, exclude_self=True)
                raise _timed_out(key, timeout_ms, holder) from None
            raise
        except BaseException as error:
            _block.undo(conn, error)
            raise
        _block.release(conn)

    return _block.transaction_block(session, commit, acquire)


# Session-scope locks: one dedicated connection per engine and context (thread
# or task), shared by nested blocks of that context so a key taken twice is
# re-entrant instead of a self-deadlock between two connections. The mapping is
# replaced, never changed in place, so a context copied into another task does
# not hand it this context's connection.
_held: contextvars.ContextVar[Mapping[Engine, _Dedicated] | None] = contextvars.ContextVar(
    "chrononaut_session_advisory_locks", default=None
)


@dataclass
class _Dedicated:
    conn: Connection
    depth: int = 0
    #: The thread whose blocks share it. A context copied into another thread
    #: (``asyncio.to_thread``, ``contextvars.copy_context().run``) carries the
    #: mapping along; that thread's blocks must not re-enter this one's locks or
    #: use its connection.
    thread: int = field(default_factory=threading.get_ident)
    #: String keys taken on this connection, listed in its holder tag.
    keys: list[str] = field(default_factory=list)


_UNLOCK = {
    False: "SELECT pg_advisory_unlock({args})",
    True: "SELECT pg_advisory_unlock_shared({args})",
}


def _pool_has_no_second(engine: Engine) -> bool:
    """A pool that can't hand out one more connection right now (pool of one in use)."""
    pool = engine.pool
    if not isinstance(pool, sa.pool.QueuePool):
        return False
    overflow = pool._max_overflow  # no public accessor
    if overflow < 0:
        return False
    return pool.checkedout() >= pool.size() + overflow


def _open_dedicated(engine: Engine) -> Connection:
    """Check out the block's own connection and open the transaction it keeps.

    The open transaction is what makes a transaction pooler (PgBouncer
    ``pool_mode = transaction``) keep one server session for the whole block.
    """
    no_second = LockError(
        "a session-scope advisory lock needs a connection of its own besides the ORM "
        "session's, and the engine's pool has none to give (pool_size + max_overflow "
        "connections are checked out): use scope='transaction', or make the pool larger"
    )
    if _pool_has_no_second(engine):
        raise no_second
    try:
        conn = engine.connect()
    except sa_exc.TimeoutError:
        raise no_second from None
    try:
        # A real transaction even when the engine is in autocommit mode (the
        # pool puts the connection's own isolation level back on check-in).
        conn = conn.execution_options(isolation_level="READ COMMITTED")
        conn.begin()
        # A statement pooler refuses a transaction of more than one statement:
        # find out here, before the lock is taken.
        conn.exec_driver_sql("SELECT 1")
        conn.exec_driver_sql("SELECT 1")
    except sa_exc.DBAPIError as error:
        with contextlib.suppress(Exception):
            conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()
        raise LockError(
            "a session-scope advisory lock needs one server session for the whole "
            "block, held in an open transaction, and the connection refused that "
            f"({describe_db_error(error)}); behind a statement pooler use "
            "scope='transaction'"
        ) from None
    return conn


@contextlib.contextmanager
def _session_lock(
    session: Session,
    key: object,
    normalised: AdvisoryKey,
    shared: bool,
    nowait: bool,
    timeout_ms: int | None,
    user_id: str | None,
    bind_mapper: Any = None,
) -> Iterator[None]:
    engine = session.get_bind(mapper=bind_mapper)
    if not isinstance(engine, Engine):
        engine = engine.engine
    held = _held.get() or {}
    entry = held.get(engine)
    if entry is not None and entry.thread != threading.get_ident():
        entry = None
    token: contextvars.Token[Mapping[Engine, _Dedicated] | None] | None = None
    if entry is None:
        entry = _Dedicated(_open_dedicated(engine))
        token = _held.set({**held, engine: entry})
    entry.depth += 1
    function = _function(shared, nowait, "session")
    args, params = _args(normalised)
    params_any: dict[str, Any] = dict(params)
    if isinstance(key, str) and key not in entry.keys:
        entry.keys.append(key)
    params_any["app"] = app_name(user_id, entry.keys)
    conn = entry.conn
    try:
        try:
            if nowait:
                ok = conn.execute(_statement("session-try", function, args), params_any).scalar()
                if not ok:
                    raise _not_available(key, advisory_holder(conn, normalised, exclude_self=True))
            elif timeout_ms is not None:
                _block.savepoint(conn)
                params_any["t"] = f"{timeout_ms}ms"
                try:
                    conn.execute(_statement("session-timeout", function, args), params_any)
                except sa_exc.DBAPIError as error:
                    # Anything but a timeout (a dead connection) is reported below.
                    if sqlstate(error) == SQLSTATE_LOCK_NOT_AVAILABLE:
                        _block.undo(conn)
                        holder = advisory_holder(conn, normalised, exclude_self=True)
                        raise _timed_out(key, timeout_ms, holder) from None
                    raise
                _block.release(conn)
            else:
                conn.execute(_statement("session", function, args), params_any)
        except sa_exc.DBAPIError as error:
            raise LockError(
                f"could not take the session-scope advisory lock {key!r}: "
                f"{describe_db_error(error)}"
            ) from None
    except BaseException:
        entry.depth -= 1
        _release_session_lock(entry, token, normalised, shared, acquired=False, report=False)
        raise
    try:
        yield
    except BaseException:
        entry.depth -= 1
        _release_session_lock(entry, token, normalised, shared, acquired=True, report=False)
        raise
    entry.depth -= 1
    _release_session_lock(entry, token, normalised, shared, acquired=True, report=True)


def _release_session_lock(
    entry: _Dedicated,
    token: contextvars.Token[Mapping[Engine, _Dedicated] | None] | None,
    key: AdvisoryKey,
    shared: bool,
    *,
    acquired: bool,
    report: bool,
) -> None:
    """Unlock (if taken) and, when the last block ends, end the held transaction
    (which also ends its transaction-local ``application_name``) and hand the
    connection back.

    An unlock that fails (the connection died) or finds no lock (``false``) means
    the lock was lost while the block ran: the connection is invalidated, so
    nothing of it can stay on a pooled server session, and a normal exit raises
    :class:`~chrononaut.LockError`.
    """
    last = entry.depth == 0
    args, params = _args(key)
    problem: str | None = None
    if acquired:
        try:
            released = entry.conn.execute(
                sa.text(_UNLOCK[shared].format(args=args)), params
            ).scalar()
            if released is not True:
                problem = (
                    "PostgreSQL found no such lock on the block's server session at its "
                    "end (pg_advisory_unlock returned false)"
                )
        except sa_exc.DBAPIError as error:
            problem = f"its connection failed while the block ran ({describe_db_error(error)})"
    if problem is not None:
        with contextlib.suppress(Exception):
            entry.conn.invalidate()
    if last:
        if token is not None:
            with contextlib.suppress(ValueError):
                _held.reset(token)
        if problem is None:
            try:
                entry.conn.rollback()
            except Exception:
                with contextlib.suppress(Exception):
                    entry.conn.invalidate()
        with contextlib.suppress(Exception):
            entry.conn.close()
    if problem is not None and report:
        raise LockError(
            f"lost the session-scope advisory lock {key!r}: {problem}; the work done "
            "under it was not protected by it"
        )


def record_key(record: object) -> str:
    """The string key of ``record.advisory_lock()``.

    The JSON array ``["chrononaut.record", schema, table, [primary key]]`` of the
    record's physical table (its base table, after the ``schema_translate_map``
    of the session's connection, else of its bind) and whole primary key:
    ``advisory_lock(record_key(r))`` is the same lock as ``r.advisory_lock()``,
    and two different records never share a key except by a 64-bit hash
    collision.

    :param record: a persistent mapped record.
    :raises TypeError: ``record`` is not a mapped record.
    :raises ChrononautException: it is transient, pending, detached or deleted.
    """
    state, session = check_record(record, "take an advisory lock on")
    tgt = target(state.mapper)
    pk = primary_key(state)
    if session.in_transaction():
        # The transaction's connection may carry a schema_translate_map of its own
        # (session.connection(execution_options=...)): the lock is then taken on it.
        options = session.connection(bind_arguments={"mapper": state.mapper})
    else:
        options = session.get_bind(mapper=state.mapper)  # type: ignore[assignment]
    schema, name = physical_table(tgt.table, options.get_execution_options())
    return record_key_text("chrononaut.record", schema, name, pk)


def record_advisory_lock(
    record: object,
    *,
    shared: bool = False,
    nowait: bool = False,
    timeout: float | None = None,
    scope: str = "transaction",
    session: Session | None = None,
    commit: bool = True,
) -> contextlib.AbstractContextManager[None]:
    """``record.advisory_lock()``: :func:`advisory_lock` keyed by the record's row."""
    check_bool("shared", shared)
    timeout_ms = check_wait(nowait, timeout)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"scope must be 'transaction' or 'session', got {scope!r}")
    check_bool("commit", commit)
    state, own_session = check_record(record, "take an advisory lock on")
    real = check_session(session) if session is not None else own_session
    key = record_key(record)
    normalised = advisory_key(key)
    user_id = resolve_actor(type(record)).user_id
    if scope == "session":
        return _session_lock(
            real, key, normalised, shared, nowait, timeout_ms, user_id, state.mapper
        )
    return _transaction_lock(
        real, key, normalised, shared, nowait, timeout_ms, commit, user_id, state.mapper
    )
