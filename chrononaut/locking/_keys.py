"""Advisory lock keys: validation, the stable string hash, and row markers.

PostgreSQL advisory locks have two key spaces: one signed 64-bit integer
(``pg_locks.objsubid = 1``) and a pair of signed 32-bit integers
(``objsubid = 2``). They never conflict with each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

__all__ = [
    "AdvisoryKey",
    "advisory_key",
    "pg_locks_ids",
    "physical_table",
    "quote_identifier",
    "quoted_table",
    "record_key_text",
    "row_marker",
    "string_key",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: A normalised advisory key: one 64-bit int, or a pair of 32-bit ints.
AdvisoryKey = int | tuple[int, int]

#: The row-lock modes, weakest first: the order of their strength (a row locked
#: twice keeps the stronger) and of their marker code (the low 2 bits of the key).
#: The one list of modes; everything else derives from it.
ROW_MODES = ("key_share", "share", "no_key_update", "update")
MARKER_MODES = ROW_MODES

# Integer primary keys in this range are stored in the marker as they are, so
# the ``flask chrononaut locks`` command can show them; others are hashed.
_DIRECT_MIN = -(2**28)
_DIRECT_MAX = 2**28 - 1


def string_key(text: str) -> int:
    """The 64-bit advisory key of a string.

    The first 8 bytes of the SHA-256 digest of the UTF-8 encoded string, read as a
    big-endian signed integer. It is the same in every process, on every machine
    and with every Python version (unlike :func:`hash`), and PostgreSQL can
    compute it too::

        SELECT ('x' || left(encode(sha256(convert_to(:text, 'UTF8')), 'hex'), 16))
               ::bit(64)::bigint

    :param text: the key as a string.
    :raises TypeError: ``text`` is not a ``str``.
    :raises ValueError: ``text`` holds a lone surrogate (it has no UTF-8 form).
    """
    if not isinstance(text, str):
        raise TypeError(f"string_key() needs a str, not {type(text).__name__}")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "advisory lock key holds a lone surrogate, which has no UTF-8 form; "
            "pass a valid Unicode string"
        ) from None
    digest = hashlib.sha256(encoded).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def advisory_key(key: object) -> AdvisoryKey:
    """Validate an advisory lock key and return its normalised form.

    :param key: an int in the signed 64-bit range, a string (hashed with
        :func:`string_key`), or a pair (tuple) of ints in the signed 32-bit range.
    :raises TypeError: for any other type (``bool`` included).
    :raises ValueError: for an int out of range.
    """
    if isinstance(key, bool):
        raise TypeError("advisory lock key must be an int, a str or a pair of ints, not bool")
    if isinstance(key, int):
        if not INT64_MIN <= key <= INT64_MAX:
            raise ValueError(f"advisory lock key {key} is outside the signed 64-bit range")
        return int(key)
    if isinstance(key, str):
        return string_key(key)
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TypeError(
                f"advisory lock key pair must have exactly two ints, got {len(key)} items"
            )
        parts: list[int] = []
        for part in key:
            if isinstance(part, bool) or not isinstance(part, int):
                raise TypeError(f"advisory lock key pair must hold ints, got {type(part).__name__}")
            if not INT32_MIN <= part <= INT32_MAX:
                raise ValueError(
                    f"advisory lock key part {part} is outside the signed 32-bit range"
                )
            parts.append(int(part))
        return (parts[0], parts[1])
    raise TypeError(
        "advisory lock key must be an int, a str or a pair (tuple) of ints, "
        f"not {type(key).__name__}"
    )


def pg_locks_ids(key: AdvisoryKey) -> tuple[int, int, int]:
    """``(classid, objid, objsubid)`` under which ``pg_locks`` lists ``key``."""
    if isinstance(key, tuple):
        return (key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF, 2)
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return (unsigned >> 32, unsigned & 0xFFFFFFFF, 1)


def physical_table(
    table: sa.Table, options: Mapping[str, Any] | None = None
) -> tuple[str | None, str]:
    """``(schema, name)`` of ``table`` as the database sees it.

    :param options: the execution options of the connection the lock runs on; its
        ``schema_translate_map`` (if any) renames the schema, as it does for the
        statements SQLAlchemy compiles on that connection.
    """
    schema = table.schema
    translate = (options or {}).get("schema_translate_map")
    if translate and schema in translate:
        schema = translate[schema]
    return schema, table.name


def quoted_table(dialect: sa.Dialect, schema: str | None, name: str) -> str:
    """``"schema"."name"`` (or ``"name"``) quoted for SQL and ``regclass`` casts.

    Always quoted, exactly as named, and never %-escaped: the text goes into
    ``text()`` (which escapes ``%`` itself for the driver) and into bound values
    (where an escaped ``%%`` would name another table).
    """
    quote = quote_identifier
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def quote_identifier(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier, not %-escaped (see quoted_table)."""
    return '"' + identifier.replace('"', '""') + '"'


