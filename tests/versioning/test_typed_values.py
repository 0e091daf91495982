"""Issue 2 item 5: history columns keep the source types, so values read back from
history are exactly what was written (no ``str()`` round trip, no spurious diffs)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from chrononaut import Versioned, VersionedSQLAlchemy, history_class


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


CASES: dict[str, tuple[Any, Any, Any]] = {
    "uuid": (postgresql.UUID(as_uuid=True), uuid.UUID(int=1), uuid.UUID(int=2)),
    "uuid_generic": (sa.Uuid(), uuid.UUID(int=3), uuid.UUID(int=4)),
    "uuid_str": (postgresql.UUID(as_uuid=False), str(uuid.UUID(int=5)), str(uuid.UUID(int=6))),
    "enum": (sa.Enum(Color, name="chron_test_color"), Color.RED, Color.BLUE),
    "json": (sa.JSON(), {"a": [1, 2.5, {"b": None}], "c": "x"}, {"a": []}),
    "jsonb": (postgresql.JSONB(), {"a": [1, 2.5, {"b": None}], "c": "x"}, [1, "two"]),
    "numeric": (sa.Numeric(12, 4), Decimal("1234.5678"), Decimal("0.0001")),
    "date": (sa.Date(), dt.date(2024, 2, 29), dt.date(1999, 12, 31)),
    "datetime_tz": (
        sa.DateTime(timezone=True),
        dt.datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        dt.datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=dt.timezone.utc),
    ),
    "datetime_naive": (
        sa.DateTime(),
        dt.datetime(2024, 3, 1, 12, 30, 45, 123456),
        dt.datetime(2025, 1, 1, 0, 0, 0, 1),
    ),
    "array": (postgresql.ARRAY(sa.Integer), [1, 2, 3], [4]),
}


def _model(db: VersionedSQLAlchemy, column_type: Any) -> Any:
    class Typed(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "typed"
        id = db.Column(db.Integer, primary_key=True)
        value = db.Column(column_type)
        label = db.Column(db.String(20))

    db.create_all()
    return Typed


@pytest.mark.parametrize("case", list(CASES))
def test_history_column_type_kept(db: VersionedSQLAlchemy, case: str) -> None:
    """The history column has the same SQL type as the source column."""
    column_type = CASES[case][0]
    model = _model(db, column_type)
    history_type = cast(Any, history_class(model)).__table__.c.value.type
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert type(history_type) is type(column_type)
    assert history_type.compile(dialect=dialect) == column_type.compile(dialect=dialect)


@pytest.mark.parametrize("case", list(CASES))
def test_history_value_read_back_equal(db: VersionedSQLAlchemy, case: str) -> None:
    """A value read back from history equals, with the same Python type, what was written."""
    column_type, first, second = CASES[case]
    model = _model(db, column_type)
    record = model(value=first, label="a")
    db.session.add(record)
    db.session.commit()
    record.value = second
    db.session.commit()
    db.session.expire_all()
    old = record.versions()[0].value
    assert old == first
    assert type(old) is type(first)


@pytest.mark.parametrize("case", list(CASES))
def test_no_spurious_diff(db: VersionedSQLAlchemy, case: str) -> None:
    """Changing another column does not make an unchanged typed value show up in ``diff``."""
    column_type, first, _ = CASES[case]
    model = _model(db, column_type)
    record = model(value=first, label="a")
    db.session.add(record)
    db.session.commit()
    record.label = "b"
    db.session.commit()
    db.session.expire_all()
    assert record.diff(record.versions()[0]) == {"label": ("a", "b")}


@pytest.mark.parametrize("case", list(CASES))
def test_typed_value_diff(db: VersionedSQLAlchemy, case: str) -> None:
    """``diff`` reports a changed typed value as the exact old and new values."""
    column_type, first, second = CASES[case]
    model = _model(db, column_type)
    record = model(value=first, label="a")
    db.session.add(record)
    db.session.commit()
    record.value = second
    db.session.commit()
    db.session.expire_all()
    assert record.diff(record.versions()[0]) == {"value": (first, second)}


@pytest.mark.parametrize("case", list(CASES))
def test_typed_value_restore(db: VersionedSQLAlchemy, case: str) -> None:
    """``restore`` puts back the exact typed value."""
    column_type, first, second = CASES[case]
    model = _model(db, column_type)
    record = model(value=first, label="a")
    db.session.add(record)
    db.session.commit()
    record.value = second
    db.session.commit()
    record.restore(0)
    db.session.commit()
    db.session.expire_all()
    assert (record.value, record.label, record.version) == (first, "a", 2)
    assert [(h.version, h.value, h.label) for h in record.versions()] == [
        (0, first, "a"),
        (1, second, "a"),
    ]


class CommaList(sa.TypeDecorator[list[str]]):
    """A list of strings stored as one comma-separated string."""

    impl = sa.String(200)
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Any) -> str | None:
        return None if value is None else ",".join(value)

    def process_result_value(self, value: str | None, dialect: Any) -> list[str] | None:
        return None if value is None else (value.split(",") if value else [])


# Per case: the type, and for three records their values before and after one flush
# that changes all three (lists of different lengths, empty and nested lists).
MANY: dict[str, tuple[Any, list[Any], list[Any]]] = {
    "json": (sa.JSON(), [[1, 2], [], {"a": 1}], [[3], [[1], [2]], [4, 5, 6]]),
    "jsonb": (postgresql.JSONB(), [[1, 2], [], "s"], [[], [[1], [2]], [None, 1]]),
    "pickle": (sa.PickleType(), [[1, 2], [3], ("t",)], [[4], [5, 6, 7], []]),
    "decorated_list": (CommaList(), [["a", "b"], ["c"], []], [["d"], [], ["e", "f", "g"]]),
    "array": (postgresql.ARRAY(sa.Integer), [[1, 2], [3], []], [[4], [], [5, 6, 7]]),
    "interval": (
        sa.Interval(),
        [dt.timedelta(1), dt.timedelta(2), dt.timedelta(3)],
        [dt.timedelta(4), dt.timedelta(5), dt.timedelta(6)],
    ),
    "text": (sa.Text(), ["a", "b", "c"], ["d", "e", "f"]),
}


@pytest.mark.parametrize("case", list(MANY))
def test_many_records_in_one_flush(db: VersionedSQLAlchemy, case: str) -> None:
    """Records changed in one flush keep their own values, list values included."""
    column_type, before, after = MANY[case]
    model = _model(db, column_type)
    records = [model(id=i, value=value, label="a") for i, value in enumerate(before)]
    db.session.add_all(records)
    db.session.commit()
    for record, value in zip(records, after, strict=True):
        record.value = value
    db.session.commit()
    db.session.expire_all()
    assert [(r.value, r.version) for r in records] == [(value, 1) for value in after]
    assert [r.versions()[0].value for r in records] == before


def test_aware_datetime_exact_instant(db: VersionedSQLAlchemy) -> None:
    """An aware datetime in a non-UTC zone reads back from history as the same instant (µs)."""
    model = _model(db, sa.DateTime(timezone=True))
    when = dt.datetime(2024, 3, 1, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    record = model(value=when, label="a")
    db.session.add(record)
    db.session.commit()
    record.value = None
    db.session.commit()
    old = record.versions()[0].value
    assert old.tzinfo is not None
    assert old.astimezone(dt.timezone.utc) == when.astimezone(dt.timezone.utc)


def test_none_value_in_history(db: VersionedSQLAlchemy) -> None:
    """A NULL tracked value is stored in history as ``None``."""
    model = _model(db, sa.Numeric(12, 4))
    record = model(value=None, label="a")
    db.session.add(record)
    db.session.commit()
    record.value = Decimal("1.5")
    db.session.commit()
    assert record.versions()[0].value is None


# UUID primary keys


@pytest.fixture()
def Token(db: VersionedSQLAlchemy) -> Any:
    """A model whose primary key is ``UUID(as_uuid=True)``."""

    class Token(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "token"
        id = db.Column(postgresql.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
        scope = db.Column(db.String(40))

    db.create_all()
    return Token


def test_uuid_pk_history(db: VersionedSQLAlchemy, Token: Any) -> None:
    """A ``UUID(as_uuid=True)`` primary key is copied into history as a ``uuid.UUID``."""
    token = Token(scope="read")
    db.session.add(token)
    db.session.commit()
    token.scope = "write"
    db.session.commit()
    [old] = token.versions()
    assert isinstance(old.id, uuid.UUID)
    assert (old.id, old.version, old.scope) == (token.id, 0, "read")


def test_uuid_pk_versions_per_record(db: VersionedSQLAlchemy, Token: Any) -> None:
    """``versions()`` selects by a UUID primary key correctly."""
    first, second = Token(scope="a"), Token(scope="b")
    db.session.add_all([first, second])
    db.session.commit()
    first.scope = "a2"
    second.scope = "b2"
    db.session.commit()
    second.scope = "b3"
    db.session.commit()
    assert [h.scope for h in first.versions()] == ["a"]
    assert [h.scope for h in second.versions()] == ["b", "b2"]


def test_uuid_pk_delete_and_reinsert(db: VersionedSQLAlchemy, Token: Any) -> None:
    """Deleting and re-inserting a UUID key continues its history without collision."""
    key = uuid.uuid4()
    token = Token(id=key, scope="a")
    db.session.add(token)
    db.session.commit()
    db.session.delete(token)
    db.session.commit()
    again = Token(id=key, scope="b")
    db.session.add(again)
    db.session.commit()
    again.scope = "c"
    db.session.commit()
    assert [(h.version, h.scope) for h in again.versions()] == [(0, "a"), (1, "b")]


def test_composite_pk(db: VersionedSQLAlchemy) -> None:
    """A composite primary key plus ``version`` is the history primary key."""

    class Seat(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "seat"
        row = db.Column(db.String(2), primary_key=True)
        number = db.Column(db.Integer, primary_key=True)
        holder = db.Column(db.String(40))

    db.create_all()
    assert {c.name for c in cast(Any, history_class(Seat)).__table__.primary_key.columns} == {
        "row",
        "number",
        "version",
    }
    a1, a2 = Seat(row="A", number=1, holder="x"), Seat(row="A", number=2, holder="y")
    db.session.add_all([a1, a2])
    db.session.commit()
    a1.holder = "z"
    a2.holder = "w"
    db.session.commit()
    assert [(h.row, h.number, h.holder) for h in a1.versions()] == [("A", 1, "x")]
    assert [(h.row, h.number, h.holder) for h in a2.versions()] == [("A", 2, "y")]
