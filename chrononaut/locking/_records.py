"""What every lock on a record needs first: the record checked, its mapper's table.

Row locks (:mod:`._rows`), record advisory locks (:mod:`._advisory`) and edit
leases build on this module; it builds on neither, so they never import each
other.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.state import InstanceState

from chrononaut.errors import ChrononautException
from chrononaut.locking._holders import physical_regclass
from chrononaut.locking._keys import marker_params


def describe(record: object) -> str:
    """``Class(pk)`` for error messages."""
    state = sa.inspect(record, raiseerr=False)
    pk = state.key[1] if isinstance(state, InstanceState) and state.key else None
    if pk is None:
        return type(record).__name__
    return f"{type(record).__name__}({', '.join(repr(v) for v in pk)})"


def check_record(record: object, action: str = "lock") -> tuple[InstanceState[Any], Session]:
    """The state and session of a persistent record, or the error that says why not.

    :param action: what was asked, for the message ("lock", ...).
    :raises TypeError: ``record`` is not an instance of a mapped class.
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


def primary_key(state: InstanceState[Any]) -> tuple[Any, ...]:
    """The identity key's primary-key values of a persistent ``state``."""
    return tuple(state.key[1]) if state.key is not None else ()


class Target:
    """What the lock statements of one mapper need, built once."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.mapper = mapper
        self.table: sa.Table = mapper.base_mapper.local_table  # type: ignore[assignment]
        self.pk_columns: list[sa.ColumnElement[Any]] = list(mapper.primary_key)
        self.statements: dict[tuple[str, str], sa.Select[Any]] = {}

    def pk_in(self, name: str = "pks") -> sa.ColumnElement[bool]:
        """``pk IN (:name)`` (an expanding parameter): one value per row for a
        one-column key, else one tuple per row (see :meth:`pk_values`)."""
        values: sa.BindParameter[Any] = sa.bindparam(name, expanding=True)
        if len(self.pk_columns) == 1:
            return self.pk_columns[0].in_(values)
        return sa.tuple_(*self.pk_columns).in_(values)

    def pk_values(self, pks: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The value of :meth:`pk_in`'s parameter for the rows ``pks``."""
        return [pk[0] for pk in pks] if len(self.pk_columns) == 1 else list(pks)

    def marker(self, conn: Connection, pk: Sequence[Any], mode: str) -> dict[str, Any]:
        """Parameters ``tbl``, ``direct``, ``m32``, ``m64`` of ``pk``'s marker lock."""
        schema, name, quoted = physical_regclass(conn, self.table)
        params = marker_params(schema, name, pk, mode)
        params["tbl"] = quoted
        return params


_targets: weakref.WeakKeyDictionary[Mapper[Any], Target] = weakref.WeakKeyDictionary()


def target(mapper: Mapper[Any]) -> Target:
    """The cached :class:`Target` of ``mapper``."""
    found = _targets.get(mapper)
    if found is None:
        found = _targets[mapper] = Target(mapper)
    return found
