"""Edit leases: record locks that span requests.

A lease is a row of ``chrononaut_lease`` naming the holder of a record and when
the lease ends. Chrononaut enforces it on every write made through a versioned
session:

- a flush: after SQLAlchemy's (and Chrononaut's) UPDATE/DELETE statements hold
  the row locks, one statement per leased table reads the live leases of the
  changed records. Under READ COMMITTED a statement that *waited* on a row lock
  still reads other tables with the snapshot it started with, so the check is a
  statement of its own, sent after the write, which sees every lease committed
  before the write got its row lock. For a holder whose transaction did not know
  the lease, the same statement adds ``change_info["lease"]`` to the history
  rows the flush wrote;
- an ORM bulk UPDATE/DELETE or an upsert: before the statement runs, the target
  rows are locked (``FOR NO KEY UPDATE``) and then checked, in two statements.

``record.lease()`` touches the record's row with a no-op ``UPDATE`` (key = key)
while it writes the lease: a writer waits for it like for any writer, and at
REPEATABLE READ / SERIALIZABLE a writer whose snapshot predates the lease gets
PostgreSQL's serialization failure instead of overwriting the lease holder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
import secrets
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.dml import OnConflictDoUpdate
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState

from chrononaut._context import own_listener, resolve_actor, versioning_suppressed
from chrononaut._lease_table import LEASE_TABLE, lease_table
from chrononaut.errors import ChrononautException, Lease, RecordLeasedError

__all__ = [
    "DEFAULT_TTL",
    "LEASE_TABLE",
    "MAX_TTL",
    "LeaseMixin",
    "lease_table",
    "live_leases",
]

#: How long ``record.lease()`` lasts unless told otherwise.
DEFAULT_TTL = dt.timedelta(minutes=15)
#: The longest lease: a forgotten browser tab must not hold a record for days.
MAX_TTL = dt.timedelta(hours=24)

_L = TypeVar("_L", bound="LeaseMixin")

_KNOWN_KEY = "chrononaut.leases_known"
_FLUSH_KEY = "chrononaut.leases_flush"
_INFO_KEY = "chrononaut.leases_info"
_GUARD = "chrononaut_lease_internal"
_SAVEPOINT = "chrononaut_lease_attempt"
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


# -- what is leased ---------------------------------------------------------------


class _Target:
    """What lease statements of one mapper need, built once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        base = mapper.base_mapper
        self.mapper = mapper
        self.table: sa.Table = base.local_table  # type: ignore[assignment]
        self.pk_columns: list[sa.Column[Any]] = list(base.primary_key)  # type: ignore[arg-type]
        self.leases = lease_table(self.table.metadata)
        self._watched: frozenset[str] | None = None

    @property
    def watched(self) -> frozenset[str]:
        """Attribute keys whose change the lease protects (tracked and hidden)."""
        if self._watched is None:
            meta = _version_meta(self.mapper.class_)
            if meta is not None:
                self._watched = meta.watched
            else:
                self._watched = frozenset(p.key for p in self.mapper.column_attrs)
        return self._watched

    def table_name(self, conn: Connection) -> str:
        """The physical name of the base table on ``conn`` (schema translated)."""
        schema = self.table.schema
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        if schema in translate:
            schema = translate[schema]
        return f"{schema}.{self.table.name}" if schema else self.table.name


_targets: weakref.WeakKeyDictionary[Mapper[Any], _Target] = weakref.WeakKeyDictionary()


def _leased(mapper: Mapper[Any]) -> _Target | None:
    """The lease target of ``mapper``, ``None`` when its class has no leases."""
    found = _targets.get(mapper)
    if found is None:
        if not getattr(mapper.class_, "__chrononaut_leases__", False):
            return None
        found = _targets[mapper] = _Target(mapper)
    return found


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _record_key(pk: tuple[Any, ...]) -> str:
    """The primary key as the JSON text stored in ``chrononaut_lease.record_key``."""
    return json.dumps([_plain(v) for v in pk], separators=(",", ":"), ensure_ascii=False)


# -- checks made before any statement ---------------------------------------------


def _check_ttl(ttl: object, *, optional: bool = False) -> dt.timedelta | None:
    if ttl is None and optional:
        return None
    if not isinstance(ttl, dt.timedelta):
        raise TypeError(f"ttl must be a datetime.timedelta, got {type(ttl).__name__}")
    if ttl <= dt.timedelta(0):
        raise ValueError(f"ttl must be positive, got {ttl}")
    if ttl > MAX_TTL:
        raise ValueError(f"ttl must be at most 24 hours, got {ttl}; renew the lease instead")
    return ttl


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _check_note(note: object) -> str | None:
    if note is None:
        return None
    if not isinstance(note, str):
        raise TypeError(f"note must be a str or None, got {type(note).__name__}")
    if "\x00" in note:
        raise ValueError("note must not contain NUL characters")
    return note


def _check_token(token: object) -> str:
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, got {type(token).__name__}")
    if not _TOKEN_RE.match(token):
        raise ChrononautException("unknown lease token: take the lease again with record.lease()")
    return token


def _checked(record: object, action: str) -> tuple[InstanceState[Any], Session, _Target]:
    from chrononaut.locking._records import check_record

    state, session = check_record(record, action)
    target = _leased(state.mapper)
    if target is None:
        raise ChrononautException(
            f"{type(record).__name__} has no edit leases: set __chrononaut_leases__ = True "
            f"on the model (and create the {LEASE_TABLE} table)"
        )
    return state, session, target


def _pk(state: InstanceState[Any]) -> tuple[Any, ...]:
    return tuple(state.key[1]) if state.key is not None else ()


def _describe(cls: type[Any], pk: tuple[Any, ...]) -> str:
    return f"{cls.__name__}({', '.join(repr(v) for v in pk)})"


def _leased_error(cls: type[Any], pk: tuple[Any, ...], lease: Lease) -> RecordLeasedError:
    until = lease.expires_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return RecordLeasedError(
        f"{_describe(cls, pk)} is being edited by user {lease.user_id!r} (edit lease until "
        f"{until}); wait for it to end, ask them to release it, or take it over with "
        f"lease(force=True)",
        lease=lease,
    )


# -- what this transaction knows ----------------------------------------------------


