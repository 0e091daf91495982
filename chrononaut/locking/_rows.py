"""Row locks: ``record.lock()``, :func:`lock_all` and ``Model.lock_next()``."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import OID, REGCLASS
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session, aliased
from sqlalchemy.orm.state import InstanceState

from chrononaut._context import resolve_actor
from chrononaut.errors import (
    ChrononautException,
    DeadlockError,
    LockHolder,
    LockTimeoutError,
    RecordLockedError,
)
from chrononaut.locking import _block
from chrononaut.locking._common import (
    FOR_UPDATE_ARGS,
    SQLSTATE_LOCK_NOT_AVAILABLE,
    app_name,
    check_bool,
    check_mode,
    check_session,
    check_wait,
    record_row_lock,
    sqlstate,
)
from chrononaut.locking._holders import physical_regclass, row_holder
from chrononaut.locking._keys import marker_params, row_marker

R = TypeVar("R")

#: lock_all takes marker locks for at most this many rows per call: each one
#: uses a slot of the server's shared lock table (max_locks_per_transaction x
#: max_connections). Rows beyond it are still found through ``xmax``.
MARKER_LIMIT = 64

_LOCKED_CTE = "chrononaut_locked"


def describe(record: object) -> str:
    """``Class(pk)`` for error messages."""
    state = sa.inspect(record, raiseerr=False)
    pk = state.key[1] if isinstance(state, InstanceState) and state.key else None
    if pk is None:
        return type(record).__name__
    return f"{type(record).__name__}({', '.join(repr(v) for v in pk)})"


def check_record(record: object, action: str = "lock") -> tuple[InstanceState[Any], Session]:
    """The state and session of a persistent record, or the error SPEC §4 names.

    :raises TypeError: ``record`` is not an instance of a mapped class.
    :param action: what was asked, for the message ("lock", ...).
    :raises ChrononautException: the record is transient, pending, detached or deleted.
    """
    state = sa.inspect(record, raiseerr=False)
    if not isinstance(state, InstanceState):
        raise TypeError(f"expected a mapped record, got {type(record).__name__}")
    name = type(record).__name__
    if state.transient:
        raise ChrononautException(
            f"cannot {action} a transient {name}: add it to a session and commit it first"
        )
    if state.pending:
        raise ChrononautException(
            f"cannot {action} a pending {name}: it has no row yet; flush or commit it first"
        )
    if state.deleted or state.was_deleted:
        raise ChrononautException(f"cannot {action} {describe(record)}: it was deleted")
    session = state.session
    if state.detached or session is None:
        raise ChrononautException(
            f"cannot {action} a detached {name}: merge it into a session (session.merge) first"
        )
    if record in session.deleted:
        raise ChrononautException(
            f"cannot {action} {describe(record)}: it is marked for deletion in its session"
        )
    return state, session


class _Target:
    """What the lock statements of one mapper need, built once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.mapper = mapper
        self.table: sa.Table = mapper.base_mapper.local_table  # type: ignore[assignment]
        self.pk_columns: list[sa.ColumnElement[Any]] = list(mapper.primary_key)
        self.statements: dict[tuple[str, str], sa.Select[Any]] = {}

    def regclass(self, conn: Connection) -> str:
        """The physical table's quoted name on ``conn`` (after schema translation)."""
        return physical_regclass(conn, self.table)[2]

    def marker(self, conn: Connection, pk: Sequence[Any], mode: str) -> dict[str, Any]:
        """Parameters ``tbl``, ``direct``, ``m32``, ``m64`` of ``pk``'s marker lock."""
        schema, name, quoted = physical_regclass(conn, self.table)
        params = marker_params(schema, name, pk, mode)
        params["tbl"] = quoted
        return params


_targets: weakref.WeakKeyDictionary[Mapper[Any], _Target] = weakref.WeakKeyDictionary()


def target(mapper: Mapper[Any]) -> _Target:
    """The cached :class:`_Target` of ``mapper``."""
    found = _targets.get(mapper)
    if found is None:
        found = _targets[mapper] = _Target(mapper)
    return found


def for_update(
    stmt: sa.Select[Any], mode: str, *, nowait: bool = False, skip_locked: bool = False
) -> sa.Select[Any]:
    """``stmt`` with the ``FOR ...`` clause of ``mode``."""
    args = FOR_UPDATE_ARGS[mode]
    return stmt.with_for_update(
        nowait=nowait,
        skip_locked=skip_locked,
        read=args.get("read", False),
        key_share=args.get("key_share", False),
    )


