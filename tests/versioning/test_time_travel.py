"""SPEC §2 "Time travel": ``chrononaut.as_of(Model, at)`` and ``version_at()`` by ranges."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import (
    ChrononautException,
    HiddenAttributeError,
    UntrackedAttributeError,
    Versioned,
    VersionedSQLAlchemy,
    as_of,
    history_class,
)

US = dt.timedelta(microseconds=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture(params=[False, True], ids=["btree", "range-index"])
def Account(db: VersionedSQLAlchemy, request: pytest.FixtureRequest) -> type[Any]:
    """An account table with a hidden and an untracked column, with and without the
    GiST range index (the two forms of the as_of query)."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "account"
        __chrononaut_range_index__ = request.param
        __chrononaut_hidden__ = ["pin"]
        __chrononaut_untracked__ = ["visits"]
        id = db.Column(db.Integer, primary_key=True)
        owner = db.Column(db.String(40))
        balance = db.Column(db.Integer)
        pin = db.Column(db.String(8))
        visits = db.Column(db.Integer, default=0)

    db.create_all()
    return Account


@pytest.fixture()
def timeline(db: VersionedSQLAlchemy, Account: Any) -> dict[str, dt.datetime]:
    """t0 nothing; t1 a=10, b=20; t2 a=15, b=20, c=5; t3 a=15, c=7 (b deleted)."""
    times = {"t0": _now()}
    db.session.add_all([Account(id=1, owner="a", balance=10), Account(id=2, owner="b", balance=20)])
    db.session.commit()
    times["t1"] = _now()
    cast(Any, db.session.get(Account, 1)).balance = 15
    db.session.add(Account(id=3, owner="c", balance=5))
    db.session.commit()
    times["t2"] = _now()
    db.session.delete(db.session.get(Account, 2))
    cast(Any, db.session.get(Account, 3)).balance = 7
    db.session.commit()
    times["t3"] = _now()
    return times


def _state(db: VersionedSQLAlchemy, Past: Any) -> list[tuple[int, str, int]]:
    rows = db.session.scalars(sa.select(Past).order_by(Past.id)).all()
    return [(r.id, r.owner, r.balance) for r in rows]


