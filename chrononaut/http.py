"""JSON error responses for Flask apps (SPEC §5)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify

from chrononaut.errors import LockError, LockTimeoutError, StaleWriteError

__all__ = ["register_error_handlers", "stale_write_body"]


def stale_write_body(error: StaleWriteError) -> dict[str, Any]:
    """The JSON body of a 409 response for ``error``.

    Lists each intervening version with who changed it, when, and the names of the
    fields it changed (hidden columns by name only; values never appear).
    """
    changes = []
    records = list(error.changes)
    for index, record in enumerate(records):
        info = getattr(record, "change_info", None) or {}
        fields: list[str] = []
        record_obj = error.record
        following = records[index + 1] if index + 1 < len(records) else None
        tracked = getattr(getattr(type(record_obj), "__chrononaut_meta__", None), "tracked", ())
        pk_keys = getattr(getattr(type(record_obj), "__chrononaut_meta__", None), "pk_keys", ())
        if following is not None:
            for key in tracked:
                if key not in pk_keys and getattr(record, key, None) != getattr(
                    following, key, None
                ):
                    fields.append(key)
        fields.extend(info.get("hidden_cols_changed", ()))
        changes.append(
            {
                "version": record.version,
                "changed": record.changed.isoformat() if record.changed else None,
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


def _stale(error: StaleWriteError) -> tuple[Response, int]:
    return jsonify(stale_write_body(error)), 409


def _locked(error: LockError) -> tuple[Response, int]:
    kind = "lock_timeout" if isinstance(error, LockTimeoutError) else "locked"
    holder = error.holder.as_dict() if error.holder is not None else None
    return jsonify({"error": kind, "holder": holder}), 423


def register_error_handlers(app: Flask) -> None:
    """Answer Chrononaut's errors with JSON.

    - :class:`~chrononaut.StaleWriteError` → 409 ``{"error": "stale_write",
      "expected_version", "current_version", "changes": [{"version", "changed",
      "user_id", "fields"}]}``
    - :class:`~chrononaut.RecordLockedError`, :class:`~chrononaut.LockNotAvailableError`
      → 423 ``{"error": "locked", "holder": {...} | null}``;
      :class:`~chrononaut.LockTimeoutError` → 423 ``{"error": "lock_timeout", ...}``

    HTML apps can register their own handlers for these classes after this call
    (or instead of it); Flask uses the most specific one.

    :param app: the Flask app.
    """
    app.register_error_handler(StaleWriteError, _stale)
    from chrononaut.errors import LockNotAvailableError

    app.register_error_handler(LockNotAvailableError, _locked)
    app.register_error_handler(LockTimeoutError, _locked)