def table_oid() -> sa.ColumnElement[int]:
    """``CAST(CAST(:tbl AS regclass) AS oid)::integer``: the marker's first int."""
    return sa.cast(sa.cast(sa.cast(sa.bindparam("tbl", type_=sa.Text), REGCLASS), OID), sa.Integer)


def _entity_statement(
    inner: sa.Select[Any], cls: type[Any], *, marker: bool, restore_timeout: bool
) -> sa.Select[Any]:
    """Wrap a locking ``SELECT`` so the functions run after the rows are locked.

    The locking select is a MATERIALIZED CTE; the outer query reads the locked
    rows *from the CTE* (under READ COMMITTED that is the newest committed row
    version the lock wait ended on, not the statement's older snapshot) and then
    tags the transaction: marker lock, ``application_name`` and, after a timed
    attempt, the old ``lock_timeout``.
    """
    cte = inner.cte(_LOCKED_CTE).prefix_with("MATERIALIZED")
    entity = aliased(cls, cte)
    extra: list[sa.ColumnElement[Any]] = []
    if marker:
        # CASE evaluates only the branch it takes: one marker lock, in the pair
        # space for a small integer key, else in the 64-bit space.
        extra.append(
            sa.case(
                (
                    sa.bindparam("direct", type_=sa.Boolean),
                    sa.func.pg_advisory_xact_lock_shared(
                        table_oid(), sa.bindparam("m32", type_=sa.Integer)
                    ),
                ),
                else_=sa.func.pg_advisory_xact_lock_shared(
                    sa.bindparam("m64", type_=sa.BigInteger)
                ),
            )
        )
    extra.append(sa.func.set_config("application_name", sa.bindparam("app", type_=sa.Text), True))
    if restore_timeout:
        extra.append(
            sa.func.set_config("lock_timeout", sa.bindparam("old_timeout", type_=sa.Text), True)
        )
    return sa.select(entity, *extra).execution_options(populate_existing=True)


def _single_statement(tgt: _Target, mode: str, variant: str) -> sa.Select[Any]:
    """``variant``: ``wait``, ``nowait`` or ``timeout`` (restores lock_timeout)."""
    stmt = tgt.statements.get((mode, variant))
    if stmt is None:
        cls = tgt.mapper.class_
        inner = sa.select(cls).where(
            *[col == sa.bindparam(f"pk_{i}") for i, col in enumerate(tgt.pk_columns)]
        )
        inner = for_update(inner, mode, nowait=variant == "nowait")
        stmt = _entity_statement(inner, cls, marker=True, restore_timeout=variant == "timeout")
        tgt.statements[(mode, variant)] = stmt
    return stmt


def _many_statement(tgt: _Target, mode: str, nowait: bool) -> sa.Select[Any]:
    """Lock rows ``pk IN (...)`` in primary-key order (markers follow separately)."""
    variant = "many-nowait" if nowait else "many"
    stmt = tgt.statements.get((mode, variant))
    if stmt is None:
        cls = tgt.mapper.class_
        if len(tgt.pk_columns) == 1:
            condition = tgt.pk_columns[0].in_(sa.bindparam("pks", expanding=True))
        else:
            condition = sa.tuple_(*tgt.pk_columns).in_(sa.bindparam("pks", expanding=True))
        inner = sa.select(cls).where(condition).order_by(*tgt.pk_columns)
        inner = for_update(inner, mode, nowait=nowait)
        stmt = _entity_statement(inner, cls, marker=False, restore_timeout=False)
        tgt.statements[(mode, variant)] = stmt
    return stmt


_MARKERS = sa.text(
    "SELECT count(CASE WHEN m.d THEN pg_advisory_xact_lock_shared("
    "CAST(CAST(CAST(:tbl AS regclass) AS oid) AS integer), m.m32) "
    "ELSE pg_advisory_xact_lock_shared(m.m64) END) "
    "FROM unnest(CAST(:d AS boolean[]), CAST(:m32 AS integer[]), CAST(:m64 AS bigint[])) "
    "AS m(d, m32, m64)"
)


def take_markers(conn: Connection, tgt: _Target, pks: Sequence[tuple[Any, ...]], mode: str) -> None:
    """Marker locks for rows locked by a statement that could not take them itself."""
    if not pks:
        return
    schema, name, quoted = physical_regclass(conn, tgt.table)
    markers = [row_marker(schema, name, pk, mode) for pk in pks[:MARKER_LIMIT]]
    conn.execute(
        _MARKERS,
        {
            "tbl": quoted,
            "d": [direct for direct, _ in markers],
            "m32": [value if direct else 0 for direct, value in markers],
            "m64": [0 if direct else value for direct, value in markers],
        },
    )


