"""SPEC §2: joined-table and single-table inheritance of ``Versioned`` models."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy, history_class


@pytest.fixture()
def joined(db: VersionedSQLAlchemy) -> tuple[Any, Any]:
    """``Animal`` (table ``animal``) and its joined-table subclass ``Dog`` (table ``dog``)."""

    class Animal(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "animal"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(40))
        kind = db.Column(db.String(20), nullable=False)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "animal"}

    class Dog(Animal):
        __tablename__ = "dog"
        id = db.Column(db.Integer, db.ForeignKey("animal.id"), primary_key=True)
        breed = db.Column(db.String(40))
        __mapper_args__ = {"polymorphic_identity": "dog"}

    db.create_all()
    return Animal, Dog


@pytest.fixture()
def single(db: VersionedSQLAlchemy) -> tuple[Any, Any]:
    """``Vehicle`` and its single-table subclass ``Car`` (both in table ``vehicle``)."""

    class Vehicle(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "vehicle"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(40))
        kind = db.Column(db.String(20), nullable=False)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "vehicle"}

    class Car(Vehicle):
        doors = db.Column(db.Integer)
        __mapper_args__ = {"polymorphic_identity": "car"}

    db.create_all()
    return Vehicle, Car


def _add(db: VersionedSQLAlchemy, record: Any) -> Any:
    db.session.add(record)
    db.session.commit()
    return record


# joined-table


def test_joined_subclass_column_change(db: VersionedSQLAlchemy, joined: Any) -> None:
    """Changing a subclass-table column writes history with base and subclass values."""
    _, Dog = joined
    dog = _add(db, Dog(name="rex", breed="pug"))
    dog.breed = "collie"
    db.session.commit()
    [old] = dog.versions()
    assert (old.version, old.name, old.breed) == (0, "rex", "pug")
    assert dog.version == 1


def test_joined_base_column_change(db: VersionedSQLAlchemy, joined: Any) -> None:
    """Changing a base-table column of a subclass record records the subclass values too."""
    _, Dog = joined
    dog = _add(db, Dog(name="rex", breed="pug"))
    dog.name = "max"
    db.session.commit()
    [old] = dog.versions()
    assert (old.name, old.breed) == ("rex", "pug")


def test_joined_both_tables_one_version(db: VersionedSQLAlchemy, joined: Any) -> None:
    """A flush changing base and subclass columns makes one version."""
    _, Dog = joined
    dog = _add(db, Dog(name="rex", breed="pug"))
    dog.name = "max"
    dog.breed = "collie"
    db.session.commit()
    assert [(h.version, h.name, h.breed) for h in dog.versions()] == [(0, "rex", "pug")]
    assert dog.version == 1


def test_joined_history_class(db: VersionedSQLAlchemy, joined: Any) -> None:
    """The subclass has its own history class, a subclass of the base's."""
    Animal, Dog = joined
    assert history_class(Dog) is not history_class(Animal)
    assert issubclass(history_class(Dog), history_class(Animal))
    dog = _add(db, Dog(name="rex", breed="pug"))
    dog.breed = "collie"
    db.session.commit()
    assert isinstance(dog.versions()[0], history_class(Dog))


def test_joined_history_tables(joined: Any) -> None:
    """Each table of the hierarchy gets its own history table."""
    Animal, Dog = joined
    assert cast(Any, history_class(Animal)).__table__.name == "animal_history"
    assert "dog_history" in {t.name for t in cast(Any, history_class(Dog)).__mapper__.tables}


def test_joined_base_record(db: VersionedSQLAlchemy, joined: Any) -> None:
    """Base-class records of a joined hierarchy are versioned too."""
    Animal, _ = joined
    animal = _add(db, Animal(name="generic"))
    animal.name = "thing"
    db.session.commit()
    assert [(h.version, h.name) for h in animal.versions()] == [(0, "generic")]


def test_joined_delete(db: VersionedSQLAlchemy, joined: Any) -> None:
    """Deleting a subclass record writes a final row marked deleted."""
    _, Dog = joined
    dog = _add(db, Dog(name="rex", breed="pug"))
    dog_id = dog.id
    db.session.delete(dog)
    db.session.commit()
    rows = db.session.query(history_class(Dog)).filter_by(id=dog_id).all()
    assert [(h.version, h.name, h.breed, h.change_info.get("deleted")) for h in rows] == [
        (0, "rex", "pug", True)
    ]


def test_joined_polymorphic_load(db: VersionedSQLAlchemy, joined: Any) -> None:
    """A subclass record loaded through the base class has the subclass history."""
    Animal, Dog = joined
    dog_id = _add(db, Dog(name="rex", breed="pug")).id
    db.session.expire_all()
    animal = db.session.get(Animal, dog_id)
    assert animal is not None
    animal.breed = "collie"
    db.session.commit()
    assert [(h.name, h.breed) for h in animal.versions()] == [("rex", "pug")]


# single-table


def test_single_subclass_column_change(db: VersionedSQLAlchemy, single: Any) -> None:
    """Changing a subclass column of a single-table subclass writes history."""
    _, Car = single
    car = _add(db, Car(name="mini", doors=3))
    car.doors = 5
    db.session.commit()
    [old] = car.versions()
    assert (old.version, old.name, old.doors) == (0, "mini", 3)
    assert car.version == 1


def test_single_history_table_shared(single: Any) -> None:
    """Single-table subclasses share the base's history table, which has their columns."""
    Vehicle, Car = single
    table = sa.inspect(history_class(Vehicle)).local_table
    assert sa.inspect(history_class(Car)).local_table is table
    assert "doors" in table.c


def test_single_base_record(db: VersionedSQLAlchemy, single: Any) -> None:
    """Base records of a single-table hierarchy are versioned."""
    Vehicle, _ = single
    bike = _add(db, Vehicle(name="bike"))
    bike.name = "bicycle"
    db.session.commit()
    assert [(h.version, h.name) for h in bike.versions()] == [(0, "bike")]


def test_single_history_class(db: VersionedSQLAlchemy, single: Any) -> None:
    """History records of a subclass record are instances of the subclass's history class."""
    Vehicle, Car = single
    car = _add(db, Car(name="mini", doors=3))
    car.name = "cooper"
    db.session.commit()
    assert issubclass(history_class(Car), history_class(Vehicle))
    assert isinstance(car.versions()[0], history_class(Car))


def test_single_mixed_flush(db: VersionedSQLAlchemy, single: Any) -> None:
    """One flush changing a base record and a subclass record keeps the subclass's values."""
    Vehicle, Car = single
    bike = _add(db, Vehicle(name="bike"))
    car = _add(db, Car(name="mini", doors=3))
    bike.name = "bicycle"
    car.doors = 5
    db.session.commit()
    assert [h.name for h in bike.versions()] == ["bike"]
    assert [h.doors for h in car.versions()] == [3]
