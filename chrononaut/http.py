"""HTTP helpers for optimistic concurrency in Flask views.

Two parts:

- :func:`register_error_handlers` answers :class:`~chrononaut.StaleWriteError`
  with 409 and the locking errors with 423, as JSON.
- ETag / ``If-Match`` helpers for JSON APIs: :func:`etag_for`, :func:`with_etag`,
  :func:`check_if_match` and the :func:`require_if_match` view decorator, with
  :class:`PreconditionFailed` (412) and :class:`PreconditionRequired` (428).

Only :func:`register_error_handlers` is exported by ``chrononaut``; import the
rest from ``chrononaut.http``.

ETag format
-----------
``etag_for(record)`` is a *weak* entity tag naming the record's row and version::

    W/"<table>:<key>:<version>"

``<table>`` is the name of the table holding ``version`` (the root table of an
inheritance hierarchy), ``<key>`` the primary-key values percent-encoded
(RFC 3986 unreserved characters kept) and joined with ``,``, ``<version>`` the
record's ``version``. Example: ``W/"doc:42:3"``.

The tag is weak because it identifies a *version of the record*, not the bytes
of one representation: the JSON and HTML views of version 3 carry the same tag.
RFC 9110 makes ``If-Match`` use strong comparison; Chrononaut deliberately
compares these tags weakly (``W/"doc:42:3"`` and ``"doc:42:3"`` both match),
because the thing the precondition protects — the record's version — is exactly
what the tag names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any, ParamSpec, TypeVar, overload
from urllib.parse import quote, unquote

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask import json as flask_json
from sqlalchemy.orm.attributes import instance_state
from werkzeug import exceptions as wz
from werkzeug.http import parse_etags

from chrononaut.errors import (
    ChrononautException,
    LockError,
    LockNotAvailableError,
    LockTimeoutError,
    RecordLeasedError,
    StaleWriteError,
)
from chrononaut.versioning._concurrency import changed_fields, parse_version

__all__ = [
    "UNSAFE_METHODS",
    "PreconditionFailed",
    "PreconditionRequired",
    "check_if_match",
    "etag_for",
    "lock_error_body",
    "lock_error_response",
    "register_error_handlers",
    "require_if_match",
    "stale_write_body",
    "stale_write_response",
    "with_etag",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Methods :func:`require_if_match` guards by default: the ones that change things.
UNSAFE_METHODS: frozenset[str] = frozenset({"PUT", "PATCH", "DELETE", "POST"})

#: App config key: ``True`` makes :func:`check_if_match` require the header on
#: every request with an unsafe method (as if each view had :func:`require_if_match`).
CONFIG_REQUIRE_IF_MATCH = "CHRONONAUT_REQUIRE_IF_MATCH"

_G_REQUIRED = "_chrononaut_if_match_required"


# -- what a record is -----------------------------------------------------------


def _meta(model: type[Any]) -> Any:
    from chrononaut.versioning._meta import meta_of

    meta = meta_of(model)
    if meta is None:
        raise TypeError(f"{model.__name__} is not a Versioned model")
    return meta


def _identity(record: Any) -> tuple[Any, ...]:
    """The record's primary key as loaded (a record must be saved to have a tag)."""
    try:
        state = instance_state(record)
    except AttributeError as exc:  # not a mapped object at all
        raise TypeError(f"{type(record).__name__} is not a mapped record") from exc
    if state.key is None:
        raise ChrononautException(
            f"a {type(record).__name__} needs to be saved before it has a version to tag; "
            f"commit it first"
        )
    return tuple(state.key[1])


def _opaque(record: Any, version: int) -> str:
    """The opaque part of the record's entity tag (between the quotes)."""
    meta = _meta(type(record))
    table = meta.version_column.table.name
    key = ",".join(quote(str(value), safe="") for value in _identity(record))
    return f"{quote(table, safe='')}:{key}:{version}"


def etag_for(record: Any) -> str:
    """The weak ETag of ``record`` at its current version, e.g. ``W/"doc:42:3"``.

    Use it after the record is committed (a pending change has not bumped
    ``version`` yet). See the module documentation for the format.

    :param record: a persistent :class:`~chrononaut.Versioned` record.
    :returns: the complete header value, with ``W/`` and the quotes.
    :raises TypeError: for an object that is not a Versioned record.
    :raises ChrononautException: for a record that was never saved.
    """
    _identity(record)  # refuse unsaved records before reading their version
    return f'W/"{_opaque(record, int(record.version))}"'


def with_etag(response: Response, record: Any) -> Response:
    """Set the ``ETag`` header of ``response`` to :func:`etag_for` ``(record)``.

    :param response: the response a view is about to return.
    :param record: the record the response represents, committed.
    :returns: ``response`` (so ``return with_etag(jsonify(...), doc)`` works).
    """
    response.headers["ETag"] = etag_for(record)
    return response


def _tagged_version(record: Any, tag: str) -> int | None:
    """The version named by ``tag`` when it is a tag of ``record``'s row, else ``None``."""
    table_key, sep, version = tag.rpartition(":")
    if not sep:
        return None
    parsed = parse_version(version)
    if parsed is None:
        return None
    prefix = _opaque(record, 0).rpartition(":")[0]
    if unquote(table_key) != unquote(prefix):
        return None
    return parsed