def _set_timeout(conn: Connection, timeout_ms: int) -> str:
    """Set ``lock_timeout`` for the transaction; return the value to restore."""
    old = conn.execute(
        sa.text("SELECT current_setting('lock_timeout'), set_config('lock_timeout', :t, true)"),
        {"t": f"{timeout_ms}ms"},
    ).scalar()
    return str(old)


_RESTORE_TIMEOUT = sa.text("SELECT set_config('lock_timeout', :old, true)")


def _lock_failed(
    error: sa_exc.DBAPIError,
    holders: Iterable[tuple[object, Any]],
    conn: Connection,
    *,
    nowait: bool,
    timeout_ms: int | None,
) -> BaseException:
    """The Chrononaut error for a failed attempt (after the savepoint was undone)."""
    if _block.as_deadlock(error) is not None or sqlstate(error) != SQLSTATE_LOCK_NOT_AVAILABLE:
        deadlock = _block.as_deadlock(error)
        return deadlock if deadlock is not None else error
    holder: LockHolder | None = None
    what = "the record"
    for record, find in holders:
        holder = find(conn)
        if holder is not None:
            what = describe(record)
            break
    who = _who(holder)
    if nowait:
        return RecordLockedError(
            f"{what} is locked by another transaction{who}; try again later or wait with timeout=",
            holder=holder,
        )
    return LockTimeoutError(
        f"could not lock {what} within {(timeout_ms or 0) / 1000:g} s{who}", holder=holder
    )


def _who(holder: LockHolder | None) -> str:
    if holder is None:
        return ""
    user = f"user {holder.user_id}" if holder.user_id is not None else "an unknown user"
    return f" (held by {user}, server pid {holder.pid})"


def _holder_finder(state: InstanceState[Any]) -> tuple[object, Any]:
    tgt = target(state.mapper)
    pk = state.key[1] if state.key is not None else ()

    def find(conn: Connection) -> LockHolder | None:
        return row_holder(conn, tgt.table, tgt.pk_columns, pk, exclude_self=True)

    return state.obj(), find


def _run_attempt(
    session: Session,
    conn: Connection,
    run: Any,
    states: Sequence[InstanceState[Any]],
    *,
    nowait: bool,
    timeout_ms: int | None,
    restore_after: bool,
) -> Any:
    """Run ``run()`` inside a savepoint when it may fail with a lock error."""
    if not nowait and timeout_ms is None:
        return run(None)
    _block.savepoint(conn)
    try:
        old = _set_timeout(conn, timeout_ms) if timeout_ms is not None else None
        result = run(old)
    except sa_exc.DBAPIError as error:
        _block.undo(conn, error)
        failure = _lock_failed(
            error,
            [_holder_finder(s) for s in states[:20]],
            conn,
            nowait=nowait,
            timeout_ms=timeout_ms,
        )
        if failure is error:
            raise
        if isinstance(failure, DeadlockError):
            raise failure from error
        # A lock error says all there is to say; the driver's error adds noise.
        raise failure from None
    except BaseException as error:
        _block.undo(conn, error)
        raise
    _block.release(conn)
    if restore_after and old is not None:
        conn.execute(_RESTORE_TIMEOUT, {"old": old})
    return result


def _actor_id(cls: type[Any]) -> str | None:
    return resolve_actor(cls).user_id


def _lock_one(
    session: Session,
    state: InstanceState[Any],
    mode: str,
    nowait: bool,
    timeout_ms: int | None,
    *,
    user_id: str | None,
    in_savepoint: bool = False,
) -> None:
    """Lock one record's row and refresh it from the locked row."""
    tgt = target(state.mapper)
    conn = session.connection(bind_arguments={"mapper": state.mapper})
    pk = state.key[1] if state.key is not None else ()
    params: dict[str, Any] = {f"pk_{i}": value for i, value in enumerate(pk)}
    params.update(tgt.marker(conn, pk, mode))
    params["app"] = app_name(user_id)
    if in_savepoint:
        variant = "nowait" if nowait else "wait"
    else:
        variant = "nowait" if nowait else ("timeout" if timeout_ms is not None else "wait")
    stmt = _single_statement(tgt, mode, variant)

    def run(old: str | None) -> list[Any]:
        if old is not None and variant == "timeout":
            params["old_timeout"] = old
        return list(session.execute(stmt, params).all())

    if in_savepoint:
        rows = run(None)
    else:
        rows = _run_attempt(
            session, conn, run, [state], nowait=nowait, timeout_ms=timeout_ms, restore_after=False
        )
    if not rows:
        raise ChrononautException(
            f"cannot lock {describe(state.obj())}: its row was deleted by another transaction"
        )
    record_row_lock(session, (state.key[0], pk) if state.key else (None, pk), mode, user_id)


