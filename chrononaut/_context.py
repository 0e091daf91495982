"""Who is acting and why: the context that goes into ``change_info``.

Context lives in :mod:`contextvars`, not in Flask's ``g``, so it works in request
handlers, CLI commands, background jobs and plain SQLAlchemy scripts alike, and a
block's values are restored on exit even when it raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from flask import current_app, has_request_context, request

__all__ = [
    "Actor",
    "acting_as",
    "check_json_info",
    "current_extra_info",
    "extra_change_info",
    "flask_actor",
    "own_listener",
    "rationale",
    "resolve_actor",
    "suppress_versioning",
    "versioning_suppressed",
]


@dataclass(frozen=True)
class Actor:
    """The acting user of a change: ``user_id`` (a string) and ``remote_addr``."""

    user_id: str | None
    remote_addr: str | None = None


_actor: ContextVar[Actor | None] = ContextVar("chrononaut_actor", default=None)
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_extra: ContextVar[Mapping[str, Any]] = ContextVar("chrononaut_extra", default=_NO_EXTRA)
_suppressed: ContextVar[bool] = ContextVar("chrononaut_suppressed", default=False)
_in_extra_block: ContextVar[bool] = ContextVar("chrononaut_in_extra_block", default=False)


@contextlib.contextmanager
def acting_as(user_id: object, remote_addr: str | None = None) -> Iterator[Actor]:
    """Set the acting user for changes made inside the block.

    For code outside requests (CLI commands, jobs, scripts). Blocks nest; the
    innermost wins and the outer actor is restored on exit.

    :param user_id: the user's id; stored as a string (``None`` for nobody).
    :param remote_addr: the address to record, if any.
    """
    actor = Actor(None if user_id is None else str(user_id), remote_addr)
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


def flask_actor() -> Actor:
    """The acting user as seen from Flask: Flask-Login's ``current_user`` and
    the request's ``remote_addr``.

    Outside a request, without Flask-Login, or with Flask-Login not configured for
    the app, the user is ``None``: that is never an error.
    """
    if not has_request_context():
        return Actor(None, None)
    remote_addr = request.remote_addr
    user_id: str | None = None
    try:
        from flask_login import current_user
    except ImportError:
        return Actor(None, remote_addr)
    # Flask-Login raises when the app has no LoginManager; an app that installed
    # the package without configuring it must still be able to commit.
    if getattr(current_app, "login_manager", None) is not None:
        user = current_user._get_current_object()
        if user is not None and getattr(user, "is_authenticated", False):
            raw = user.get_id()
            user_id = None if raw is None else str(raw)
    return Actor(user_id, remote_addr)


_F = TypeVar("_F", bound=Callable[..., Any])


def own_listener(fn: _F) -> _F:
    """Mark ``fn`` as one of Chrononaut's own session listeners (history capture
    tells them from the application's)."""
    fn._chrononaut_listener = True  # type: ignore[attr-defined]
    return fn


# Deeper nesting than this is refused: JSONB holds it, but encoding it to JSON
# (and checking it here) recurses once per level, within Python's recursion limit.
_MAX_DEPTH = 500


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{where}: a string with a NUL character can't be stored in JSONB")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{where}: a string with a lone surrogate has no UTF-8 form and can't be stored"
        ) from None


def _check_json(value: object, where: str, depth: int, path: set[int] | None = None) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a JSON number; JSONB can't hold it")
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, (list, tuple, dict)):
        if depth >= _MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
        # The containers from the top down to this one: meeting one again is a cycle.
        path = set() if path is None else path
        if id(value) in path:
            raise ValueError(f"{where}: contains itself (a cycle); JSON can't hold it")
        path.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise TypeError(
                            f"{where}: JSON object keys must be str, not {type(key).__name__}"
                        )
                    _check_text(key, where)
                    _check_json(item, f"{where}[{key!r}]", depth + 1, path)
            else:
                for index, item in enumerate(value):
                    _check_json(item, f"{where}[{index}]", depth + 1, path)
        finally:
            path.discard(id(value))
        return
    raise TypeError(
        f"{where}: {type(value).__name__} is not a JSON value (use dict, list, tuple, str, "
        "int, float, bool or None; convert it, e.g. a set to a sorted list)"
    )