@dataclass(frozen=True)
class _Known:
    user_id: str
    acquired_at: dt.datetime
    expires_at: dt.datetime
    note: str | None
    took_over_from: str | None

    def lease(self, token: str | None = None) -> Lease:
        return Lease(self.user_id, self.acquired_at, self.expires_at, self.note, token)

    def change_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "user_id": self.user_id,
            "acquired_at": self.acquired_at.astimezone(dt.timezone.utc).isoformat(),
            "expires_at": self.expires_at.astimezone(dt.timezone.utc).isoformat(),
        }
        if self.took_over_from is not None:
            info["took_over_from"] = self.took_over_from
        return info


def _known(session: Session) -> dict[tuple[str, str], _Known | None]:
    """Leases read or written in the session's current transaction (key -> lease)."""
    transaction = session.get_transaction()
    entry = session.info.get(_KNOWN_KEY)
    if entry is None or entry[0] is not transaction:
        entry = (transaction, {})
        session.info[_KNOWN_KEY] = entry
    known: dict[tuple[str, str], _Known | None] = entry[1]
    return known


def _from_row(row: Any) -> _Known:
    return _Known(row.user_id, row.acquired_at, row.expires_at, row.note, row.took_over_from)


# -- statements -------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _statements(leases: sa.Table) -> dict[str, Any]:
    """The statements on one lease table, built once."""
    c = leases.c
    # The clock at each statement, not now() (the transaction's start): a lease
    # taken late in a long transaction lasts its whole ttl, and liveness is
    # judged at the moment of the check.
    now = sa.func.clock_timestamp()
    t = sa.bindparam("t", type_=sa.Text)
    k = sa.bindparam("k", type_=sa.Text)
    ttl = sa.bindparam("ttl", type_=sa.Interval)
    columns = (c.record_key, c.user_id, c.acquired_at, c.expires_at, c.note, c.took_over_from)
    ins = pg_insert(leases).values(
        table_name=t,
        record_key=k,
        user_id=sa.bindparam("u", type_=sa.Text),
        token=sa.bindparam("tok", type_=sa.Text),
        acquired_at=now,
        expires_at=now + ttl,
        ttl=ttl,
        note=sa.bindparam("note", type_=sa.Text),
        took_over_from=None,
    )
    new = ins.excluded
    mine = sa.and_(c.user_id == new.user_id, c.expires_at > now)
    others = sa.and_(c.user_id != new.user_id, c.expires_at > now)
    take = ins.on_conflict_do_update(
        index_elements=[c.table_name, c.record_key],
        set_={
            "user_id": new.user_id,
            "token": sa.case((mine, c.token), else_=new.token),
            "acquired_at": sa.case((mine, c.acquired_at), else_=new.acquired_at),
            "expires_at": new.expires_at,
            "ttl": new.ttl,
            "note": sa.case((mine, sa.func.coalesce(new.note, c.note)), else_=new.note),
            "took_over_from": sa.case(
                (others, c.user_id), (mine, c.took_over_from), else_=sa.null()
            ),
        },
        where=sa.or_(
            sa.bindparam("force", type_=sa.Boolean),
            c.user_id == new.user_id,
            c.expires_at <= now,
        ),
    ).returning(c.token, *columns)
    one = sa.and_(c.table_name == t, c.record_key == k)
    live = c.expires_at > now
    many = sa.and_(
        c.table_name == t, c.record_key == sa.any_(sa.bindparam("keys", type_=ARRAY(sa.Text)))
    )
    # The token's lease, held by the acting user (when there is one: a token is
    # not a pass for somebody else's lease).
    by_token = sa.and_(
        c.token == sa.bindparam("tok", type_=sa.Text),
        c.user_id
        == sa.func.coalesce(sa.cast(sa.bindparam("holder", type_=sa.Text), sa.Text), c.user_id),
    )
    renew = (
        sa.update(leases)
        .where(one, live, by_token)
        .values(
            expires_at=now + sa.func.coalesce(ttl, c.ttl),
            ttl=sa.func.coalesce(ttl, c.ttl),
        )
        .returning(c.token, *columns)
    )
    release = sa.delete(leases).where(one, live, by_token).returning(c.user_id)
    holder = sa.select(*columns).where(one, live)
    check = sa.select(*columns).where(many, live)
    gone = (
        sa.delete(leases)
        .where(
            c.table_name == t,
            c.record_key == sa.any_(sa.bindparam("dkeys", type_=ARRAY(sa.Text))),
            c.user_id == sa.bindparam("actor", type_=sa.Text),
        )
        .cte("chrononaut_lease_gone")
    )
    # A takeover is recorded on the new holder's next change only: the check of
    # that change clears it (the main query still reads the value from before).
    cleared = (
        sa.update(leases)
        .where(
            many,
            live,
            c.user_id == sa.bindparam("actor", type_=sa.Text),
            c.took_over_from.is_not(None),
        )
        .values(took_over_from=sa.null())
        .cte("chrononaut_lease_cleared")
    )
    return {
        "take": take,
        "renew": renew,
        "release": release,
        "holder": holder,
        "check": check,
        "check_mine": check.add_cte(cleared),
        "check_mine_delete": check.add_cte(cleared).add_cte(gone),
        "cleared": cleared,
        "gone": gone,
    }


def _sql_text(value: str) -> sa.ColumnElement[str]:
    """A constant string as SQL text (no parameter: PostgreSQL must not guess its
    type in ``jsonb_build_object(VARIADIC "any")``)."""
    return sa.literal_column("'" + value.replace("'", "''") + "'", sa.Text)


