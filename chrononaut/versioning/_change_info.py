"""What goes into ``change_info``: who, from where, why."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState

from chrononaut._context import Actor, check_json_info, current_extra_info, resolve_actor
from chrononaut.errors import ChrononautException
from chrononaut.locking._common import held_row_lock as lock_info_for
from chrononaut.locking._common import may_hold_row_locks

__all__ = ["ChangeInfoBuilder", "Settings", "StaticSettings", "append_change_info"]


@dataclass
class _Appended:
    """Info appended in one transaction (``chain``: innermost first) or, without
    one (``chain`` is ``None``), for the session's next transaction."""

    info: dict[str, Any]
    chain: tuple[weakref.ReferenceType[Any], ...] | None


# Info for the next history row of one record. Keyed by the record's
# InstanceState (identity, not the model's __eq__), dropped with the record.
_pending: weakref.WeakKeyDictionary[InstanceState[Any], list[_Appended]] = (
    weakref.WeakKeyDictionary()
)


def _transaction_chain(session: Session | None) -> tuple[weakref.ReferenceType[Any], ...] | None:
    if session is None:
        return None
    transaction = session.get_nested_transaction() or session.get_transaction()
    chain: list[weakref.ReferenceType[Any]] = []
    while transaction is not None:
        chain.append(weakref.ref(transaction))
        transaction = transaction.parent
    return tuple(chain) or None


class _Added(contextlib.AbstractContextManager[None]):
    """What :func:`append_change_info` returns: usable as a ``with`` block, as in
    Chrononaut 0.2-0.4, which adds nothing to the plain call (the info is
    already recorded for the record's next history row when the block starts)."""

    def __exit__(self, *exc: object) -> None:
        return None


def append_change_info(record: object, **info: Any) -> contextlib.AbstractContextManager[None]:
    """Add ``info`` to ``change_info["extra"]`` of the next history row written for
    ``record`` only.

    Calls accumulate (later keys win) until a history row for the record is
    flushed. Values must be JSON values JSONB can hold; they are checked here.
    The info is dropped when the transaction (or savepoint) it was added in rolls
    back, and when added outside a transaction, when the next one rolls back.
    The call may also open a ``with`` block (Chrononaut 0.2-0.4 style); the
    block changes nothing: the info is recorded by the call itself.

    :param record: a ``Versioned`` record.
    :param info: keys and values to record.
    :raises TypeError: when ``record`` is not a mapped record, or a value is not a
        JSON value (a set, a datetime, ...).
    :raises ValueError: NaN, infinity, or a string with a NUL character or a lone
        surrogate.
    """
    try:
        state = instance_state(record)
    except Exception as exc:  # sqlalchemy raises NO_STATE variants
        raise TypeError(f"{type(record).__name__} is not a mapped record") from exc
    check_json_info(info, "append_change_info()")
    if not info:
        return _Added()
    entries = _pending.setdefault(state, [])
    chain = _transaction_chain(state.session)
    if entries and entries[-1].chain == chain:
        entries[-1].info.update(info)
    else:
        entries.append(_Appended(dict(info), chain))
    return _Added()


def _rolled_back(entry: _Appended, transaction: Any, outermost: bool) -> bool:
    chain = entry.chain
    if chain is not None and all(ref() is None for ref in chain):
        # Its transaction committed without writing the row: the info waits for
        # the next transaction, and goes when that one rolls back.
        chain = None
    if chain is None:
        return outermost
    return any(ref() is transaction for ref in chain)


def drop_rolled_back(session: Session, previous_transaction: Any) -> None:
    """``after_soft_rollback`` listener: forget info appended in that transaction,
    in a savepoint inside it, or (for the outermost) before it began."""
    outermost = previous_transaction.parent is None
    for state in list(_pending.keys()):
        if state.session is not None and state.session is not session:
            continue
        entries = _pending.get(state)
        if not entries:
            continue
        kept = [
            entry for entry in entries if not _rolled_back(entry, previous_transaction, outermost)
        ]
        if kept:
            _pending[state] = kept
        else:
            _pending.pop(state, None)


def peek_appended(state: InstanceState[Any]) -> Mapping[str, Any]:
    """The info waiting for ``state``'s next history row (not consumed)."""
    if not _pending:
        return {}  # the usual case, without making a weak reference to look it up
    entries = _pending.get(state)
    if not entries:
        return {}
    merged: dict[str, Any] = {}
    for entry in entries:
        merged.update(entry.info)
    return merged


def any_appended() -> bool:
    """Whether any record has info waiting (if not, a flush skips the per-record
    lookups)."""
    return bool(_pending)


def consume_appended(state: InstanceState[Any]) -> None:
    """Forget the waiting info once its history row was written."""
    if _pending:
        _pending.pop(state, None)


#: Functions adding one key to ``change_info`` of a record's history row (edit
#: leases use it): ``provider(session, state) -> (key, value)`` or ``None``.
ChangeInfoProvider = Callable[[Session, InstanceState[Any]], "tuple[str, Any] | None"]
_providers: list[ChangeInfoProvider] = []