def check_json_info(info: Mapping[str, Any], what: str) -> None:
    """Refuse change_info values JSONB can't hold, before anything is stored.

    :param info: the keyword arguments (or the config function's dict).
    :param what: the caller, for the message (``"extra_change_info()"``).
    :raises TypeError: a value (or nested key) of another type than dict with
        ``str`` keys, list, tuple, ``str``, ``int``, ``float``, ``bool``, ``None``.
    :raises ValueError: NaN or infinity, a string with a NUL character or a lone
        surrogate, a container that contains itself, or nesting deeper than 500
        levels.
    """
    for key, value in info.items():
        if not isinstance(key, str):
            raise TypeError(f"{what}: keys must be str, not {type(key).__name__}")
        _check_text(key, what)
        _check_json(value, f"{what} {key}", 0)


def extra_change_info(**info: Any) -> contextlib.AbstractContextManager[Mapping[str, Any]]:
    """Add ``info`` to ``change_info["extra"]`` of history rows written inside the block.

    Blocks nest: values merge, the inner block wins, and the outer values are back
    when the block exits (also on exceptions). Values must be JSON values JSONB
    can hold; they are checked at the call.

    :param info: keys and values to record.
    :raises TypeError: a value that is not a JSON value (a set, a datetime, ...).
    :raises ValueError: NaN, infinity, or a string with a NUL character or a lone
        surrogate.
    """
    check_json_info(info, "extra_change_info()")
    return _extra_block(info)


@contextlib.contextmanager
def _extra_block(info: dict[str, Any]) -> Iterator[Mapping[str, Any]]:
    merged = {**_extra.get(), **info}
    token = _extra.set(merged)
    block_token = _in_extra_block.set(True)
    try:
        yield merged
    finally:
        _in_extra_block.reset(block_token)
        _extra.reset(token)


def rationale(text: str) -> contextlib.AbstractContextManager[Mapping[str, Any]]:
    """Record why changes are made: ``extra_change_info(rationale=text)``.

    :param text: the reason, stored in ``change_info["extra"]["rationale"]``.
    :raises TypeError: ``text`` is not a JSON value (see :func:`extra_change_info`).
    :raises ValueError: as for :func:`extra_change_info`.
    """
    check_json_info({"rationale": text}, "rationale()")
    return _extra_block({"rationale": text})


def current_extra_info() -> Mapping[str, Any]:
    """The merged ``extra`` values of the active :func:`extra_change_info` blocks."""
    return _extra.get()


def extra_info_active() -> bool:
    """Whether any :func:`extra_change_info` / :func:`rationale` block is active."""
    return _in_extra_block.get()


@contextlib.contextmanager
def suppress_versioning() -> Iterator[None]:
    """Write no history and leave ``version`` alone for changes flushed in the block.

    For data migrations and repairs that should not appear as user changes.
    Stale-write checks still apply.
    """
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)


def versioning_suppressed() -> bool:
    """Whether a :func:`suppress_versioning` block is active."""
    return _suppressed.get()


def resolve_actor(model_class: type | None = None) -> Actor:
    """The acting user for a change, in the order of SPEC §3.

    An active :func:`acting_as` block wins; else the model's
    ``_fetch_current_user_id()`` classmethod (by default Flask-Login's
    ``current_user.get_id()`` inside a request); else ``None``. ``remote_addr``
    comes from the :func:`acting_as` block or the current request.

    :param model_class: the class of the record being changed or locked, whose
        ``_fetch_current_user_id`` override is honoured.
    """
    actor = _actor.get()
    if actor is not None:
        if actor.remote_addr is None:
            return Actor(actor.user_id, flask_actor_remote_addr())
        return actor
    fetch = getattr(model_class, "_fetch_current_user_id", None)
    if fetch is not None and not getattr(fetch, "_chrononaut_default", False):
        raw = fetch()
        return Actor(None if raw is None else str(raw), flask_actor_remote_addr())
    return flask_actor()


def flask_actor_remote_addr() -> str | None:
    """The current request's ``remote_addr``, or ``None`` outside a request."""
    return request.remote_addr if has_request_context() else None
