"""Row locks: ``record.lock()``, :func:`lock_all` and ``Model.lock_next()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import OID, REGCLASS
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session, aliased
from sqlalchemy.orm.state import InstanceState

from chrononaut._context import resolve_actor
from chrononaut._db_errors import sqlstate
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
    check_bool,
    check_mode,
    check_session,
    check_wait,
    default_session,
    held_by,
    record_row_lock,
    session_tag,
)
from chrononaut.locking._holders import physical_regclass, row_holder
from chrononaut.locking._keys import row_marker
from chrononaut.locking._records import Target, check_record, describe, primary_key, target

R = TypeVar("R")

#: lock_all takes marker locks for at most this many rows per call: each one
#: uses a slot of the server's shared lock table (max_locks_per_transaction x
#: max_connections). Rows beyond it are still found through ``xmax``.
MARKER_LIMIT = 64

_LOCKED_CTE = "chrononaut_locked"


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


def _tagged_while_waiting(inner: sa.Select[Any]) -> sa.Select[Any]:
    """``inner`` tagging the transaction before it waits for a row lock.

    A filter without columns, volatile so it is evaluated per row before the rows
    are locked: a waiter shows its user in ``pg_stat_activity`` (for ``flask
    chrononaut locks``). A timed or ``nowait`` attempt's savepoint takes the tag
    back when it fails; any other failed wait aborts the transaction.
    """
    tag = sa.func.set_config("application_name", sa.bindparam("app", type_=sa.Text), True)
    return inner.where(tag.is_not(None))


def _single_statement(tgt: Target, mode: str, variant: str) -> sa.Select[Any]:
    """``variant``: ``wait``, ``nowait`` or ``timeout`` (restores lock_timeout)."""
    stmt = tgt.statements.get((mode, variant))
    if stmt is None:
        cls = tgt.mapper.class_
        inner = sa.select(cls).where(
            *[col == sa.bindparam(f"pk_{i}") for i, col in enumerate(tgt.pk_columns)]
        )
        if variant != "nowait":
            inner = _tagged_while_waiting(inner)
        inner = for_update(inner, mode, nowait=variant == "nowait")
        stmt = _entity_statement(inner, cls, marker=True, restore_timeout=variant == "timeout")
        tgt.statements[(mode, variant)] = stmt
    return stmt


def _many_statement(tgt: Target, mode: str, nowait: bool) -> sa.Select[Any]:
    """Lock rows ``pk IN (...)`` in primary-key order (markers follow separately)."""
    variant = "many-nowait" if nowait else "many"
    stmt = tgt.statements.get((mode, variant))
    if stmt is None:
        cls = tgt.mapper.class_
        inner = sa.select(cls).where(tgt.pk_in("pks")).order_by(*tgt.pk_columns)
        if not nowait:
            inner = _tagged_while_waiting(inner)
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


def take_markers(conn: Connection, tgt: Target, pks: Sequence[tuple[Any, ...]], mode: str) -> None:
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
    who = held_by(holder)
    if nowait:
        return RecordLockedError(
            f"{what} is locked by another transaction{who}; try again later or wait with timeout=",
            holder=holder,
        )
    return LockTimeoutError(
        f"could not lock {what} within {(timeout_ms or 0) / 1000:g} s{who}", holder=holder
    )


def _holder_finder(state: InstanceState[Any]) -> tuple[object, Any]:
    tgt = target(state.mapper)
    pk = primary_key(state)

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
    pk = primary_key(state)
    params: dict[str, Any] = {f"pk_{i}": value for i, value in enumerate(pk)}
    params.update(tgt.marker(conn, pk, mode))
    params["app"] = session_tag(session, user_id)
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
    return (tgt.table.fullname, primary_key(state))


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
        pks = [primary_key(s) for s in group]
        user_id = actor(state0)
        stmt = _many_statement(tgt, mode, nowait)
        rows = session.execute(
            stmt, {"pks": tgt.pk_values(pks), "app": session_tag(session, user_id)}
        ).all()
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
    :param session: the session; default: the current Flask app's ``db.session``.
    :returns: a context manager yielding the locked record or ``None``.
    """
    check_mode(mode)
    check_bool("commit", commit)
    mapper = sa.inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise TypeError(f"lock_next() needs a mapped class, got {cls!r}")
    real = check_session(session) if session is not None else default_session()
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
        row = real.execute(stmt, {"app": session_tag(real, user_id)}).first()
        if row is None:
            return None
        record: R = row[0]
        state = sa.inspect(record)
        pk = primary_key(state)
        take_markers(conn, tgt, [pk], mode)
        record_row_lock(real, (state.key[0] if state.key else None, pk), mode, user_id)
        return record

    return _block.transaction_block(real, commit, acquire)


def record_holder(record: object) -> LockHolder | None:
    """Who holds a lock on ``record``'s row (``record.lock_holder()``), or ``None``."""
    state, session = check_record(record, "look up the lock holder of")
    tgt = target(state.mapper)
    conn = session.connection(bind_arguments={"mapper": state.mapper})
    pk = primary_key(state)
    return row_holder(conn, tgt.table, tgt.pk_columns, pk, exclude_self=False)