def _check_options(mode: object, nowait: object, timeout: object, commit: object) -> int | None:
    check_mode(mode)
    timeout_ms = check_wait(nowait, timeout)
    check_bool("commit", commit)
    return timeout_ms


def lock_record(
    record: R,
    mode: str = "update",
    *,
    nowait: bool = False,
    timeout: float | None = None,
    commit: bool = True,
) -> contextlib.AbstractContextManager[R]:
    """Lock ``record``'s row for the block (``record.lock()``; SPEC §4).

    Every argument is checked before anything is sent to the database.
    """
    timeout_ms = _check_options(mode, nowait, timeout, commit)
    state, session = check_record(record)

    def acquire() -> R:
        session.flush()
        _lock_one(session, state, mode, nowait, timeout_ms, user_id=_actor_id(type(record)))
        return record

    return _block.transaction_block(session, commit, acquire)


def _sort_key(state: InstanceState[Any]) -> tuple[str, tuple[Any, ...]]:
    # Two processes sort the same records alike whatever their schema translation,
    # so the logical name is enough for deadlock-free ordering.
    tgt = target(state.mapper)
    return (tgt.table.fullname, state.key[1] if state.key is not None else ())


def lock_all(
    records: Iterable[R],
    mode: str = "update",
    *,
    nowait: bool = False,
    timeout: float | None = None,
    commit: bool = True,
) -> contextlib.AbstractContextManager[list[R]]:
    """Lock the rows of several records in one deterministic order.

    Rows are locked table by table (by the table's schema-qualified name) and, in a
    table, by primary key, so two callers locking overlapping sets in any order
    can't deadlock each other. Otherwise like ``record.lock()``: flush first,
    refresh every record from its locked row, commit on normal exit of the
    outermost block. With ``nowait``/``timeout`` either every row is locked or none
    (the attempt runs in one savepoint); ``timeout`` bounds each single lock wait.

    :param records: persistent records of one session (an iterable).
    :param mode: ``"update"``, ``"no_key_update"``, ``"share"`` or ``"key_share"``.
    :param nowait: raise :class:`~chrononaut.RecordLockedError` at once if a row is locked.
    :param timeout: seconds (> 0) to wait for each row before :class:`~chrononaut.LockTimeoutError`.
    :param commit: commit on normal exit of the outermost lock block.
    :returns: a context manager yielding the records as a list, in locking order.
    """
    timeout_ms = _check_options(mode, nowait, timeout, commit)
    if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):
        raise TypeError(f"records must be an iterable of records, got {type(records).__name__}")
    items = list(records)
    checked: list[tuple[InstanceState[Any], Session]] = [check_record(r) for r in items]
    sessions = {id(s): s for _, s in checked}
    if len(sessions) > 1:
        raise ChrononautException("lock_all() needs records of one session")
    from chrononaut.locking._advisory import default_session

    session = next(iter(sessions.values())) if sessions else default_session()
    unique: dict[int, InstanceState[Any]] = {}
    for state, _ in checked:
        unique.setdefault(id(state), state)
    states = sorted(unique.values(), key=_sort_key)
    # The session's identity map holds records weakly: keep them alive for the block.
    by_state = {id(state): record for (state, _), record in zip(checked, items, strict=True)}
    ordered: list[R] = [by_state[id(state)] for state in states]

    def acquire() -> list[R]:
        if not states:
            return []
        session.flush()
        conn = session.connection(bind_arguments={"mapper": states[0].mapper})

        def run(old: str | None) -> None:
            _lock_many(session, conn, states, mode, nowait)

        _run_attempt(
            session, conn, run, states, nowait=nowait, timeout_ms=timeout_ms, restore_after=True
        )
        return ordered

    return _block.transaction_block(session, commit, acquire)


