"""Turning values the original Chrononaut stored as text back into column values.

Chrononaut 0.3/0.4 wrote each column value into JSON as it was when it was
``None``, a string, a number, a bool or a datetime (as ISO 8601), and as
``str(value)`` otherwise: ``Decimal('1.50')`` became ``"1.50"``, a UUID its
canonical text, a dict ``"{'a': 1}"``, an enum member ``"Color.red"``.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import enum
import json
import re
import uuid
from typing import Any

import sqlalchemy as sa

__all__ = ["cast_value"]

_TIMEDELTA = re.compile(
    r"^(?:(?P<days>-?\d+) days?, )?(?P<hours>-?\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2})"
    r"(?:\.(?P<micro>\d{1,6}))?$"
)


def _python_type(type_: sa.types.TypeEngine[Any]) -> type[Any] | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _datetime(text: str) -> dt.datetime:
    # Python 3.10's fromisoformat() does not read a trailing "Z".
    return dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _timedelta(text: str) -> dt.timedelta:
    match = _TIMEDELTA.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a str(timedelta)")
    micro = match["micro"] or "0"
    return dt.timedelta(
        days=int(match["days"] or 0),
        hours=int(match["hours"]),
        minutes=int(match["minutes"]),
        seconds=int(match["seconds"]),
        microseconds=int(micro.ljust(6, "0")),
    )


def _literal(text: str) -> Any:
    """A dict/list/bytes written by ``str()`` (Python syntax) or as JSON text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return json.loads(text)


def _enum(type_: sa.Enum, value: Any) -> Any:
    enum_class = type_.enum_class
    if enum_class is None or not isinstance(value, str):
        return value
    # str(member) is "Class.name"; the database (and a plain sa.Enum) holds the name.
    name = value.split(".", 1)[1] if value.startswith(f"{enum_class.__name__}.") else value
    if name in enum_class.__members__:
        return enum_class[name]
    return enum_class(value)


def cast_value(type_: sa.types.TypeEngine[Any], value: Any) -> Any:
    """``value`` as read from a 0.3/0.4 activity row, as a value of a ``type_`` column.

    Values whose Python type is unknown (PostgreSQL-specific types such as
    ``INET``) are passed on as text: PostgreSQL casts text literals on insert.

    :param type_: the column's SQLAlchemy type.
    :param value: the JSON value from the activity row's ``data``.
    :raises ValueError: when the value can't be read as that type.
    """
    if value is None:
        return None
    # A TypeDecorator's python_type is its own (Interval's is timedelta, its impl's
    # a datetime); the structural checks below look at what it stores.
    impl = type_.impl_instance if isinstance(type_, sa.types.TypeDecorator) else type_
    if isinstance(impl, sa.Enum):
        return _enum(impl, value)
    if isinstance(impl, sa.JSON | sa.ARRAY):
        # Containers written by str() are Python literals; a JSON string that
        # merely looks like one stays a string.
        if isinstance(value, str) and value[:1] in "{[(":
            try:
                return _literal(value)
            except (ValueError, SyntaxError):
                return value
        return value
    python_type = _python_type(type_)
    if python_type is None:
        return value
    if python_type is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "t", "1"):
            return True
        if str(value).lower() in ("false", "f", "0"):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    if isinstance(value, python_type) and not (python_type is int and isinstance(value, bool)):
        if python_type is dt.date and isinstance(value, dt.datetime):
            return value.date()
        return value
    if python_type is dt.datetime:
        return _datetime(str(value))
    if python_type is dt.date:
        text = str(value)
        return _datetime(text).date() if "T" in text or " " in text else dt.date.fromisoformat(text)
    if python_type is dt.time:
        return dt.time.fromisoformat(str(value))
    if python_type is dt.timedelta:
        if isinstance(value, int | float):
            return dt.timedelta(seconds=value)
        return _timedelta(str(value))
    if python_type is decimal.Decimal:
        return decimal.Decimal(str(value))
    if python_type is int:
        return int(value)
    if python_type is float:
        return float(value)
    if python_type is str:
        return str(value)
    if python_type is uuid.UUID:
        return uuid.UUID(str(value))
    if python_type is bytes:
        if isinstance(value, str) and value[:2] in ("b'", 'b"'):
            result = ast.literal_eval(value)
            if isinstance(result, bytes):
                return result
        if isinstance(value, str):
            return value.encode()
    if python_type in (dict, list) and isinstance(value, str):
        return _literal(value)
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        return python_type(value)
    return value