def register_change_info_provider(provider: ChangeInfoProvider) -> None:
    """Let ``provider`` add a key to ``change_info`` (once per provider)."""
    if provider not in _providers:
        _providers.append(provider)


class Settings(Protocol):
    """Where the configuration keys of SPEC §3 come from."""

    def extra_change_info_func(self) -> Callable[[], Mapping[str, Any]] | None: ...

    def require_extra_change_info(self) -> bool: ...


class StaticSettings:
    """Settings given directly (plain SQLAlchemy, :func:`~chrononaut.versioned_session`)."""

    def __init__(
        self,
        extra_change_info_func: Callable[[], Mapping[str, Any]] | None = None,
        require_extra_change_info: bool = False,
    ) -> None:
        self._func = extra_change_info_func
        self._require = require_extra_change_info

    def extra_change_info_func(self) -> Callable[[], Mapping[str, Any]] | None:
        return self._func

    def require_extra_change_info(self) -> bool:
        return self._require


class FlaskSettings:
    """Settings read from the current Flask app's config (``CHRONONAUT_*`` keys)."""

    def extra_change_info_func(self) -> Callable[[], Mapping[str, Any]] | None:
        from flask import current_app, has_app_context

        if not has_app_context():
            return None
        func = current_app.config.get("CHRONONAUT_EXTRA_CHANGE_INFO_FUNC")
        if func is not None and not callable(func):
            raise ChrononautException(
                "CHRONONAUT_EXTRA_CHANGE_INFO_FUNC must be a callable returning a dict"
            )
        return func

    def require_extra_change_info(self) -> bool:
        from flask import current_app, has_app_context

        return bool(
            has_app_context() and current_app.config.get("CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO")
        )


class ChangeInfoBuilder:
    """Builds ``change_info`` for the history rows of one flush or bulk statement.

    Context that is the same for every row (actor per model class, extra info) is
    computed once per flush, not once per row; so is the whole document of a row
    that has no parts of its own (appended info, a row lock, hidden columns, a
    lease): those rows share one dict, which callers therefore never modify.
    """

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self._actors: dict[type[Any], Actor] = {}
        extra: dict[str, Any] = {}
        func = settings.extra_change_info_func()
        if func is not None:
            produced = func()
            if produced:
                if not isinstance(produced, Mapping):
                    raise ChrononautException(
                        "CHRONONAUT_EXTRA_CHANGE_INFO_FUNC must return a dict, not "
                        f"{type(produced).__name__}"
                    )
                # Checked before any statement of the flush is sent.
                check_json_info(produced, "CHRONONAUT_EXTRA_CHANGE_INFO_FUNC")
                extra.update(produced)
        extra.update(current_extra_info())
        self._extra = extra
        #: class -> the change_info of its updated rows without parts of their own
        self._plain: dict[type[Any], dict[str, Any]] = {}
        # A builder lives for one flush or bulk statement, during which no info is
        # appended and no row lock taken: whether any can exist is asked once.
        self._maybe_own = any_appended() or may_hold_row_locks(session)

    def build(
        self,
        cls: type[Any],
        state: InstanceState[Any] | None,
        *,
        hidden_changed: list[str] | None = None,
        deleted: bool = False,
    ) -> dict[str, Any]:
        """``change_info`` for one history row of a record of class ``cls`` (possibly
        shared with other rows of this flush: read it, don't modify it)."""
        if state is not None and not hidden_changed and not deleted and not self._own_parts(state):
            # The usual updated row: the class's one document, built once per flush
            # (and, being one object, sent once by the one-statement path).
            plain = self._plain.get(cls)
            if plain is None:
                plain = self._plain[cls] = self._document(cls, None, None, False)
            return plain
        return self._document(cls, state, hidden_changed, deleted)

    def _own_parts(self, state: InstanceState[Any]) -> bool:
        """Whether ``state``'s row has parts of its own (appended info, a row lock,
        a provider's key): the checks ``_document`` makes, without building."""
        if self._maybe_own and (peek_appended(state) or lock_info_for(self.session, state)):
            return True
        for provider in _providers:
            if provider(self.session, state) is not None:
                return True
        return False

    def _document(
        self,
        cls: type[Any],
        state: InstanceState[Any] | None,
        hidden_changed: list[str] | None,
        deleted: bool,
    ) -> dict[str, Any]:
        actor = self._actors.get(cls)
        if actor is None:
            actor = self._actors[cls] = resolve_actor(cls)
        info: dict[str, Any] = {"user_id": actor.user_id, "remote_addr": actor.remote_addr}
        extra = self._extra
        if state is not None:
            appended = peek_appended(state)
            if appended:
                extra = {**extra, **appended}
        if extra:
            info["extra"] = dict(extra)
        if hidden_changed:
            info["hidden_cols_changed"] = sorted(hidden_changed)
        if state is not None:
            lock = lock_info_for(self.session, state)
            if lock:
                info["lock"] = lock
            for provider in _providers:
                provided = provider(self.session, state)
                if provided is not None:
                    info[provided[0]] = provided[1]
        if deleted:
            info["deleted"] = True
        return info