def _lock_many(
    session: Session,
    conn: Connection,
    states: Sequence[InstanceState[Any]],
    mode: str,
    nowait: bool,
) -> None:
    """Lock sorted ``states``: one statement per table when they share a mapper."""
    groups: list[list[InstanceState[Any]]] = []
    for state in states:
        if groups and target(groups[-1][0].mapper).table is target(state.mapper).table:
            groups[-1].append(state)
        else:
            groups.append([state])
    actors: dict[type[Any], str | None] = {}

    def actor(state: InstanceState[Any]) -> str | None:
        cls = state.class_
        if cls not in actors:
            actors[cls] = _actor_id(cls)
        return actors[cls]

    for group in groups:
        mappers = {s.mapper for s in group}
        if len(group) == 1 or len(mappers) > 1:
            for state in group:
                _lock_one(
                    session, state, mode, nowait, None, user_id=actor(state), in_savepoint=True
                )
            continue
        state0 = group[0]
        tgt = target(state0.mapper)
        pks = [s.key[1] if s.key is not None else () for s in group]
        user_id = actor(state0)
        stmt = _many_statement(tgt, mode, nowait)
        values: list[Any] = [pk[0] for pk in pks] if len(tgt.pk_columns) == 1 else pks
        rows = session.execute(stmt, {"pks": values, "app": app_name(user_id)}).all()
        if len(rows) != len(group):
            found = {id(row[0]) for row in rows}
            missing = [describe(s.obj()) for s in group if id(s.obj()) not in found]
            raise ChrononautException(
                f"cannot lock {', '.join(missing)}: deleted by another transaction"
            )
        take_markers(conn, tgt, pks, mode)
        for state, pk in zip(group, pks, strict=True):
            record_row_lock(session, (state.key[0] if state.key else None, pk), mode, user_id)


def lock_next(
    cls: type[R],
    *criteria: Any,
    mode: str = "update",
    order_by: Any = None,
    commit: bool = True,
    session: Session | None = None,
) -> contextlib.AbstractContextManager[R | None]:
    """Claim the first row of ``cls`` matching ``criteria`` that no one has locked.

    ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1``: concurrent workers each get a
    different row (or ``None`` when every matching row is taken or none matches).

    :param cls: a mapped class.
    :param criteria: SQLAlchemy filter expressions (``Job.state == "queued"``).
    :param mode: the row-lock mode (as for ``record.lock()``).
    :param order_by: expression(s) deciding which free row comes first; default:
        the primary key (oldest first for serial keys).
    :param commit: commit on normal exit of the outermost lock block.
    :param session: the session; default: the model's Flask-SQLAlchemy session.
    :returns: a context manager yielding the locked record or ``None``.
    """
    check_mode(mode)
    check_bool("commit", commit)
    mapper = sa.inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise TypeError(f"lock_next() needs a mapped class, got {cls!r}")
    if session is None:
        from chrononaut.locking._advisory import default_session

        fsa = getattr(cls, "__fsa__", None)
        real = check_session(fsa.session) if fsa is not None else default_session()
    else:
        real = check_session(session)
    tgt = target(mapper)
    if order_by is None:
        ordering: list[Any] = list(tgt.pk_columns)
    elif isinstance(order_by, (list, tuple)):
        ordering = list(order_by)
    else:
        ordering = [order_by]
    inner = sa.select(cls).where(*criteria).order_by(*ordering).limit(1)
    inner = for_update(inner, mode, skip_locked=True)
    stmt = _entity_statement(inner, cls, marker=False, restore_timeout=False)

    def acquire() -> R | None:
        real.flush()
        user_id = _actor_id(cls)
        conn = real.connection(bind_arguments={"mapper": mapper})
        row = real.execute(stmt, {"app": app_name(user_id)}).first()
        if row is None:
            return None
        record: R = row[0]
        state = sa.inspect(record)
        pk = state.key[1] if state.key is not None else ()
        take_markers(conn, tgt, [pk], mode)
        record_row_lock(real, (state.key[0] if state.key else None, pk), mode, user_id)
        return record

    return _block.transaction_block(real, commit, acquire)


def record_holder(record: object) -> LockHolder | None:
    """Who holds a lock on ``record``'s row (``record.lock_holder()``), or ``None``."""
    state, session = check_record(record, "look up the lock holder of")
    tgt = target(state.mapper)
    conn = session.connection(bind_arguments={"mapper": state.mapper})
    pk = state.key[1] if state.key is not None else ()
    return row_holder(conn, tgt.table, tgt.pk_columns, pk, exclude_self=False)
