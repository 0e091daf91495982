"""Advisory lock keys: validation, the stable string hash, and row markers.

PostgreSQL advisory locks have two key spaces: one signed 64-bit integer
(``pg_locks.objsubid = 1``) and a pair of signed 32-bit integers
(``objsubid = 2``). They never conflict with each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AdvisoryKey",
    "advisory_key",
    "pg_locks_ids",
    "row_marker",
    "string_key",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: A normalised advisory key: one 64-bit int, or a pair of 32-bit ints.
AdvisoryKey = int | tuple[int, int]

#: Row-lock modes in the order of their marker code (the low 2 bits of the key).
MARKER_MODES = ("key_share", "share", "no_key_update", "update")

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
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
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


def pk_text(pk: Sequence[Any]) -> str:
    """The primary key as text: ``str()`` of each value, joined by ``/``."""
    return "/".join(str(value) for value in pk)


def row_marker(pk: Sequence[Any], mode: str) -> int:
    """The second int of the marker lock that names a locked row (see docs/locking.rst).

    ``(p << 3) | (hashed << 2) | mode_code``: ``p`` is the primary key itself when it
    is one int in [-2**28, 2**28), else 29 bits of SHA-256 of :func:`pk_text`
    (``hashed`` = 1). The first int of the marker is the table's OID.

    :param pk: the primary-key values of the row.
    :param mode: one of :data:`MARKER_MODES`.
    """
    code = MARKER_MODES.index(mode)
    if len(pk) == 1 and type(pk[0]) is int and _DIRECT_MIN <= pk[0] <= _DIRECT_MAX:
        return (pk[0] << 3) | code
    digest = hashlib.sha256(pk_text(pk).encode("utf-8")).digest()
    p = int.from_bytes(digest[:4], "big", signed=True) >> 3
    return (p << 3) | 4 | code


def marker_base(pk: Sequence[Any]) -> int:
    """``pg_locks.objid >> 2`` of every marker of this row, whatever the mode."""
    return (row_marker(pk, MARKER_MODES[0]) & 0xFFFFFFFF) >> 2


def decode_marker(objid: int) -> tuple[int | None, str]:
    """``(primary key or None when hashed, mode)`` from a marker's ``pg_locks.objid``."""
    signed = objid - 2**32 if objid >= 2**31 else objid
    mode = MARKER_MODES[signed & 3]
    if signed & 4:
        return None, mode
    return signed >> 3, mode
