"""Argument checks, error translation, per-transaction lock state and the
``application_name`` tag that lets other sessions see who holds a lock."""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import numbers
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from chrononaut._app import current_extension
from chrononaut._db_errors import sqlstate
from chrononaut.errors import _NO_USER, ChrononautException, DeadlockError, LockHolder
from chrononaut.locking._keys import ROW_MODES

#: ``FOR ...`` clause and SQLAlchemy ``with_for_update`` arguments per mode.
FOR_UPDATE_ARGS: dict[str, dict[str, bool]] = {
    "update": {},
    "no_key_update": {"key_share": True},
    "share": {"read": True},
    "key_share": {"read": True, "key_share": True},
}

# Strength order, to keep the strongest mode when a row is locked twice.
_STRENGTH = {mode: strength for strength, mode in enumerate(ROW_MODES)}

# lock_timeout is an int of milliseconds on the server.
_MAX_TIMEOUT_MS = 2**31 - 1

LOCKS_KEY = "chrononaut.locks"
DEPTH_KEY = "chrononaut.lock_depth"

SQLSTATE_DEADLOCK = "40P01"
SQLSTATE_LOCK_NOT_AVAILABLE = "55P03"

APP_TAG = "chrononaut"
# application_name holds at most 63 bytes; the tag and ':' take 11.
_APP_NAME_MAX = 63
_APP_USER_ROOM = _APP_NAME_MAX - len(APP_TAG) - 1
_TRUNCATED = "~"


def check_mode(mode: object) -> str:
    """Return ``mode`` if it is one of the four row-lock modes, else raise ValueError."""
    if not isinstance(mode, str) or mode not in ROW_MODES:
        raise ValueError(
            f"lock mode must be one of {', '.join(repr(m) for m in reversed(ROW_MODES))}, "
            f"got {mode!r}"
        )
    return mode


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise TypeError naming the argument."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_wait(nowait: object, timeout: object) -> int | None:
    """Validate ``nowait``/``timeout``; return the timeout in whole milliseconds.

    :raises TypeError: ``nowait`` is not a bool.
    :raises ValueError: ``timeout`` is not a number > 0, or ``nowait`` and
        ``timeout`` are both given. A timeout beyond the server's maximum
        (``lock_timeout``: about 24.8 days) is that maximum.
    """
    check_bool("nowait", nowait)
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (numbers.Real, decimal.Decimal)):
        raise ValueError(f"timeout must be a number of seconds > 0, got {type(timeout).__name__}")
    try:
        seconds = float(timeout)
    except (OverflowError, ValueError):  # a Decimal beyond float, a signalling NaN
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if nowait:
        raise ValueError("pass either nowait=True or timeout=, not both")
    # The server's lock_timeout holds at most about 24.8 days: a longer wait is
    # that long (an error after 24 days or after 34 is the same to a caller).
    return min(math.ceil(seconds * 1000), _MAX_TIMEOUT_MS)


def check_session(session: object) -> Session:
    """Return ``session`` if it is a SQLAlchemy session (or scoped_session), else TypeError."""
    from sqlalchemy.orm import scoped_session

    if isinstance(session, scoped_session):
        real: object = session()
    else:
        real = session
    if not isinstance(real, Session):
        raise TypeError(f"session must be a SQLAlchemy Session, got {type(session).__name__}")
    return real


def default_session() -> Session:
    """``db.session`` of the current Flask app's database extension.

    :raises ChrononautException: outside an app context, or when the app has no
        Flask-SQLAlchemy extension.
    """
    from flask import has_app_context

    if not has_app_context():
        raise ChrononautException(
            "no session given and no Flask app context: pass session= explicitly"
        )
    ext = current_extension()
    if ext is None or not hasattr(ext, "session"):
        raise ChrononautException(
            "no session given and the app has no Flask-SQLAlchemy extension: pass session="
        )
    return check_session(ext.session)


