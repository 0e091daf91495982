"""Deep joined and single-table inheritance with as_of, bulk statements and leases."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import RecordLeasedError, Versioned, VersionedSQLAlchemy, acting_as, as_of


def _now() -> dt.datetime:
    time.sleep(0.002)
    t = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.002)
    return t


@pytest.fixture()
def deep(db: VersionedSQLAlchemy) -> tuple[Any, Any, Any]:
    """Base -> Mid -> Leaf, three joined tables, leased; one Leaf and one Base committed."""

    class Base(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_base"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        kind = sa.Column(sa.String(10))
        name = sa.Column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "base"}

    class Mid(Base):
        __tablename__ = "int_mid"
        id = sa.Column(sa.ForeignKey("int_base.id"), primary_key=True)
        color = sa.Column(sa.String(20))
        __mapper_args__ = {"polymorphic_identity": "mid"}

    class Leaf(Mid):
        __tablename__ = "int_leaf"
        id = sa.Column(sa.ForeignKey("int_mid.id"), primary_key=True)
        size = sa.Column(sa.Integer)
        __mapper_args__ = {"polymorphic_identity": "leaf"}

    db.create_all()
    db.session.add_all([Leaf(id=1, name="l", color="red", size=1), Base(id=2, name="b")])
    db.session.commit()
    return Base, Mid, Leaf


def _lease(db: VersionedSQLAlchemy, cls: Any, id_: int) -> None:
    session = db.session.session_factory()
    try:
        with acting_as("alice"):
            cast(Any, session.get(cls, id_)).lease()
    finally:
        session.close()


def test_as_of_leaf_after_changes_on_each_level(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """as_of(Leaf) yields each level's columns as they were at each instant."""
    _, _, Leaf = deep
    t0 = _now()
    leaf = cast(Any, db.session.get(Leaf, 1))
    leaf.name, leaf.size = "l2", 2
    db.session.commit()
    t1 = _now()
    leaf.color = "blue"
    db.session.commit()
    t2 = _now()

    def state(at: dt.datetime) -> tuple[Any, ...]:
        Past = as_of(Leaf, at)
        r = db.session.scalars(sa.select(Past)).one()
        return (r.name, r.color, r.size, r.version)

    assert [state(t) for t in (t0, t1, t2)] == [
        ("l", "red", 1, 0),
        ("l2", "red", 2, 1),
        ("l2", "blue", 2, 2),
    ]


def test_as_of_base_yields_all_classes(db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]) -> None:
    """as_of(Base) yields the Base and the Leaf row; as_of(Mid) only the Leaf."""
    Base, Mid, _ = deep
    at = _now()
    assert sorted(db.session.scalars(sa.select(as_of(Base, at).id))) == [1, 2]
    assert list(db.session.scalars(sa.select(as_of(Mid, at).id))) == [1]


def test_as_of_leaf_after_bulk_update_of_mid_column(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """A bulk UPDATE by primary key of Leaf's inherited column is seen by as_of."""
    _, _, Leaf = deep
    t0 = _now()
    db.session.execute(sa.update(Leaf), [{"id": 1, "color": "green"}])
    db.session.commit()
    t1 = _now()
    colors = []
    for at in (t0, t1):
        Past = as_of(Leaf, at)
        colors.append(db.session.scalars(sa.select(Past.color)).one())
    assert colors == ["red", "green"]


def test_lease_on_leaf_refuses_bulk_update_by_pk(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """A leased Leaf refuses another user's bulk UPDATE by primary key of a Mid column."""
    _, _, Leaf = deep
    _lease(db, Leaf, 1)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Leaf), [{"id": 1, "color": "green"}])
    db.session.rollback()


def test_lease_on_leaf_refuses_base_bulk_update(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """A leased Leaf refuses a bulk UPDATE through the base class."""
    Base, _, Leaf = deep
    _lease(db, Leaf, 1)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Base).where(Base.id == 1).values(name="x"))
    db.session.rollback()


def test_lease_on_leaf_refuses_flush_of_leaf_column(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """A leased Leaf refuses another user's flush changing only its own table."""
    _, _, Leaf = deep
    _lease(db, Leaf, 1)
    cast(Any, db.session.get(Leaf, 1)).size = 9
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()


def test_lease_taken_through_base_covers_leaf(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """A lease taken on the record loaded as Base is the Leaf's lease."""
    Base, _, Leaf = deep
    _lease(db, Base, 1)
    other = db.session.session_factory()
    try:
        with acting_as("bob"):
            holder = cast(Any, other.get(Leaf, 1)).lease_holder()
    finally:
        other.close()
    assert holder is not None and holder.user_id == "alice"


def test_single_table_subclass_bulk_update_refused(db: VersionedSQLAlchemy) -> None:
    """A lease on a single-table subclass record refuses a bulk UPDATE of the subclass."""

    class Vehicle(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_vehicle"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        kind = sa.Column(sa.String(10))
        wheels = sa.Column(sa.Integer)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "vehicle"}

    class Car(Vehicle):
        doors = sa.Column(sa.Integer)
        __mapper_args__ = {"polymorphic_identity": "car"}

    db.create_all()
    db.session.add(Car(id=1, wheels=4, doors=2))
    db.session.commit()
    _lease(db, Car, 1)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Car).where(Car.doors == 2).values(doors=4))
    db.session.rollback()
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Car), [{"id": 1, "doors": 5}])
    db.session.rollback()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT doors FROM int_vehicle")).scalar() == 2