def _key_value(value: Any) -> Any:
    # JSON keeps ints and strings apart and quotes every separator, so two
    # different keys never give the same text. Other types (UUID, date, Decimal)
    # come as their str(), which is one-to-one within one column type.
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def record_key_text(kind: str, schema: str | None, table: str, pk: Sequence[Any]) -> str:
    """The unambiguous text of a row's lock identity.

    A JSON array ``[kind, schema, table, [primary-key values]]`` (compact, no ASCII
    escaping); ``kind`` is ``"chrononaut.record"`` for ``record.advisory_lock()``
    and ``"chrononaut.row"`` for the holder marker of a row lock.
    """
    return json.dumps(
        [kind, schema, table, [_key_value(v) for v in pk]],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def is_direct(pk: Sequence[Any]) -> bool:
    """Whether ``pk`` is one int small enough to be stored in a marker as it is."""
    return len(pk) == 1 and type(pk[0]) is int and _DIRECT_MIN <= pk[0] <= _DIRECT_MAX


def row_marker(schema: str | None, table: str, pk: Sequence[Any], mode: str) -> tuple[bool, int]:
    """The marker lock that names a locked row (see docs/locking.rst, "Lock holders").

    Returns ``(direct, value)``. A primary key that is one int in
    [-2**28, 2**28) is *direct*: the marker is the pair
    ``(table OID, (pk << 3) | mode_code)`` and ``value`` is its second int (the
    server finds the OID). Every other key gives a 64-bit key, ``value``: the
    :func:`string_key` of :func:`record_key_text` ``("chrononaut.row", ...)``, i.e.
    of the physical table and the whole key, so two rows share a marker only by a
    64-bit hash collision.

    :param pk: the primary-key values of the row.
    :param mode: one of :data:`MARKER_MODES`.
    """
    code = MARKER_MODES.index(mode)
    if is_direct(pk):
        return True, (pk[0] << 3) | code
    return False, string_key(record_key_text("chrononaut.row", schema, table, pk))


def marker_params(schema: str | None, table: str, pk: Sequence[Any], mode: str) -> dict[str, Any]:
    """Bind parameters ``direct``, ``m32``, ``m64`` of a marker-taking statement."""
    direct, value = row_marker(schema, table, pk, mode)
    return {"direct": direct, "m32": value if direct else 0, "m64": 0 if direct else value}


def marker_base(value: int) -> int:
    """``pg_locks.objid >> 2`` of every pair marker of a direct row, whatever the mode."""
    return (value & 0xFFFFFFFF) >> 2


def decode_marker(objid: int) -> tuple[int, str]:
    """``(primary key, mode)`` from a pair marker's ``pg_locks.objid``."""
    signed = objid - 2**32 if objid >= 2**31 else objid
    return signed >> 3, MARKER_MODES[signed & 3]