def held_by(holder: LockHolder | None) -> str:
    """`` (held by user bob, server pid 123)`` for a lock error's message, or ``""``."""
    if holder is None:
        return ""
    user = f"user {holder.user_id}" if holder.user_id is not None else _NO_USER
    return f" (held by {user}, server pid {holder.pid})"


def deadlock_from(error: BaseException) -> DeadlockError | None:
    """A :class:`DeadlockError` for ``error`` when PostgreSQL reported a deadlock."""
    if isinstance(error, DeadlockError):
        return None
    if isinstance(error, sa_exc.DBAPIError) and sqlstate(error) == SQLSTATE_DEADLOCK:
        detail = str(error.orig).strip().splitlines()
        return DeadlockError(
            "PostgreSQL detected a deadlock and aborted the transaction; roll back and "
            "run the unit of work again (lock rows in one order, e.g. with lock_all()). "
            + (detail[0] if detail else "")
        )
    return None


# Key texts ride in the tag after the user, each behind a "|" (percent-encoded,
# so "|" and "%" inside a key or user id never read as separators).
_KEY_SEPARATOR = "|"
_KEY_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%" + _KEY_SEPARATOR)


def _user_tag(user_id: str | None) -> str:
    if user_id is None:
        return APP_TAG
    encoded = quote(user_id, safe=_USER_SAFE)
    if len(encoded) > _APP_USER_ROOM:
        # Cut between characters, never inside one (a multi-byte character is
        # several %XX escapes: half of it would not decode).
        pieces: list[str] = []
        size = 0
        for char in user_id:
            piece = quote(char, safe=_USER_SAFE)
            if size + len(piece) > _APP_USER_ROOM - 1:
                break
            pieces.append(piece)
            size += len(piece)
        return f"{APP_TAG}{_TRUNCATED}{''.join(pieces)}"
    return f"{APP_TAG}:{encoded}"


_USER_SAFE = "@.-_+=!*()',;$"


def app_name(user_id: str | None, keys: Sequence[str] = ()) -> str:
    """The ``application_name`` a transaction holding Chrononaut locks carries.

    ``chrononaut`` for no user, else ``chrononaut:<percent-encoded user id>`` (the
    server keeps 63 printable ASCII bytes; longer ids are cut and marked with ``~``),
    then ``|<key>`` for each string advisory key of ``keys`` (newest first) while
    they fit whole, so ``flask chrononaut locks`` can show a key's text.
    """
    tag = _user_tag(user_id)
    for key in reversed(keys):
        part = _KEY_SEPARATOR + quote(key, safe=_KEY_SAFE)
        if len(tag) + len(part) <= _APP_NAME_MAX:
            tag += part
    return tag


def _split_tag(name: str) -> tuple[str, list[str]]:
    head, *keys = name.split(_KEY_SEPARATOR)
    return head, [unquote(key) for key in keys]


def user_from_app_name(name: str | None) -> tuple[bool, str | None]:
    """``(tagged, user_id)`` from a backend's ``application_name``.

    A truncated user id comes back with a trailing ``…``.
    """
    if not name or not name.startswith(APP_TAG):
        return False, None
    rest = _split_tag(name)[0][len(APP_TAG) :]
    if rest == "":
        return True, None
    if rest.startswith(":"):
        return True, unquote(rest[1:])
    if rest.startswith(_TRUNCATED):
        return True, unquote(rest[1:]) + "…"
    return False, None


def keys_from_app_name(name: str | None) -> list[str]:
    """The advisory key texts a Chrononaut tag lists (see :func:`app_name`)."""
    if not name or not name.startswith(APP_TAG):
        return []
    return _split_tag(name)[1]