def test_as_of_each_instant(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``as_of`` yields every row that existed then, with its values then."""
    assert _state(db, as_of(Account, timeline["t0"])) == []
    assert _state(db, as_of(Account, timeline["t1"])) == [(1, "a", 10), (2, "b", 20)]
    assert _state(db, as_of(Account, timeline["t2"])) == [(1, "a", 15), (2, "b", 20), (3, "c", 5)]
    assert _state(db, as_of(Account, timeline["t3"])) == [(1, "a", 15), (3, "c", 7)]


def test_as_of_yields_history_records(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """Records are history-class instances; still-current ones have no ``changed``."""
    Past = as_of(Account, timeline["t2"])
    rows = {r.id: r for r in db.session.scalars(sa.select(Past))}
    assert all(isinstance(r, history_class(Account)) for r in rows.values())
    assert rows[1].changed is None and rows[1].change_info is None and rows[1].version == 1
    assert rows[2].changed is not None and rows[2].change_info["deleted"] is True
    assert rows[3].version == 0 and rows[3].changed is not None


def test_future_is_current_state(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """An instant in the future gives the current state."""
    future = _now() + dt.timedelta(days=365)
    assert _state(db, as_of(Account, future)) == [(1, "a", 15), (3, "c", 7)]


def test_exact_boundaries(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """A version covers ``[valid_from, changed)``: its start included, its end not."""
    (old,) = cast(Any, db.session.get(Account, 1)).versions()
    assert _state(db, as_of(Account, old.valid_from))[0] == (1, "a", 10)
    assert _state(db, as_of(Account, old.changed - US))[0] == (1, "a", 10)
    assert _state(db, as_of(Account, old.changed))[0] == (1, "a", 15)
    assert _state(db, as_of(Account, old.valid_from - US)) == []


def test_where_order_by_limit(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``where`` / ``order_by`` on the alias's attributes and ``limit`` compose."""
    Past = as_of(Account, timeline["t2"])
    query = sa.select(Past).where(Past.balance > 6).order_by(Past.balance.desc()).limit(1)
    assert [r.owner for r in db.session.scalars(query)] == ["b"]


def test_count(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``select(func.count()).select_from(Past)`` counts the rows at that instant."""
    for name, expected in (("t0", 0), ("t1", 2), ("t2", 3), ("t3", 2)):
        Past = as_of(Account, timeline[name])
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Past)) == expected


def test_join_two_instants(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """Two ``as_of`` entities (two instants) join like any aliased classes."""
    Then = as_of(Account, timeline["t1"])
    Now = as_of(Account, timeline["t3"])
    query = (
        sa.select(Then.id, Then.balance, Now.balance).join(Now, Now.id == Then.id).order_by(Then.id)
    )
    assert db.session.execute(query).all() == [(1, 10, 15)]


def test_aliased_as_of_self_join(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``aliased(Past)`` is a second, independent entity of the same instant (a
    self-join)."""
    Past = as_of(Account, timeline["t1"])
    Other = sa.orm.aliased(Past)
    query = (
        sa.select(Past.id, Other.id)
        .join(Other, Other.balance == Past.balance)
        .order_by(Past.id, Other.id)
    )
    rows = db.session.execute(query).all()
    assert rows and all(a == b for a, b in rows)
    assert [a for a, _ in rows] == db.session.scalars(sa.select(Past.id).order_by(Past.id)).all()


def test_subquery_columns_named_by_key(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """A subquery or CTE of ``select(Past.id, Past.balance)`` names its columns
    ``id`` and ``balance``, as one of any aliased class does."""
    Past = as_of(Account, timeline["t1"])
    for derived in (
        sa.select(Past.id, Past.balance).subquery(),
        sa.select(Past.id, Past.balance).cte(),
    ):
        assert list(derived.c.keys()) == ["id", "balance"]
        assert db.session.execute(sa.select(derived.c.balance).where(derived.c.id == 1)).all()


def test_paginate(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``db.paginate()`` pages through a table as of an instant."""
    Past = as_of(Account, timeline["t2"])
    page = db.paginate(sa.select(Past).order_by(Past.id), page=2, per_page=2)
    assert page.total == 3
    assert [r.id for r in page.items] == [3]


def test_current_record_readable_after_commit(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """A record of a still-current version stays readable after commit and expiry."""
    Past = as_of(Account, timeline["t3"])
    current = db.session.scalars(sa.select(Past).where(Past.id == 1)).one()
    db.session.commit()
    db.session.expire_all()
    assert (current.owner, current.balance, current.version) == ("a", 15, 1)


def test_current_record_not_confused_with_later_history(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """After the row changes, the history row of that version is a record of its own."""
    Past = as_of(Account, timeline["t3"])
    current = db.session.scalars(sa.select(Past).where(Past.id == 1)).one()
    account = db.session.get(Account, 1)
    assert account is not None
    account.balance = 99
    db.session.commit()
    (_, v1) = account.versions()
    assert v1 is not current
    assert (v1.version, v1.balance) == (1, 15) and v1.changed is not None
    assert current.changed is None
    Again = as_of(Account, timeline["t3"])
    again = db.session.scalars(sa.select(Again).where(Again.id == 1)).one()
    assert again.changed is not None and again is not current


def test_history_records_read_only(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """Records from ``as_of`` are read-only."""
    Past = as_of(Account, timeline["t3"])
    for record in db.session.scalars(sa.select(Past)):
        with pytest.raises(ChrononautException):
            record.balance = 0


def test_hidden_and_untracked(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """Hidden and untracked columns are not readable from the past, even for current rows."""
    for at in (timeline["t2"], timeline["t3"]):
        for record in db.session.scalars(sa.select(as_of(Account, at))):
            with pytest.raises(HiddenAttributeError):
                record.pin  # noqa: B018
            with pytest.raises(UntrackedAttributeError):
                record.visits  # noqa: B018


def test_reused_primary_key(db: VersionedSQLAlchemy, Account: Any) -> None:
    """A key deleted and inserted again: each instant sees its own incarnation (or none)."""
    db.session.add(Account(id=1, owner="first", balance=1))
    db.session.commit()
    t1 = _now()
    db.session.delete(db.session.get(Account, 1))
    db.session.commit()
    gap = _now()
    db.session.add(Account(id=1, owner="second", balance=2))
    db.session.commit()
    t2 = _now()
    assert _state(db, as_of(Account, t1)) == [(1, "first", 1)]
    assert _state(db, as_of(Account, gap)) == []
    assert _state(db, as_of(Account, t2)) == [(1, "second", 2)]


def test_naive_datetime_is_utc(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """A naive ``at`` is taken as UTC."""
    naive = timeline["t1"].astimezone(dt.timezone.utc).replace(tzinfo=None)
    assert _state(db, as_of(Account, naive)) == [(1, "a", 10), (2, "b", 20)]


@pytest.mark.parametrize("value", ["2024-01-01", 1700000000, None, dt.date(2024, 1, 1)])
def test_at_must_be_datetime(Account: Any, value: Any) -> None:
    """A non-datetime ``at`` raises ``TypeError``."""
    with pytest.raises(TypeError):
        as_of(Account, value)


def test_not_versioned_refused(db: VersionedSQLAlchemy) -> None:
    """A model that is not Versioned raises ``TypeError``."""

    class Plain(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "plain"
        id = db.Column(db.Integer, primary_key=True)

    with pytest.raises(TypeError):
        as_of(Plain, _now())
    with pytest.raises(TypeError):
        as_of(object(), _now())  # type: ignore[arg-type]


def test_legacy_rows_with_null_valid_from(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """Rows whose ``valid_from`` is NULL begin where the key's previous row ended."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE account SET valid_from = NULL"))
        conn.execute(sa.text("UPDATE account_history SET valid_from = NULL"))
    db.session.expire_all()
    # Without a start, the first version of each key reaches back to the beginning.
    assert _state(db, as_of(Account, timeline["t0"])) == [(1, "a", 10), (2, "b", 20), (3, "c", 5)]
    assert _state(db, as_of(Account, timeline["t1"])) == [(1, "a", 10), (2, "b", 20), (3, "c", 5)]
    assert _state(db, as_of(Account, timeline["t2"])) == [(1, "a", 15), (2, "b", 20), (3, "c", 5)]
    assert _state(db, as_of(Account, timeline["t3"])) == [(1, "a", 15), (3, "c", 7)]


def test_legacy_rows_of_a_long_history(db: VersionedSQLAlchemy, Account: Any) -> None:
    """With NULL ``valid_from`` on every row, each instant of a key's long history
    yields exactly the version current then (never the later legacy versions too)."""
    db.session.add(Account(id=1, owner="a", balance=0))
    db.session.commit()
    instants = [_now()]
    for balance in (1, 2, 3):
        cast(Any, db.session.get(Account, 1)).balance = balance
        db.session.commit()
        instants.append(_now())
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE account SET valid_from = NULL"))
        conn.execute(sa.text("UPDATE account_history SET valid_from = NULL"))
    db.session.expire_all()
    for balance, at in enumerate(instants):
        assert _state(db, as_of(Account, at)) == [(1, "a", balance)], balance


def test_legacy_live_row_after_history(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """A live row with NULL ``valid_from`` begins where its last history row ended."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE account SET valid_from = NULL WHERE id = 1"))
    (old,) = cast(Any, db.session.get(Account, 1)).versions()
    assert _state(db, as_of(Account, old.changed - US))[0] == (1, "a", 10)
    assert _state(db, as_of(Account, old.changed))[0] == (1, "a", 15)


# Inheritance


@pytest.fixture()
def joined(db: VersionedSQLAlchemy) -> dict[str, Any]:
    """Joined-table inheritance: Staff and Engineer(Staff)."""

    class Staff(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "staff"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(20))
        name = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "staff"}

    class Engineer(Staff):
        __tablename__ = "engineer"
        id = db.Column(db.Integer, db.ForeignKey("staff.id"), primary_key=True)
        skill = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    db.create_all()
    return {"Staff": Staff, "Engineer": Engineer}


def test_joined_subclass(db: VersionedSQLAlchemy, joined: dict[str, Any]) -> None:
    """``as_of(Sub, at)`` yields only Sub rows, with the subclass's columns."""
    Staff, Engineer = joined["Staff"], joined["Engineer"]
    db.session.add_all([Staff(id=1, name="boss"), Engineer(id=2, name="eng", skill="sql")])
    db.session.commit()
    t1 = _now()
    cast(Any, db.session.get(Engineer, 2)).skill = "python"
    db.session.commit()
    t2 = _now()
    for at, skill in ((t1, "sql"), (t2, "python")):
        rows = db.session.scalars(sa.select(as_of(Engineer, at))).all()
        assert [(r.id, r.name, r.skill) for r in rows] == [(2, "eng", skill)]
        assert all(isinstance(r, history_class(Engineer)) for r in rows)
    count = sa.select(sa.func.count()).select_from(as_of(Engineer, t1))
    assert db.session.scalar(count) == 1


def test_joined_base_sees_all(db: VersionedSQLAlchemy, joined: dict[str, Any]) -> None:
    """``as_of(Base, at)`` yields the rows of every class in the hierarchy."""
    Staff, Engineer = joined["Staff"], joined["Engineer"]
    db.session.add_all([Staff(id=1, name="boss"), Engineer(id=2, name="eng", skill="sql")])
    db.session.commit()
    t1 = _now()
    cast(Any, db.session.get(Engineer, 2)).skill = "python"
    db.session.commit()
    for at, skill in ((t1, "sql"), (_now(), "python")):
        Past = as_of(Staff, at)
        rows = db.session.scalars(sa.select(Past).order_by(Past.id)).all()
        db.session.commit()  # records stay readable, subclass columns included
        assert [r.name for r in rows] == ["boss", "eng"]
        assert isinstance(rows[1], history_class(Engineer)) and rows[1].skill == skill
        assert type(rows[0]) is history_class(Staff)
        count = sa.select(sa.func.count()).select_from(Past)
        assert db.session.scalar(count) == 2


def test_single_table_subclass(db: VersionedSQLAlchemy) -> None:
    """Single-table inheritance: ``as_of(Sub, at)`` yields only Sub rows."""

    class Pet(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "pet"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(20))
        name = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "pet"}

    class Dog(Pet):
        bark = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_identity": "dog"}

    db.create_all()
    db.session.add_all([Pet(id=1, name="fish"), Dog(id=2, name="rex", bark="woof")])
    db.session.commit()
    t1 = _now()
    cast(Any, db.session.get(Dog, 2)).bark = "WOOF"
    db.session.commit()
    for at, bark in ((t1, "woof"), (_now(), "WOOF")):
        rows = db.session.scalars(sa.select(as_of(Dog, at))).all()
        assert [(r.id, r.bark) for r in rows] == [(2, bark)]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(as_of(Dog, at))) == 1
    assert db.session.scalar(sa.select(sa.func.count()).select_from(as_of(Pet, t1))) == 2
    # Through the base class: subclass records, their columns loaded and readable
    # after commit, from history and from the live table.
    for at, bark in ((t1, "woof"), (_now(), "WOOF")):
        past = as_of(Pet, at)
        rows = db.session.scalars(sa.select(past).order_by(past.id)).all()
        db.session.commit()
        assert [type(r) for r in rows] == [history_class(Pet), history_class(Dog)]
        assert cast(Any, rows[1]).bark == bark


# version_at() by ranges


def test_version_at_before_insert(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """Before its insert a record has no version."""
    assert cast(Any, db.session.get(Account, 1)).version_at(timeline["t0"]) is None


def test_version_at_ranges(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """``version_at`` picks the version whose range contains the instant."""
    account = db.session.get(Account, 1)
    assert account is not None
    assert account.version_at(timeline["t1"]).balance == 10
    assert account.version_at(timeline["t2"]) is account


def test_version_at_after_delete(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """After the delete (flushed) ``version_at`` is ``None``; before it, the last version."""
    account = db.session.get(Account, 3)
    assert account is not None
    db.session.delete(account)
    db.session.flush()
    assert account.version_at(_now()) is None
    assert account.version_at(timeline["t3"]).balance == 7


def test_version_at_between_delete_and_reinsert(db: VersionedSQLAlchemy, Account: Any) -> None:
    """Between a delete and the re-insert of its key there is no version."""
    db.session.add(Account(id=1, owner="first", balance=1))
    db.session.commit()
    t1 = _now()
    db.session.delete(db.session.get(Account, 1))
    db.session.commit()
    gap = _now()
    again = Account(id=1, owner="second", balance=2)
    db.session.add(again)
    db.session.commit()
    assert again.version_at(gap) is None
    assert again.version_at(t1).owner == "first"
    assert again.version_at(_now()) is again


def test_version_at_legacy_rows(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """With NULL ``valid_from`` the first version reaches back to the beginning."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE account SET valid_from = NULL"))
        conn.execute(sa.text("UPDATE account_history SET valid_from = NULL"))
    db.session.expire_all()
    account = db.session.get(Account, 1)
    assert account is not None
    assert account.version_at(timeline["t0"]).balance == 10
    assert account.version_at(timeline["t2"]) is account
    fresh = db.session.get(Account, 3)
    assert fresh is not None
    assert fresh.version_at(timeline["t0"]).balance == 5


def test_version_at_naive(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """A naive ``at`` is taken as UTC."""
    naive = timeline["t1"].replace(tzinfo=None)
    assert cast(Any, db.session.get(Account, 1)).version_at(naive).balance == 10


class _NoOffset(dt.tzinfo):
    """A tzinfo that knows no offset: Python calls such datetimes naive."""

    def utcoffset(self, when: dt.datetime | None) -> None:
        return None

    def dst(self, when: dt.datetime | None) -> None:
        return None

    def tzname(self, when: dt.datetime | None) -> None:
        return None


def test_tzinfo_without_offset_is_naive(
    db: VersionedSQLAlchemy, Account: Any, timeline: Any
) -> None:
    """A datetime whose tzinfo gives no offset is naive, hence UTC, for every reader."""
    at = timeline["t1"].astimezone(dt.timezone.utc).replace(tzinfo=_NoOffset())
    account = cast(Any, db.session.get(Account, 1))
    assert account.version_at(at).balance == 10
    assert _state(db, as_of(Account, at)) == [(1, "a", 10), (2, "b", 20)]
    assert len(account.versions(before=at)) == len(account.versions(before=timeline["t1"]))


def test_composite_key_and_attribute_names(db: VersionedSQLAlchemy) -> None:
    """Composite primary keys and attribute keys that differ from column names."""

    class Entry(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "ledger_entry"
        book = db.Column(db.Integer, primary_key=True)
        line = db.Column(db.Integer, primary_key=True)
        amount_cents = db.Column("amount", db.Integer)

    db.create_all()
    db.session.add_all(
        [Entry(book=1, line=1, amount_cents=5), Entry(book=1, line=2, amount_cents=7)]
    )
    db.session.commit()
    t1 = _now()
    cast(Any, db.session.get(Entry, (1, 2))).amount_cents = -1
    db.session.commit()
    Past = as_of(Entry, t1)
    rows = db.session.scalars(sa.select(Past).where(Past.amount_cents > 0).order_by(Past.line))
    assert [(r.book, r.line, r.amount_cents) for r in rows] == [(1, 1, 5), (1, 2, 7)]
    assert cast(Any, db.session.get(Entry, (1, 2))).version_at(t1).amount_cents == 7


def test_schema_qualified_table(db: VersionedSQLAlchemy) -> None:
    """A model in a schema reads as of an instant like any other."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS chron_tt"))

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "tt_doc"
        __table_args__ = {"schema": "chron_tt"}
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.Text)

    db.create_all()
    db.session.add(Doc(id=1, title="a"))
    db.session.commit()
    t1 = _now()
    cast(Any, db.session.get(Doc, 1)).title = "b"
    db.session.commit()
    assert [r.title for r in db.session.scalars(sa.select(as_of(Doc, t1)))] == ["a"]
    assert [r.title for r in db.session.scalars(sa.select(as_of(Doc, _now())))] == ["b"]


def test_schema_translate_map(db: VersionedSQLAlchemy, Account: Any, timeline: Any) -> None:
    """The union is compiled by the connection's compiler: schema translation applies."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS chron_tt_copy"))
        conn.execute(sa.text("CREATE TABLE chron_tt_copy.account AS SELECT * FROM account"))
        conn.execute(
            sa.text("CREATE TABLE chron_tt_copy.account_history AS SELECT * FROM account_history")
        )
        conn.execute(sa.text("DELETE FROM chron_tt_copy.account WHERE id = 3"))
    try:
        engine = db.engine.execution_options(schema_translate_map={None: "chron_tt_copy"})
        with sa.orm.Session(engine) as session:
            Past = as_of(Account, _now())
            assert [r.id for r in session.scalars(sa.select(Past).order_by(Past.id))] == [1]
    finally:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA chron_tt_copy CASCADE"))


def test_joined_hierarchy_with_long_table_names(db: VersionedSQLAlchemy) -> None:
    """A joined hierarchy whose history tables have names of 63 bytes: the union's
    columns stay distinct (PostgreSQL cuts identifiers at 63 bytes)."""

    class Base_(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lb_" + "b" * 50
        __chrononaut_tablename__ = "h" * 63
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "base"}

    class Sub(Base_):
        __tablename__ = "ls_" + "s" * 50
        __chrononaut_tablename__ = "g" * 63
        id = db.Column(db.Integer, db.ForeignKey(Base_.id), primary_key=True)
        note = db.Column(db.String(10))
        __mapper_args__ = {"polymorphic_identity": "sub"}

    db.create_all()
    sub = Sub(id=1, note="q")
    db.session.add(sub)
    db.session.commit()
    at = _now()
    sub.note = "r"
    db.session.commit()
    for model in (Base_, Sub):
        past = as_of(model, at)
        assert [(r.id, r.note) for r in db.session.scalars(sa.select(past))] == [(1, "q")]