def _utc_isoformat(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """``column`` (timestamptz) as Python's ``value.astimezone(utc).isoformat()``.

    ``2026-12-01T10:05:00.120000+00:00``, and without the fraction when the
    microseconds are 0 (Python omits it then). ``to_char`` of the UTC wall-clock
    time, because both ``to_char(timestamptz)`` and ``to_jsonb`` depend on the
    session's ``TimeZone`` and ``to_jsonb`` also trims trailing zeros. One
    ``to_char`` and one ``replace``: psycopg2 sends every check unprepared, and
    each call and ``||`` is resolved again each time.
    """
    utc = sa.func.timezone(_sql_text("UTC"), column, type_=sa.DateTime())
    text = sa.func.to_char(utc, _sql_text('YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), type_=sa.Text)
    # '.000000' is the whole fraction exactly when there are no microseconds.
    return sa.func.replace(text, _sql_text(".000000+"), _sql_text("+"), type_=sa.Text)


def _lease_json(leases: Any) -> sa.ColumnElement[Any]:
    """``_Known.change_info()`` of a lease row, built in SQL.

    ``jsonb_strip_nulls`` drops ``took_over_from`` when it is NULL; the other
    values are never NULL (NOT NULL columns).
    """
    c = leases.c
    return sa.func.jsonb_strip_nulls(
        sa.func.jsonb_build_object(
            _sql_text("user_id"),
            c.user_id,
            _sql_text("acquired_at"),
            _utc_isoformat(c.acquired_at),
            _sql_text("expires_at"),
            _utc_isoformat(c.expires_at),
            _sql_text("took_over_from"),
            c.took_over_from,
        ),
        type_=JSONB,
    )


#: A history table whose rows the check may add ``change_info["lease"]`` to, and
#: the keys of its primary-key columns (without ``version``), in ``TableMap.pk`` order.
_HistorySpec = tuple[sa.Table, tuple[str, ...]]


def _typed(name: str, type_: Any) -> sa.Cast[Any]:
    # Explicit casts: PostgreSQL must not guess the types of these parameters (a
    # parameter in a subquery's select list would otherwise be text).
    return sa.cast(sa.bindparam(name, type_=type_), type_)


def _typed_array(name: str, type_: Any) -> sa.Cast[Any]:
    return _typed(name, ARRAY(type_))


def _noted_cte(found: Any, spec: _HistorySpec, j: int, single: bool) -> Any:
    """``UPDATE <history> SET change_info["lease"] = ...`` for the history rows
    (key, version) named by the parameters ``chrononaut_n<j>_*`` whose record has
    a lease of the acting user among the check's rows ``found`` and whose
    change_info has no "lease" yet.

    ``single``: one row, plain parameters (a cheaper plan for the one-record
    flush of a request); else arrays that ``unnest`` turns into rows. Joining
    ``found`` rather than the lease table again keeps the plan small: psycopg2
    sends the check unprepared, and this CTE is planned and started for every
    check of a free record too.
    """
    history, key_columns = spec
    types = [history.c[k].type for k in key_columns]
    if single:
        # A one-row subquery of plain parameters (PostgreSQL pulls it up: the plan
        # is that of constants), joined like the unnest so nothing is a cross join.
        rows: Any = sa.select(
            _typed(f"chrononaut_n{j}_rk", sa.Text()).label("rk"),
            *[_typed(f"chrononaut_n{j}_k{i}", t).label(f"k{i}") for i, t in enumerate(types)],
            _typed(f"chrononaut_n{j}_v", sa.Integer()).label("v"),
        ).subquery(f"chrononaut_noted_{j}")
    else:
        arrays = [
            _typed_array(f"chrononaut_n{j}_rk", sa.Text()),
            *[_typed_array(f"chrononaut_n{j}_k{i}", t) for i, t in enumerate(types)],
            _typed_array(f"chrononaut_n{j}_v", sa.Integer()),
        ]
        rows = (
            sa.func.unnest(*arrays)
            .table_valued(
                sa.column("rk", sa.Text()),
                *[sa.column(f"k{i}", t) for i, t in enumerate(types)],
                sa.column("v", sa.Integer()),
            )
            .render_derived(name=f"chrononaut_noted_{j}")
        )
    record_key = rows.c.rk
    keys = [rows.c[f"k{i}"] for i in range(len(types))]
    version = rows.c.v
    change_info = history.c.change_info
    return (
        sa.update(history)
        .where(
            found.c.user_id == sa.bindparam("actor", type_=sa.Text),
            found.c.record_key == record_key,
            *[history.c[k] == value for k, value in zip(key_columns, keys, strict=True)],
            history.c.version == version,
            sa.not_(change_info.has_key("lease")),
        )
        .values(
            {
                change_info: sa.func.jsonb_set(
                    change_info, _sql_text("{lease}"), _lease_json(found), type_=JSONB
                )
            }
        )
        .cte(f"chrononaut_lease_noted_{j}")
    )


@functools.lru_cache(maxsize=64)
def _noted_check(
    leases: sa.Table, deleting: bool, histories: tuple[_HistorySpec, ...], single: bool
) -> Any:
    """The acting user's check (``check_mine`` / ``check_mine_delete``) that also
    adds ``change_info["lease"]`` to the history rows the flush just wrote for the
    holder, when the transaction did not know the lease before the flush.

    The check's SELECT is a CTE (``chrononaut_lease_found``) that the main query
    returns and the history ``UPDATE`` joins: the lease table is read once.
    One statement, so one snapshot: the CTEs read the lease rows as they were
    before ``chrononaut_lease_cleared`` clears a takeover, and the history rows
    record ``took_over_from`` like the lease the check returns. A refused flush
    raises after this statement and rolls back with everything it wrote.
    """
    statements = _statements(leases)
    found = statements["check"].cte("chrononaut_lease_found")
    statement = sa.select(*found.c).add_cte(statements["cleared"])
    if deleting:
        statement = statement.add_cte(statements["gone"])
    for j, spec in enumerate(histories):
        statement = statement.add_cte(_noted_cte(found, spec, j, single))
    return statement


def _touch(target: _Target) -> sa.Update:
    """``UPDATE base SET pk = pk WHERE pk = :pk_i RETURNING 1``: a writer's row lock.

    The key keeps its value, so PostgreSQL takes the ``FOR NO KEY UPDATE`` lock
    of a non-key update (foreign keys referencing the row are not blocked).
    """
    first = target.pk_columns[0]
    # Columns with an ``onupdate`` keep their values too: Core would otherwise
    # apply the default (an ``updated_at`` moving, unversioned, on every lease).
    kept = {first.key: first}
    for col in target.table.c:
        if col.onupdate is not None:
            kept[col.key] = col
    return (
        sa.update(target.table)
        .where(*[col == sa.bindparam(f"pk_{i}") for i, col in enumerate(target.pk_columns)])
        .values(kept)
        .returning(sa.literal(1))
    )


# -- record methods -----------------------------------------------------------------


def _actor_of(cls: type[Any]) -> str:
    user_id = resolve_actor(cls).user_id
    if user_id is None:
        raise ChrononautException(
            "an edit lease needs an acting user: log the user in (Flask-Login) or wrap "
            "the call in chrononaut.acting_as(user_id)"
        )
    return user_id


def _commit_block(session: Session, commit: bool, acquire: Callable[[], Lease]) -> Lease:
    from chrononaut.locking import _block

    with _block.transaction_block(session, commit, acquire) as value:
        return value


def _take(
    record: object,
    ttl: dt.timedelta = DEFAULT_TTL,
    *,
    note: str | None = None,
    force: bool = False,
    commit: bool = True,
) -> Lease:
    """``record.lease()``: see :meth:`LeaseMixin.lease`."""
    ttl = _check_ttl(ttl)  # type: ignore[assignment]
    note = _check_note(note)
    _check_bool("force", force)
    _check_bool("commit", commit)
    state, session, target = _checked(record, "lease")
    cls = type(record)
    user_id = _actor_of(cls)
    pk = _pk(state)

    def acquire() -> Lease:
        session.flush()
        conn = session.connection(bind_arguments={"mapper": state.mapper})
        name = target.table_name(conn)
        key = _record_key(pk)
        statements = _statements(target.leases)
        conn.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
        try:
            touched = conn.execute(_touch(target), {f"pk_{i}": v for i, v in enumerate(pk)}).first()
            if touched is None:
                raise ChrononautException(
                    f"cannot lease {_describe(cls, pk)}: its row was deleted by another transaction"
                )
            row = conn.execute(
                statements["take"],
                {
                    "t": name,
                    "k": key,
                    "u": user_id,
                    "tok": secrets.token_hex(16),
                    "ttl": ttl,
                    "note": note,
                    "force": force,
                },
            ).first()
            if row is None:
                held = conn.execute(statements["holder"], {"t": name, "k": key}).first()
                if held is None:  # expired between the two statements: try once more
                    raise ChrononautException(
                        f"the lease of {_describe(cls, pk)} changed hands meanwhile; try again"
                    )
                raise _leased_error(cls, pk, _from_row(held).lease())
        except BaseException:
            if conn.in_transaction() and not conn.invalidated:
                try:
                    conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    conn.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                except sa.exc.DBAPIError:
                    pass  # the original error says more; the transaction is lost anyway
            raise
        conn.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        found = _from_row(row)
        _known(session)[(name, key)] = found
        return found.lease(row.token)

    return _commit_block(session, commit, acquire)


def _holder(record: object) -> Lease | None:
    """``record.lease_holder()``: see :meth:`LeaseMixin.lease_holder`."""
    state, session, target = _checked(record, "look up the lease of")
    conn = session.connection(bind_arguments={"mapper": state.mapper})
    name, key = target.table_name(conn), _record_key(_pk(state))
    row = conn.execute(_statements(target.leases)["holder"], {"t": name, "k": key}).first()
    found = None if row is None else _from_row(row)
    _known(session)[(name, key)] = found
    return None if found is None else found.lease()


def _renew(
    record: object, token: str, ttl: dt.timedelta | None = None, *, commit: bool = True
) -> Lease:
    """``record.renew_lease()``: see :meth:`LeaseMixin.renew_lease`."""
    token = _check_token(token)
    ttl = _check_ttl(ttl, optional=True)
    _check_bool("commit", commit)
    state, session, target = _checked(record, "renew the lease of")
    pk = _pk(state)
    holder = resolve_actor(type(record)).user_id

    def acquire() -> Lease:
        conn = session.connection(bind_arguments={"mapper": state.mapper})
        name, key = target.table_name(conn), _record_key(pk)
        row = conn.execute(
            _statements(target.leases)["renew"],
            {"t": name, "k": key, "tok": token, "ttl": ttl, "holder": holder},
        ).first()
        if row is None:
            raise ChrononautException(
                f"no live lease of {_describe(type(record), pk)} held by the acting user "
                f"has this token (unknown, expired, released, taken over or another "
                f"user's): take the lease again with lease()"
            )
        found = _from_row(row)
        _known(session)[(name, key)] = found
        return found.lease(row.token)

    return _commit_block(session, commit, acquire)


def _release(record: object, token: str, *, commit: bool = True) -> None:
    """``record.release_lease()``: see :meth:`LeaseMixin.release_lease`."""
    token = _check_token(token)
    _check_bool("commit", commit)
    state, session, target = _checked(record, "release the lease of")
    pk = _pk(state)
    holder = resolve_actor(type(record)).user_id

    def acquire() -> None:
        # Pending changes are the holder's: they are written while the lease holds.
        session.flush()
        conn = session.connection(bind_arguments={"mapper": state.mapper})
        name, key = target.table_name(conn), _record_key(pk)
        row = conn.execute(
            _statements(target.leases)["release"],
            {"t": name, "k": key, "tok": token, "holder": holder},
        ).first()
        if row is None:
            raise ChrononautException(
                f"no live lease of {_describe(type(record), pk)} held by the acting user "
                f"has this token (unknown, expired, released, taken over or another "
                f"user's); nothing to release"
            )
        _known(session)[(name, key)] = None

    from chrononaut.locking import _block

    with _block.transaction_block(session, commit, acquire):
        pass


class LeaseMixin:
    """Edit leases for a model that sets ``__chrononaut_leases__ = True``.

    :class:`~chrononaut.Versioned` includes it; the methods refuse to work on a
    model without ``__chrononaut_leases__``. Defining such a model defines the
    ``chrononaut_lease`` table in the model's MetaData, so ``create_all()`` and
    Alembic autogenerate see it.
    """

    __slots__ = ()
    __chrononaut_leases__: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__chrononaut_leases__", False):
            return
        mapper = sa.inspect(cls, raiseerr=False)
        if isinstance(mapper, Mapper) and mapper.class_ is cls:
            _define_table(mapper)
        else:
            # Metaclass-based declarative maps after __init_subclass__.
            event.listen(cls, "after_mapper_constructed", _on_mapper_constructed)

    def lease(
        self,
        ttl: dt.timedelta = DEFAULT_TTL,
        *,
        note: str | None = None,
        force: bool = False,
        commit: bool = True,
    ) -> Lease:
        """Take (or renew) an edit lease on this record for the acting user.

        ::

            lease = account.lease(timedelta(minutes=10), note="editing the address")
            # committed: every other request now sees Alice as the editor
            form.lease_token.data = lease.token

        The record's row is locked like by any writer while the lease is written;
        then the session's transaction commits like the exit of an outermost
        ``record.lock()`` block (inside a lock block, or with ``commit=False``, the
        lease joins the transaction instead). Taking a lease you already hold
        renews it and keeps its token.

        :param ttl: how long it lasts (a ``timedelta``, > 0 and ≤ 24 h).
        :param note: free text others see with the lease.
        :param force: take the lease over from another holder; their next change
            records ``change_info["lease"]["took_over_from"]``.
        :param commit: commit when not inside a lock block.
        :returns: the lease, with its token.
        :raises RecordLeasedError: someone else holds a live lease (without ``force``).
        :raises TypeError: ``ttl`` is not a ``timedelta``, ``note`` not a str.
        :raises ValueError: ``ttl`` ≤ 0 or > 24 h.
        :raises ChrononautException: no acting user; the record is transient,
            pending, detached, deleted, or of a model without leases.
        """
        return _take(self, ttl, note=note, force=force, commit=commit)

    def lease_holder(self) -> Lease | None:
        """The live edit lease on this record (without its token), or ``None``."""
        return _holder(self)

    def renew_lease(
        self, token: str, ttl: dt.timedelta | None = None, *, commit: bool = True
    ) -> Lease:
        """Extend the lease ``token`` names (the heartbeat of an open edit form).

        :param token: :attr:`Lease.token` of the lease.
        :param ttl: the new time from now; default: the ttl it was taken with.
        :param commit: commit when not inside a lock block.
        :raises ChrononautException: the token is unknown, expired, released or
            was taken over.
        """
        return _renew(self, token, ttl, commit=commit)

    def release_lease(self, token: str, *, commit: bool = True) -> None:
        """Release the lease ``token`` names (on save or cancel).

        The session's pending changes are flushed first, while the lease still
        holds, so they carry ``change_info["lease"]``.

        :raises ChrononautException: the token is unknown, expired, released or
            was taken over.
        """
        _release(self, token, commit=commit)


#: Whether any leased model was defined in this process: until then the session
#: listeners return at once (apps without leases pay one attribute read per flush).
_any_leased = False


def _define_table(mapper: Mapper[Any]) -> None:
    global _any_leased
    _any_leased = True
    table = mapper.base_mapper.local_table
    if isinstance(table, sa.Table):
        lease_table(table.metadata)


def _on_mapper_constructed(mapper: Mapper[Any], class_: type[Any]) -> None:
    _define_table(mapper)


# -- enforcement ------------------------------------------------------------------


@dataclass
class _Pending:
    """The leased records of one flush in one base table."""

    target: _Target
    user_id: str | None
    conn: Connection
    name: str
    keys: dict[str, tuple[tuple[Any, ...], type[Any], InstanceState[Any] | None]]
    deleted: list[str]
    #: id(state) -> the record's version before the flush (its history row's version)
    versions: dict[int, int | None] = field(default_factory=dict)


def _watched_change(state: InstanceState[Any], watched: frozenset[str]) -> bool:
    committed = state.committed_state
    dict_ = state.dict
    manager = state.manager
    for key in committed:
        if key not in watched:
            continue
        old = committed[key]
        if old is NO_VALUE or not manager[key].impl.is_equal(old, dict_.get(key)):
            return True
    return False


#: What the check adds ``change_info["lease"]`` to, per history table: (record
#: key, primary key values in ``_HistorySpec`` order, history row version).
_Notes = dict[_HistorySpec, list[tuple[str, tuple[Any, ...], int]]]


def _lease_rows(pending: _Pending, keys: list[str], notes: _Notes | None = None) -> list[Any]:
    """The live leases of ``keys``, in one statement that also (for the acting user)
    clears a recorded takeover, deletes the leases of records being deleted and
    adds ``change_info["lease"]`` to the history rows in ``notes`` whose record
    the acting user holds."""
    statements = _statements(pending.target.leases)
    params: dict[str, Any] = {"t": pending.name, "keys": keys}
    if pending.user_id is None:
        stmt = statements["check"]
    else:
        params["actor"] = pending.user_id
        if pending.deleted:
            params["dkeys"] = pending.deleted
        if notes:
            specs = tuple(notes)
            single = all(len(fixes) == 1 for fixes in notes.values())
            stmt = _noted_check(pending.target.leases, bool(pending.deleted), specs, single)
            for j, spec in enumerate(specs):
                fixes = notes[spec]
                columns: list[list[Any]] = [
                    [rk for rk, _, _ in fixes],
                    *[[pk[i] for _, pk, _ in fixes] for i in range(len(spec[1]))],
                    [v for _, _, v in fixes],
                ]
                names = ["rk", *[f"k{i}" for i in range(len(spec[1]))], "v"]
                for name, values in zip(names, columns, strict=True):
                    params[f"chrononaut_n{j}_{name}"] = values[0] if single else values
        elif pending.deleted:
            stmt = statements["check_mine_delete"]
        else:
            stmt = statements["check_mine"]
    return list(pending.conn.execute(stmt, params).all())


def _history_spec(cls: type[Any]) -> tuple[_HistorySpec, list[str]] | None:
    """The history table of ``cls`` that carries change_info, with its key columns
    (and the attribute keys of their values); ``None`` when it has none or a key
    column cannot travel in an array (then a statement of its own patches it)."""
    meta = _version_meta(cls)
    base = None if meta is None else next((t for t in meta.tables if t.base), None)
    if base is None:
        return None
    history: sa.Table = base.history
    if any(isinstance(history.c[col].type, sa.ARRAY) for _, col in base.pk):
        return None
    return (history, tuple(col for _, col in base.pk)), [attr for attr, _ in base.pk]


def _refuse(pending: _Pending, rows: list[Any]) -> None:
    """Raise for the foreign live lease of the lowest primary key among ``rows``."""
    foreign = [r for r in rows if r.user_id != pending.user_id]
    if not foreign:
        return
    first = min(foreign, key=lambda r: _sortable(pending.keys[r.record_key][0]))
    pk, cls, _ = pending.keys[first.record_key]
    raise _leased_error(cls, pk, _from_row(first).lease())


def _record_lease_in_history(
    conn: Connection, cls: type[Any], fixes: list[tuple[dict[str, Any], int, _Known]]
) -> None:
    """Add ``change_info["lease"]`` to history rows just written for the holder.

    Only for changes made while the transaction did not know the lease before
    the write (the holder neither took nor renewed it in this transaction), in
    a statement of its own: after an ORM bulk statement (its history rows are
    written by the statement, after the check), and in a flush only for keys
    that cannot travel in arrays (a flush's check does it otherwise).
    ``fixes``: (primary key by attribute key, the history row's version, the
    lease).
    """
    meta = _version_meta(cls)
    base = None if meta is None else next((t for t in meta.tables if t.base), None)
    if base is None or not fixes:
        return
    history = base.history
    rows: list[dict[str, Any]] = []
    for pk, version, lease in fixes:
        row: dict[str, Any] = {"chrononaut_v": version}
        row["chrononaut_patch"] = {"lease": lease.change_info()}
        for i, (attr, _) in enumerate(base.pk):
            row[f"chrononaut_k{i}"] = pk.get(attr)
        rows.append(row)
    change_info = history.c.change_info
    statement = (
        sa.update(history)
        .where(
            *[
                history.c[col] == sa.bindparam(f"chrononaut_k{i}")
                for i, (_, col) in enumerate(base.pk)
            ],
            history.c.version == sa.bindparam("chrononaut_v"),
            sa.not_(change_info.has_key("lease")),
        )
        .values({change_info: change_info.op("||")(sa.bindparam("chrononaut_patch", type_=JSONB))})
    )
    conn.execute(statement, rows)


def _sortable(pk: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(type(v)), v) for v in pk)


class _Listeners:
    """The session listeners that enforce leases (one set per session factory)."""

    @own_listener
    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        if not _any_leased:
            return
        session.info.pop(_INFO_KEY, None)
        only = None if instances is None else {id(o) for o in instances}
        groups: dict[int, _Pending] = {}
        actors: dict[type[Any], str | None] = {}

        def add(obj: Any, deleted: bool) -> None:
            if only is not None and id(obj) not in only:
                return
            state = instance_state(obj)
            target = _leased(state.mapper)
            if target is None or state.key is None:
                return
            if not deleted and not _watched_change(state, target.watched):
                return
            cls = type(obj)
            if cls not in actors:
                actors[cls] = resolve_actor(cls).user_id
            pending = groups.get(id(target.table))
            if pending is None:
                conn = session.connection(bind_arguments={"mapper": state.mapper})
                pending = groups[id(target.table)] = _Pending(
                    target, actors[cls], conn, target.table_name(conn), {}, []
                )
            key = _record_key(_pk(state))
            pending.keys[key] = (_pk(state), cls, state)
            version = state.committed_state.get("version", state.dict.get("version"))
            if version is None and not deleted:
                # An expired record changed without loading it: the history row
                # written for this change is keyed by the version it is based on.
                version = obj.version
            pending.versions[id(state)] = version if isinstance(version, int) else None
            if deleted:
                pending.deleted.append(key)

        for obj in session.dirty:
            add(obj, False)
        for obj in session.deleted:
            add(obj, True)
        if not groups:
            session.info.pop(_FLUSH_KEY, None)
            return
        # The holder's changes carry change_info["lease"], built before the flush
        # from what this transaction knows about the lease (it took or renewed it,
        # or an earlier flush read it). Nothing is read here: the one check runs
        # after the writes; a holder's lease it finds unknown is added to the
        # history row then.
        known = _known(session)
        info: dict[InstanceState[Any], dict[str, Any]] = {}
        for pending in groups.values():
            if pending.user_id is None:
                continue
            for k, (_, _, state) in pending.keys.items():
                lease = known.get((pending.name, k))
                if lease is not None and lease.user_id == pending.user_id and state:
                    info[state] = lease.change_info()
        session.info[_INFO_KEY] = info
        session.info[_FLUSH_KEY] = list(groups.values())

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        groups: list[_Pending] | None = session.info.pop(_FLUSH_KEY, None)
        if not _any_leased:
            return
        groups = _add_late(session, flush_context, groups or [])
        if not groups:
            return
        info: dict[InstanceState[Any], dict[str, Any]] = session.info.get(_INFO_KEY) or {}
        known = _known(session)
        for pending in groups:
            # The holder's changes whose change_info could not say "lease" (the
            # transaction did not know it): the check adds it to their history rows.
            notes: _Notes = {}
            fallback: dict[type[Any], list[tuple[dict[str, Any], int, _Known]]] = {}
            unnoted: list[tuple[InstanceState[Any], int]] = []
            if pending.user_id is not None:
                deleted = set(pending.deleted)
                for k, (_, _, state) in pending.keys.items():
                    version = None if state is None else pending.versions.get(id(state))
                    if version is None and state is not None and k in deleted:
                        # Deleted while expired: the flush loaded the version it
                        # checked, which its history row has.
                        loaded = state.dict.get("version")
                        version = loaded if isinstance(loaded, int) else None
                    if state is None or state in info or version is None:
                        continue
                    found_spec = _history_spec(state.class_)
                    if found_spec is None:
                        unnoted.append((state, version))
                        continue
                    spec, attrs = found_spec
                    values = tuple(state.dict.get(attr) for attr in attrs)
                    notes.setdefault(spec, []).append((k, values, version))
            # The UPDATE/DELETE statements of this flush hold the row locks now: a
            # lease committed before they got them is visible to this new statement.
            rows = _lease_rows(pending, list(pending.keys), notes)
            _refuse(pending, rows)
            mine = {row.record_key: row for row in rows}
            for row in rows:
                # The check cleared a recorded takeover of the holder's lease.
                known[(pending.name, row.record_key)] = dataclasses.replace(
                    _from_row(row), took_over_from=None
                )
            for k in pending.deleted:
                known[(pending.name, k)] = None
            for state, version in unnoted:
                row = mine.get(_record_key(_pk(state)))
                if row is not None:
                    pk = {p.key: state.dict.get(p.key) for p in state.mapper.column_attrs}
                    fallback.setdefault(state.class_, []).append((pk, version, _from_row(row)))
            for cls, fixes in fallback.items():
                _record_lease_in_history(pending.conn, cls, fixes)

    def do_orm_execute(self, orm_execute_state: ORMExecuteState) -> Any:
        state = orm_execute_state
        if not _any_leased or not (state.is_update or state.is_delete or state.is_insert):
            return None
        if state.execution_options.get(_GUARD):
            return None
        mapper = state.bind_arguments.get("mapper")
        target = _leased(mapper) if isinstance(mapper, Mapper) else None
        if target is None:
            return None
        # What an earlier flush or bulk statement recorded is not this statement's:
        # its holder may have released the lease since.
        state.session.info.pop(_INFO_KEY, None)
        fixes = _check_bulk(state, target)
        if not fixes:
            return None
        # The holder's rows that the session does not hold: run the statement (and
        # history capture, the listeners after this one) first, then add the lease
        # to the history rows it wrote.
        result = state.invoke_statement()
        conn = state.session.connection(bind_arguments={"mapper": target.mapper})
        _record_lease_in_history(conn, target.mapper.class_, fixes)
        return result


def _add_late(
    session: Session, flush_context: UOWTransaction, groups: list[_Pending]
) -> list[_Pending]:
    """``groups`` plus the leased records the flush changed that ``before_flush``
    could not see: foreign keys set from relationships (``member.club = other``, a
    move between collections) and children deleted as orphans. The unit of work
    set those columns during the flush; their history is still unreset here."""
    seen = {id(state) for pending in groups for (_, _, state) in pending.keys.values() if state}
    by_table = {id(pending.target.table): pending for pending in groups}
    actors: dict[type[Any], str | None] = {}
    for state, (deleted, listonly) in list(flush_context.states.items()):
        if listonly or state.key is None or id(state) in seen:
            continue
        target = _leased(state.mapper)
        if target is None:
            continue
        if not deleted and not _watched_change(state, target.watched):
            continue
        cls = state.class_
        if cls not in actors:
            actors[cls] = resolve_actor(cls).user_id
        pending = by_table.get(id(target.table))
        if pending is None:
            conn = session.connection(bind_arguments={"mapper": state.mapper})
            pending = by_table[id(target.table)] = _Pending(
                target, actors[cls], conn, target.table_name(conn), {}, []
            )
            groups.append(pending)
        key = _record_key(_pk(state))
        pending.keys[key] = (_pk(state), cls, state)
        pending.versions[id(state)] = _late_version(state, deleted)
        if deleted:
            pending.deleted.append(key)
    return groups


def _late_version(state: InstanceState[Any], deleted: bool) -> int | None:
    """The version of the history row this flush wrote for ``state`` (after the
    writes), ``None`` when it wrote none."""
    old = state.committed_state.get("version", NO_VALUE)
    if isinstance(old, int):
        return old
    current = state.dict.get("version")
    if not isinstance(current, int):
        return None
    if deleted:
        return current  # a delete's row has the version the record had
    if versioning_suppressed():
        return None
    return current - 1  # the change was bumped to a new version in this flush


def _bulk_pks(
    state: ORMExecuteState, target: _Target, columns: list[sa.Column[Any]] | None = None
) -> list[tuple[Any, ...]] | None:
    """Primary keys (or ``columns``) named by the statement's parameters or values.

    ``None`` when they can't be told.
    """
    mapper = target.mapper
    columns = target.pk_columns if columns is None else columns
    keys = [mapper.get_property_by_column(col).key for col in columns]
    names = [col.key for col in columns]
    params = state.parameters
    rows: list[Mapping[Any, Any]] = []
    if isinstance(params, list) and params and all(isinstance(p, Mapping) for p in params):
        rows = params
    elif isinstance(params, Mapping) and params and state.is_insert:
        rows = [params]
    else:
        statement = state.statement
        multi = getattr(statement, "_multi_values", None)
        values = getattr(statement, "_values", None)
        if multi:
            for group in multi:
                for row in group:
                    rows.append(_value_map(row))
        elif values and state.is_insert:
            rows.append(_value_map(values))
        else:
            return None
    pks: list[tuple[Any, ...]] = []
    for row in rows:
        pk: list[Any] = []
        for attr, name in zip(keys, names, strict=True):
            if attr in row:
                pk.append(row[attr])
            elif name in row:
                pk.append(row[name])
            else:
                return None if not state.is_insert else pks
        pks.append(tuple(pk))
    return pks


def _value_map(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = values.items() if isinstance(values, Mapping) else []
    for column, value in items:
        name = column if isinstance(column, str) else getattr(column, "key", None)
        if name is None:
            continue
        if isinstance(value, sa.sql.elements.BindParameter):
            value = value.effective_value
        out[name] = value
    return out


def _set_keys(state: ORMExecuteState) -> set[str] | None:
    """The attribute/column keys an UPDATE sets, ``None`` when unknown."""
    params = state.parameters
    if isinstance(params, list) and params and all(isinstance(p, Mapping) for p in params):
        return {str(k) for p in params for k in p}
    values = getattr(state.statement, "_values", None)
    if not values:
        return None
    found: set[str] = set()
    for column in values:
        name = column if isinstance(column, str) else getattr(column, "key", None)
        if name is None:
            return None
        found.add(name)
    return found


def _check_bulk(
    state: ORMExecuteState, target: _Target
) -> list[tuple[dict[str, Any], int, _Known]]:
    """Lock and check the rows an ORM bulk statement or upsert is about to change."""
    session = state.session
    statement = state.statement
    if state.is_insert:
        post = getattr(statement, "_post_values_clause", None)
        if not isinstance(post, OnConflictDoUpdate):
            return []  # a plain INSERT changes no existing record
        if _untracked_only(target, _upsert_set_keys(post)):
            return []  # an update branch of untracked columns only is not refused
        conflict = _conflict_columns(post, getattr(statement, "table", None))
        if conflict is not None and {c.key for c in conflict} != {c.key for c in target.pk_columns}:
            # The rows the update branch takes are those matching the conflict
            # target, whatever primary keys the proposed rows carry.
            values = _bulk_pks(state, target, conflict)
            if not values:
                return []
            where: Any = (
                conflict[0].in_([v[0] for v in values])
                if len(conflict) == 1
                else sa.tuple_(*conflict).in_(values)
            )
        else:
            pks = _bulk_pks(state, target)
            if not pks:
                return []
            where = _pk_in(target, pks)
    else:
        by_pk = isinstance(state.parameters, list)
        if state.is_update:
            keys = _set_keys(state)
            if keys is not None and by_pk:
                # An UPDATE by primary key names the key in each parameter set as
                # its WHERE, not as a change.
                keys -= {target.mapper.get_property_by_column(c).key for c in target.pk_columns}
                keys -= {c.key for c in target.pk_columns}
            if _untracked_only(target, keys):
                return []  # untracked-only changes are not refused
        pks = _bulk_pks(state, target) if by_pk else None
        if pks:
            where = _pk_in(target, pks)
        else:
            where = getattr(statement, "whereclause", None)
            if where is None:
                where = sa.true()
    cls = target.mapper.class_
    user_id = resolve_actor(cls).user_id
    mapper = target.mapper
    pk_keys = [mapper.get_property_by_column(col).key for col in target.pk_columns]
    version_attr = getattr(cls, "version", None) if "version" in mapper.column_attrs else None
    selected: list[Any] = [getattr(cls, key) for key in pk_keys]
    if version_attr is not None:
        selected.append(version_attr)
    # An ORM select, so joined-inheritance statements get their JOIN; only the base
    # table's rows are locked (FOR NO KEY UPDATE: what the write itself will take).
    locked = (
        sa.select(*selected)
        .where(where)
        .order_by(*selected[: len(pk_keys)])
        .with_for_update(key_share=True, of=target.table)
        .execution_options(**{_GUARD: True})
    )
    found = session.execute(locked, bind_arguments={"mapper": mapper}).all()
    if not found:
        return []
    conn = session.connection(bind_arguments={"mapper": mapper})
    pending = _Pending(target, user_id, conn, target.table_name(conn), {}, [])
    identity = session.identity_map
    versions: dict[str, int | None] = {}
    for row in found:
        pk = tuple(row[: len(pk_keys)])
        ident = identity.get(mapper.identity_key_from_primary_key(pk))
        key = _record_key(pk)
        pending.keys[key] = (pk, cls, instance_state(ident) if ident else None)
        versions[key] = row[len(pk_keys)] if version_attr is not None else None
    rows = _lease_rows(pending, list(pending.keys))
    _refuse(pending, rows)
    info: dict[InstanceState[Any], dict[str, Any]] = session.info.setdefault(_INFO_KEY, {})
    fixes: list[tuple[dict[str, Any], int, _Known]] = []
    for row in rows:
        pk, _, obj_state = pending.keys[row.record_key]
        if obj_state is not None:
            info[obj_state] = _from_row(row).change_info()
            continue
        version = versions.get(row.record_key)
        if isinstance(version, int):
            fixes.append((dict(zip(pk_keys, pk, strict=True)), version, _from_row(row)))
    if state.is_delete and user_id is not None:
        mine = [r.record_key for r in rows if r.user_id == user_id]
        if mine:
            leases = target.leases
            conn.execute(
                sa.delete(leases).where(
                    leases.c.table_name == pending.name, leases.c.record_key.in_(mine)
                )
            )
    return fixes


def _untracked_only(target: _Target, keys: set[str] | None) -> bool:
    """Whether ``keys`` (attribute or column keys) are all known and none is watched."""
    if keys is None:
        return False
    columns = {p.key for p in target.mapper.column_attrs} | {c.key for c in target.table.c}
    columns |= {c.key for p in target.mapper.column_attrs for c in p.columns}
    watched = target.watched | {
        c.key for p in target.mapper.column_attrs if p.key in target.watched for c in p.columns
    }
    return keys <= columns and not keys & watched


def _upsert_set_keys(post: OnConflictDoUpdate) -> set[str] | None:
    """The keys an upsert's ``set_`` names, ``None`` when unknown."""
    values: Any = post.update_values_to_set
    # A dict on SQLAlchemy 2.1, a list of pairs on 2.0.
    items = values.items() if isinstance(values, Mapping) else values
    found: set[str] = set()
    for column, _ in items:
        name = column if isinstance(column, str) else getattr(column, "key", None)
        if not isinstance(name, str):
            return None
        found.add(name)
    return found


def _conflict_columns(post: OnConflictDoUpdate, table: Any) -> list[sa.Column[Any]] | None:
    """The columns of an upsert's conflict target, ``None`` when not plain columns."""
    if not isinstance(table, sa.Table):
        return None
    if post.constraint_target is not None:
        name = post.constraint_target
        for constraint in table.constraints:
            if isinstance(constraint, sa.PrimaryKeyConstraint) and name in (
                constraint.name,
                f"{table.name}_pkey",
            ):
                return list(constraint.columns)
            if isinstance(constraint, sa.UniqueConstraint) and constraint.name == name:
                return list(constraint.columns)
        for column in table.c:
            if column.unique and name == f"{table.name}_{column.name}_key":
                return [column]
        return None
    columns: list[sa.Column[Any]] = []
    for element in post.inferred_target_elements or ():
        key = element if isinstance(element, str) else getattr(element, "name", None)
        if not isinstance(key, str) or key not in table.c:
            return None
        columns.append(table.c[key])
    return columns or None


def _pk_in(target: _Target, pks: list[tuple[Any, ...]]) -> sa.ColumnElement[bool]:
    if len(target.pk_columns) == 1:
        return target.pk_columns[0].in_([pk[0] for pk in pks])
    return sa.tuple_(*target.pk_columns).in_(pks)


def _change_info(session: Session, state: InstanceState[Any]) -> tuple[str, Any] | None:
    info: dict[InstanceState[Any], dict[str, Any]] | None = session.info.get(_INFO_KEY)
    if not info:
        return None
    found = info.get(state)
    return None if found is None else ("lease", found)


def _install_listeners(target: Any) -> None:
    """Enforce edit leases in sessions of ``target`` (called by ``versioned_session``
    after history capture registered its listeners).

    ``before_flush`` and ``do_orm_execute`` go *before* capture's (``insert=True``):
    the lease facts are known when ``change_info`` is built, and a bulk statement on
    a leased record is refused before anything of it runs. ``after_flush`` goes
    after capture's, so every history row of the flush exists when it runs.
    """
    listeners = _Listeners()
    event.listen(target, "before_flush", listeners.before_flush, insert=True)
    event.listen(target, "do_orm_execute", listeners.do_orm_execute, insert=True)
    event.listen(target, "after_flush", listeners.after_flush)


#: What history capture calls for ``change_info["lease"]`` (registered by the
#: session setup: versioning builds on leases, never the other way round).
lease_change_info = _change_info


def _version_meta(cls: type[Any]) -> Any:
    """What versioning knows about ``cls`` (its history tables), or ``None``.

    Read from the class attribute versioning sets, so that this module needs
    nothing of ``chrononaut.versioning``.
    """
    return cls.__dict__.get("__chrononaut_meta__")


def live_leases(conn: Connection, leases: sa.Table) -> Iterator[Any]:
    """Rows of the live leases in ``leases``, soonest expiry first (for the CLI)."""
    c = leases.c
    yield from conn.execute(
        sa.select(c.table_name, c.record_key, c.user_id, c.acquired_at, c.expires_at, c.note)
        .where(c.expires_at > sa.func.clock_timestamp())
        .order_by(c.expires_at, c.table_name, c.record_key)
    )