# -- 412 and 428 ------------------------------------------------------------------


class PreconditionFailed(wz.PreconditionFailed):
    """412: the client's ``If-Match`` names a version the record no longer has.

    Renders as JSON shaped like the 409 body (``"error": "precondition_failed"``)
    and carries the current ``ETag``, so the client can reload and retry.

    :param record: the record the request wanted to change.
    :param stale: the explained conflict (who changed what since the client's
        version), when the client's tag named an older version of this record.
    """

    def __init__(self, record: Any, stale: StaleWriteError | None = None) -> None:
        self.record = record
        self.stale = stale
        self.current_version: int = int(record.version)
        self.current_etag = etag_for(record)
        if stale is not None:
            description = str(stale)
        else:
            description = (
                f"If-Match does not name the current version ({self.current_version}) of "
                f"this {type(record).__name__}; reload it and apply the change again."
            )
        super().__init__(description)

    def body(self) -> dict[str, Any]:
        """The JSON body: :func:`stale_write_body` with ``"error": "precondition_failed"``
        (``expected_version`` is ``null`` when the client's tag names no version of
        this record, and ``changes`` then is empty)."""
        if self.stale is not None:
            body = stale_write_body(self.stale)
        else:
            body = {"expected_version": None, "current_version": None, "changes": []}
        body["error"] = "precondition_failed"
        body["current_version"] = self.current_version
        return {
            key: body[key] for key in ("error", "expected_version", "current_version", "changes")
        }

    def get_body(self, environ: Any = None, scope: Any = None) -> str:
        return _dumps(self.body())

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("ETag", self.current_etag)]


class PreconditionRequired(wz.PreconditionRequired):
    """428: the view requires ``If-Match`` and the request has none.

    Renders as JSON ``{"error": "precondition_required", "message": ...}``.
    """

    def __init__(self, description: str | None = None) -> None:
        super().__init__(
            description
            or "This request must carry an If-Match header with the ETag of the version "
            "it is based on (GET the resource first)."
        )

    def get_body(self, environ: Any = None, scope: Any = None) -> str:
        return _dumps({"error": "precondition_required", "message": self.description})

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json")]


def _dumps(body: dict[str, Any]) -> str:
    # flask.json uses the app's JSON provider inside an app context, json otherwise.
    return flask_json.dumps(body)


# -- checking If-Match ------------------------------------------------------------


def _required_here(required: bool | None) -> bool:
    if required is not None:
        return required
    if g.get(_G_REQUIRED, False):
        return True
    return bool(current_app.config.get(CONFIG_REQUIRE_IF_MATCH, False)) and (
        request.method in UNSAFE_METHODS
    )


def check_if_match(record: Any, required: bool | None = None) -> int | None:
    """Check the request's ``If-Match`` header against ``record``'s version.

    Call it in a view after loading the record and before changing it. When the
    header names the record's current version, the record is bound to that
    version with :meth:`~chrononaut.Versioned.expect_version`, so a change that
    slips in before the flush still fails (as a 409
    :class:`~chrononaut.StaleWriteError`). ``If-Match: *`` matches any existing record.

    :param record: the persistent :class:`~chrononaut.Versioned` record to change.
    :param required: whether a request without ``If-Match`` is refused with 428.
        ``None`` (the default): required inside views decorated with
        :func:`require_if_match`, or for unsafe methods when the app config sets
        ``CHRONONAUT_REQUIRE_IF_MATCH = True``; otherwise optional.
    :returns: the version the client matched, or ``None`` when the header is
        absent and not required.
    :raises PreconditionFailed: (412) the header names no current tag of the record.
    :raises PreconditionRequired: (428) the header is missing and required.
    """
    header = request.headers.get("If-Match")
    if header is None or not header.strip():
        if _required_here(required):
            raise PreconditionRequired()
        return None
    tags = parse_etags(header)
    current = int(record.version)
    if tags.star_tag or tags.contains_weak(_opaque(record, current)):
        record.expect_version(current)
        return current
    named = [_tagged_version(record, tag) for tag in tags.as_set(include_weak=True)]
    versions = [version for version in named if version is not None]
    if versions:
        # Several old tags of this record: explain from the newest the client knows.
        try:
            record.expect_version(max(versions))
        except StaleWriteError as stale:
            raise PreconditionFailed(record, stale) from stale
    raise PreconditionFailed(record)


