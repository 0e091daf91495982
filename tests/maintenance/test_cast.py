"""Reading values Chrononaut 0.3/0.4 stored through ``str()`` back as column values."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB

from chrononaut.maintenance._cast import cast_value


class Color(enum.Enum):
    red = "r"
    green = "g"


@pytest.mark.parametrize(
    ("type_", "stored", "expected"),
    [
        (sa.Integer(), 5, 5),
        (sa.Integer(), "5", 5),
        (sa.Numeric(10, 2), "1.50", decimal.Decimal("1.50")),
        (sa.Float(), 1.5, 1.5),
        (sa.Boolean(), False, False),
        (sa.Boolean(), "True", True),
        (sa.String(), "text", "text"),
        (sa.Date(), "2020-01-02", dt.date(2020, 1, 2)),
        (
            sa.DateTime(timezone=True),
            "2020-01-02T03:04:05.000006+00:00",
            dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
        ),
        (
            sa.DateTime(timezone=True),
            "2020-01-02 03:04:05Z",
            dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        ),
        (sa.Time(), "12:30:00", dt.time(12, 30)),
        (sa.Interval(), "1 day, 2:03:04.500000", dt.timedelta(days=1, seconds=7384.5)),
        (sa.Interval(), "-1 day, 23:00:00", dt.timedelta(hours=-1)),
        (sa.Uuid(), str(uuid.UUID(int=7)), uuid.UUID(int=7)),
        (JSONB(), "{'a': [1, None, True]}", {"a": [1, None, True]}),
        (JSONB(), "just text", "just text"),
        (sa.JSON(), '{"a": 1}', {"a": 1}),
        (ARRAY(sa.Integer()), "[1, 2]", [1, 2]),
        (sa.LargeBinary(), "b'\\x00\\x01'", b"\x00\x01"),
        (sa.Enum(Color), "Color.green", Color.green),
        (sa.Enum(Color), "green", Color.green),
        (sa.Enum("a", "b", name="plain"), "a", "a"),
        (INET(), "10.0.0.1", "10.0.0.1"),
        (sa.Integer(), None, None),
    ],
)
def test_cast_value(type_: sa.types.TypeEngine[Any], stored: Any, expected: Any) -> None:
    """Each column type reads back the value 0.4 stored for it."""
    assert cast_value(type_, stored) == expected


def test_unreadable_value_raises_value_error() -> None:
    """A value that isn't of the column's type raises ValueError (the importer names it)."""
    with pytest.raises(ValueError):
        cast_value(sa.Integer(), "twelve")