@dataclass
class TxnLocks:
    """Locks this session's current transaction took through Chrononaut: its row
    locks, and the texts of its string advisory keys (for the holder tag)."""

    txn: weakref.ReferenceType[Any]
    rows: dict[tuple[Any, tuple[Any, ...]], dict[str, Any]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    #: per row, the locks taken on it, oldest first, each with the savepoint
    #: (``begin_nested()``) it was taken in: rolling that back releases it
    layers: dict[tuple[Any, tuple[Any, ...]], list[tuple[Any, dict[str, Any]]]] = field(
        default_factory=dict
    )


def _current_txn(session: Session) -> Any:
    return session.get_transaction()


def _txn_locks(session: Session) -> TxnLocks:
    """The :class:`TxnLocks` of the session's current transaction (a new one after
    the transaction that took the last ones ended)."""
    txn = _current_txn(session)
    locks: TxnLocks | None = session.info.get(LOCKS_KEY)
    if locks is None or locks.txn() is None or locks.txn() is not txn:
        locks = TxnLocks(weakref.ref(txn))
        session.info[LOCKS_KEY] = locks
    return locks


def session_tag(session: Session, user_id: str | None, key_text: str | None = None) -> str:
    """The holder tag for a lock about to be taken in ``session``'s transaction.

    :param key_text: the text of a string advisory key being taken, remembered
        for this transaction so that later tags list it too (a key whose attempt
        fails stays listed; ``flask chrononaut locks`` shows only held keys).
    """
    locks = _txn_locks(session)
    if key_text is not None and key_text not in locks.keys:
        locks.keys.append(key_text)
    return app_name(user_id, locks.keys)


def record_row_lock(
    session: Session, identity: tuple[Any, tuple[Any, ...]], mode: str, user_id: str | None
) -> None:
    """Remember that this transaction holds ``identity``'s row in ``mode``."""
    locks = _txn_locks(session)
    held = locks.rows.get(identity)
    if held is not None and _STRENGTH[held["mode"]] >= _STRENGTH[mode]:
        return
    info = {
        "user_id": user_id,
        "mode": mode,
        "acquired_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    locks.rows[identity] = info
    nested = session.get_nested_transaction()
    taken_in = weakref.ref(nested) if nested is not None else None
    locks.layers.setdefault(identity, []).append((taken_in, info))


def drop_rolled_back_locks(session: Session, previous_transaction: Any) -> None:
    """``after_soft_rollback``: forget the row locks taken in a rolled-back
    savepoint (or in one inside it): PostgreSQL released them."""
    if not getattr(previous_transaction, "nested", False):
        return  # the whole transaction: its TxnLocks ends with it
    locks: TxnLocks | None = session.info.get(LOCKS_KEY)
    if locks is None or not locks.layers:
        return

    def inside(ref: Any) -> bool:
        txn = ref() if ref is not None else None
        while txn is not None:
            if txn is previous_transaction:
                return True
            txn = txn.parent
        return False

    for identity, layers in list(locks.layers.items()):
        kept = [layer for layer in layers if not inside(layer[0])]
        if len(kept) == len(layers):
            continue
        if kept:
            locks.layers[identity] = kept
            locks.rows[identity] = kept[-1][1]
        else:
            del locks.layers[identity]
            locks.rows.pop(identity, None)


def may_hold_row_locks(session: Session) -> bool:
    """Whether ``session`` may hold row locks taken through Chrononaut (if not,
    :func:`held_row_lock` is ``None`` for every record)."""
    return session.info.get(LOCKS_KEY) is not None


def held_row_lock(session: Session, state: InstanceState[Any]) -> dict[str, Any] | None:
    """The lock info of ``state``'s row if this transaction locked it through Chrononaut."""
    locks: TxnLocks | None = session.info.get(LOCKS_KEY)
    if locks is None:
        return None
    taken_in = locks.txn()
    if taken_in is None or taken_in is not _current_txn(session):
        # The transaction that took these locks has ended: they are gone.
        session.info.pop(LOCKS_KEY, None)
        return None
    key = state.key
    if key is None:
        return None
    info = locks.rows.get((key[0], key[1]))
    return dict(info) if info is not None else None