@overload
def require_if_match(view: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def require_if_match(
    view: None = None, /, *, methods: Collection[str] = ...
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def require_if_match(
    view: Callable[P, R] | None = None, /, *, methods: Collection[str] = UNSAFE_METHODS
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """View decorator: refuse requests without ``If-Match`` with 428.

    Requests whose method is in ``methods`` and that carry no ``If-Match``
    header are answered 428 before the view runs; inside the view,
    :func:`check_if_match` then treats the header as required::

        @app.put("/docs/<int:doc_id>")
        @require_if_match
        def update_doc(doc_id):
            doc = db.get_or_404(Doc, doc_id)
            check_if_match(doc)          # 412 when the client's version is stale
            ...

    :param view: the view function (when used without arguments).
    :param methods: the HTTP methods that need the header (default: PUT, PATCH,
        DELETE, POST); GET and HEAD pass through so clients can fetch the ETag.
    """
    wanted = frozenset(method.upper() for method in methods)

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if request.method in wanted:
                if not request.headers.get("If-Match", "").strip():
                    raise PreconditionRequired()
                setattr(g, _G_REQUIRED, True)
            return function(*args, **kwargs)

        return wrapper

    if view is not None:
        return decorate(view)
    return decorate


# -- JSON bodies of the errors ------------------------------------------------------


def _changed_fields(error: StaleWriteError) -> list[list[str]]:
    """The names of the fields each of ``error.changes`` changed (hidden ones by name).

    Chrononaut's own errors carry them; for an error built elsewhere they are
    derived from the history records alone, so the newest change lists only its
    hidden columns (the live row is not read again here).
    """
    if error.changed_fields is not None:
        return [list(names) for names in error.changed_fields]
    changes: Sequence[Any] = error.changes
    if not changes:
        return []
    model = (
        type(error.record) if error.record is not None else type(changes[0]).__chrononaut_model__
    )
    return changed_fields(changes, _meta(model), None)


def stale_write_body(error: StaleWriteError) -> dict[str, Any]:
    """The JSON body of the 409 response for ``error``::

        {"error": "stale_write", "expected_version": 3, "current_version": 5,
         "changes": [{"version": 3, "changed": "2026-...+00:00", "user_id": "7",
                      "fields": ["title"]}, ...]}

    ``current_version`` is ``null`` when the row was deleted. Each change lists
    the names of the fields it changed; hidden columns appear by name only —
    their values are never stored, so they can't leak.

    Runs no query of its own, so it can be called before the failed session is
    rolled back (its transaction is unusable until then): the field names come
    from ``error.changed_fields``, which Chrononaut's own errors carry. For an
    error built without them they are derived from the history records alone, so
    the newest change lists only its hidden columns.

    :param error: the conflict.
    """
    changes = []
    for change, fields in zip(error.changes, _changed_fields(error), strict=True):
        info = change.change_info or {}
        changes.append(
            {
                "version": change.version,
                "changed": change.changed.isoformat() if change.changed else None,
                "user_id": info.get("user_id"),
                "fields": fields,
            }
        )
    return {
        "error": "stale_write",
        "expected_version": error.expected_version,
        "current_version": error.current_version,
        "changes": changes,
    }


def lock_error_body(error: LockError) -> dict[str, Any]:
    """The JSON body of the 423 response for a locking error::

        {"error": "locked" | "lock_timeout",
         "holder": {"user_id": "7", "pid": 1234, "since": "2026-...+00:00"} | null}

    :param error: a :class:`~chrononaut.LockNotAvailableError` (``"locked"``) or a
        :class:`~chrononaut.LockTimeoutError` (``"lock_timeout"``).
    """
    kind = "lock_timeout" if isinstance(error, LockTimeoutError) else "locked"
    holder = error.holder.as_dict() if error.holder is not None else None
    return {"error": kind, "holder": holder}


def stale_write_response(error: StaleWriteError) -> tuple[Response, int]:
    """The 409 JSON response for ``error`` (for handlers of your own)."""
    return jsonify(stale_write_body(error)), 409


def lock_error_response(error: LockError) -> tuple[Response, int]:
    """The 423 JSON response for a locking error (for handlers of your own)."""
    return jsonify(lock_error_body(error)), 423


def register_error_handlers(app: Flask | Blueprint) -> None:
    """Answer Chrononaut's errors with JSON.

    - :class:`~chrononaut.StaleWriteError` → 409 (:func:`stale_write_body`)
    - :class:`~chrononaut.RecordLockedError`, :class:`~chrononaut.LockNotAvailableError`
      → 423 ``{"error": "locked", "holder": ...}``;
      :class:`~chrononaut.LockTimeoutError` → 423 ``{"error": "lock_timeout", ...}``
      (:func:`lock_error_body`)
    - :class:`~chrononaut.RecordLeasedError` → 423 ``{"error": "leased", "lease": ...}``
      (:func:`chrononaut.lease_web.lease_error_body`)

    HTML apps: register a handler of your own for the same class *after* this call
    (it replaces this one), or skip this call and register yours; an API blueprint
    can get the JSON handlers alone with ``register_error_handlers(api_blueprint)``
    (a blueprint's handlers apply to its own views). :func:`stale_write_response`
    and :func:`lock_error_response` give your handlers the JSON answer, e.g. when
    the client prefers JSON.

    :param app: the Flask app, or a blueprint.
    """
    app.register_error_handler(StaleWriteError, stale_write_response)
    app.register_error_handler(LockNotAvailableError, lock_error_response)
    app.register_error_handler(LockTimeoutError, lock_error_response)
    from chrononaut.lease_web import lease_error_response

    app.register_error_handler(RecordLeasedError, lease_error_response)
