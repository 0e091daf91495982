"""MappedAsDataclass models with leases and as_of; bad input to the new APIs is
refused before any statement (SPEC §1, §2 time travel, §4 leases)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    mapped_column,
    sessionmaker,
)

from chrononaut import (
    ChrononautException,
    HiddenAttributeError,
    RecordLeasedError,
    Versioned,
    acting_as,
    as_of,
    versioned_session,
)
from chrononaut.maintenance import backfill_valid_from


class Base(MappedAsDataclass, DeclarativeBase):
    pass


class Ticket(Base, Versioned):
    __tablename__ = "int_dc_ticket"
    __chrononaut_leases__ = True
    __chrononaut_hidden__ = ["token"]
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))
    token: Mapped[str | None] = mapped_column(sa.String(40), default=None)


@pytest.fixture()
def world(database_url: str) -> Iterator[tuple[sa.Engine, sessionmaker[Session], list[str]]]:
    """Tables of the dataclass models, a versioned session factory, statements sent."""
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    maker = versioned_session(sessionmaker(engine))
    with maker() as session:
        session.add_all([Ticket(id=1, title="a", token="s1"), Ticket(id=2, title="b")])
        session.commit()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield engine, maker, sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        Base.metadata.drop_all(engine)
        engine.dispose()


World = tuple[sa.Engine, "sessionmaker[Session]", list[str]]


def test_dataclass_lease_refuses_and_as_of_reads(world: World) -> None:
    """A dataclass model's lease refuses another user; as_of hides the hidden column."""
    _, maker, _ = world
    before = dt.datetime.now(dt.timezone.utc)
    with maker() as alice, acting_as("alice"):
        ticket = cast(Any, alice.get(Ticket, 1))
        ticket.lease()
        ticket.title, ticket.token = "a2", "s2"
        alice.commit()
    with maker() as bob:
        cast(Any, bob.get(Ticket, 1)).title = "bob"
        with acting_as("bob"), pytest.raises(RecordLeasedError):
            bob.commit()
        bob.rollback()
        Past = as_of(Ticket, before)
        old = bob.scalars(sa.select(Past).where(Past.id == 1)).one()
        assert (old.title, old.version) == ("a", 0)
        with pytest.raises(HiddenAttributeError):
            _ = old.token
        now = bob.scalars(sa.select(as_of(Ticket, dt.datetime.now(dt.timezone.utc)))).all()
        assert sorted(r.title for r in now) == ["a2", "b"]


@pytest.mark.parametrize(
    "at",
    ["2024-01-01", 0, None, dt.date(2024, 1, 1), 1.5],
    ids=["str", "int", "None", "date", "float"],
)
def test_as_of_bad_instant(world: World, at: Any) -> None:
    """as_of() with an instant that is not a datetime raises TypeError, sends nothing."""
    _, _, sent = world
    with pytest.raises(TypeError):
        as_of(Ticket, at)
    assert sent == []


@pytest.mark.parametrize("model", [Base, object, "Ticket", Ticket.__table__])
def test_as_of_bad_model(world: World, model: Any) -> None:
    """as_of() of something that is not a Versioned model raises TypeError."""
    _, _, sent = world
    with pytest.raises(TypeError):
        as_of(model, dt.datetime.now(dt.timezone.utc))
    assert sent == []


def test_as_of_of_an_instance_refused(world: World) -> None:
    """as_of() of a record (not its class) raises TypeError."""
    with pytest.raises(TypeError):
        as_of(cast(Any, Ticket(id=9, title="x")), dt.datetime.now(dt.timezone.utc))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 60}, TypeError),
        ({"ttl": dt.timedelta(0)}, ValueError),
        ({"ttl": dt.timedelta(seconds=-1)}, ValueError),
        ({"ttl": dt.timedelta(hours=24, seconds=1)}, ValueError),
        ({"note": 5}, TypeError),
        ({"note": "a\x00b"}, ValueError),
        ({"force": "yes"}, TypeError),
        ({"commit": 1}, TypeError),
    ],
)
def test_lease_bad_arguments(world: World, kwargs: dict[str, Any], error: type[Exception]) -> None:
    """lease() with a bad argument raises before any statement."""
    _, maker, sent = world
    with maker() as session, acting_as("alice"):
        ticket = cast(Any, session.get(Ticket, 1))
        sent.clear()
        with pytest.raises(error):
            ticket.lease(**kwargs)
        assert sent == []


def test_lease_without_actor(world: World) -> None:
    """lease() with no acting user raises ChrononautException before any statement."""
    _, maker, sent = world
    with maker() as session:
        ticket = cast(Any, session.get(Ticket, 1))
        sent.clear()
        with pytest.raises(ChrononautException):
            ticket.lease()
        assert sent == []


@pytest.mark.parametrize("state", ["transient", "pending", "deleted", "detached"])
def test_lease_of_unsaved_or_gone_record(world: World, state: str) -> None:
    """lease() of a transient, pending, deleted or detached record raises before SQL."""
    _, maker, sent = world
    with maker() as session, acting_as("alice"):
        ticket: Any = Ticket(id=5, title="t")
        if state == "pending":
            session.add(ticket)
        elif state in ("deleted", "detached"):
            ticket = session.get(Ticket, 2)
            if state == "deleted":
                session.delete(ticket)
                session.flush()
            else:
                session.expunge(ticket)
        sent.clear()
        with pytest.raises(ChrononautException):
            ticket.lease()
        assert sent == []


@pytest.mark.parametrize(
    ("token", "ttl", "error"),
    [
        (123, None, TypeError),
        ("nope", None, ChrononautException),
        ("0" * 32, dt.timedelta(0), ValueError),
        ("0" * 32, 5, TypeError),
    ],
)
def test_renew_bad_arguments(world: World, token: Any, ttl: Any, error: type[Exception]) -> None:
    """renew_lease() with a bad token or ttl raises before any statement."""
    _, maker, sent = world
    with maker() as session, acting_as("alice"):
        ticket = cast(Any, session.get(Ticket, 1))
        sent.clear()
        with pytest.raises(error):
            ticket.renew_lease(token, ttl)
        assert sent == []


def test_renew_with_another_records_token(world: World) -> None:
    """A token of another record's lease does not renew this record's lease."""
    _, maker, _ = world
    with maker() as session, acting_as("alice"):
        one, two = cast(Any, session.get(Ticket, 1)), cast(Any, session.get(Ticket, 2))
        token = two.lease().token
        with pytest.raises(ChrononautException):
            one.renew_lease(token)
        session.rollback()
        assert one.lease_holder() is None


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-5, ValueError), ("10", TypeError)])
def test_backfill_bad_batch_size(world: World, size: Any, error: type[Exception]) -> None:
    """backfill_valid_from() with a bad batch size raises before any statement."""
    engine, _, sent = world
    with pytest.raises(error):
        backfill_valid_from(engine, [Ticket], batch_size=size)
    assert sent == []
