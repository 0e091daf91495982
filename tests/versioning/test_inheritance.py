"""SPEC §2: joined-table and single-table inheritance of ``Versioned`` models."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy, as_of, history_class


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


# three levels of joined-table inheritance


@pytest.fixture()
def deep(db: VersionedSQLAlchemy) -> tuple[Any, Any, Any]:
    """``Shape`` → ``Polygon`` → ``Square``, each with a table of its own."""

    class Shape(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "shape"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(40))
        kind = db.Column(db.String(20), nullable=False)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "shape"}

    class Polygon(Shape):
        __tablename__ = "polygon"
        id = db.Column(db.Integer, db.ForeignKey("shape.id"), primary_key=True)
        sides = db.Column(db.Integer)
        __mapper_args__ = {"polymorphic_identity": "polygon"}

    class Square(Polygon):
        __tablename__ = "square"
        id = db.Column(db.Integer, db.ForeignKey("polygon.id"), primary_key=True)
        size = db.Column(db.Integer)
        __mapper_args__ = {"polymorphic_identity": "square"}

    db.create_all()
    return Shape, Polygon, Square


def test_three_levels_versions(db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]) -> None:
    """A third-level record reads its history with the columns of all three tables."""
    _, _, Square = deep
    square = _add(db, Square(name="s", sides=4, size=1))
    square.size = 2
    square.name = "t"
    db.session.commit()
    (old,) = square.versions()
    assert (old.version, old.name, old.sides, old.size) == (0, "s", 4, 1)
    assert square.version == 1


def test_three_levels_select_history_class(
    db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]
) -> None:
    """``select(history_class(C))`` works for the deepest class, and polymorphically."""
    Shape, Polygon, Square = deep
    square = _add(db, Square(name="s", sides=4, size=1))
    polygon = _add(db, Polygon(name="p", sides=3))
    square.size = 2
    polygon.sides = 5
    db.session.commit()
    rows = db.session.scalars(sa.select(history_class(Square))).all()
    assert [(r.id, r.version, r.size) for r in rows] == [(square.id, 0, 1)]
    everything = db.session.scalars(
        sa.select(history_class(Shape)).order_by(cast(Any, history_class(Shape)).id)
    ).all()
    assert [type(r).__name__ for r in everything] == ["SquareHistory", "PolygonHistory"]
    assert polygon.versions()[0].sides == 3


def test_three_levels_delete(db: VersionedSQLAlchemy, deep: tuple[Any, Any, Any]) -> None:
    """Deleting a third-level record writes its final values to all three tables."""
    _, _, Square = deep
    square = _add(db, Square(name="s", sides=4, size=1))
    key = square.id
    db.session.delete(square)
    db.session.commit()
    (row,) = db.session.scalars(sa.select(history_class(Square))).all()
    assert (row.id, row.name, row.sides, row.size, row.change_info["deleted"]) == (
        key,
        "s",
        4,
        1,
        True,
    )


def test_single_table_expired_changes_one_select(
    db: VersionedSQLAlchemy, single: tuple[Any, Any]
) -> None:
    """Expired records of a base class and its single-table subclass load in one SELECT."""
    from sqlalchemy import event

    Vehicle, Car = single
    records = [Vehicle(name="v"), Car(name="c", doors=2), Car(name="d", doors=4)]
    db.session.add_all(records)
    db.session.commit()
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        for item in records:
            item.name = "x"
        db.session.flush()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert seen.count("SELECT") == 1
    db.session.commit()
    assert [r.versions()[0].name for r in records] == ["v", "c", "d"]
    assert records[1].versions()[0].doors == 2


def test_single_table_subclass_of_joined_subclass(db: VersionedSQLAlchemy) -> None:
    """A single-table subclass of a joined-table subclass (its columns in the joined
    subclass's table): changes, deletes, versions() and as_of() work at every level."""

    class Emp(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "sj_emp"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        name = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "emp"}

    class Eng(Emp):
        __tablename__ = "sj_eng"
        id = db.Column(db.Integer, db.ForeignKey("sj_emp.id"), primary_key=True)
        lang = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_identity": "eng"}

    class Senior(Eng):
        level = db.Column(db.Integer, nullable=True)
        __mapper_args__ = {"polymorphic_identity": "senior"}

    db.create_all()
    senior = Senior(id=1, name="ada", lang="py", level=3)
    db.session.add_all([senior, Eng(id=2, name="bob", lang="c")])
    db.session.commit()
    start = dt.datetime.now(dt.timezone.utc)
    senior.level = 4
    senior.name = "ada l."
    db.session.commit()
    assert [(h.version, h.name, h.lang, h.level) for h in senior.versions()] == [
        (0, "ada", "py", 3)
    ]
    assert type(senior.versions()[0]) is history_class(Senior)
    everyone = as_of(Emp, start)
    rows = db.session.scalars(sa.select(everyone).order_by(everyone.id)).all()
    assert [(type(r), r.lang) for r in rows] == [
        (history_class(Senior), "py"),
        (history_class(Eng), "c"),
    ]
    db.session.execute(sa.update(Eng).where(Eng.id == 1).values(lang="rust"))
    db.session.commit()
    assert [(h.version, h.lang, h.level) for h in senior.versions()] == [
        (0, "py", 3),
        (1, "py", 4),
    ]
    past = as_of(Senior, start)
    [then] = db.session.scalars(sa.select(past)).all()
    assert (then.name, then.lang, then.level) == ("ada", "py", 3)
    assert len(rows) == 2
    db.session.delete(senior)
    db.session.commit()
    assert [h.version for h in senior.versions(session=db.session)] == [0, 1, 2]


def test_key_reinserted_as_other_single_table_class(db: VersionedSQLAlchemy) -> None:
    """A key deleted as one class of a single-table hierarchy and inserted again as
    another keeps its earlier versions in ``versions()``, each as the class it was."""

    class Vehicle(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "ro_vehicle"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        name = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "vehicle"}

    class Car(Vehicle):
        doors = db.Column(db.Integer, nullable=True)
        __mapper_args__ = {"polymorphic_identity": "car"}

    db.create_all()
    first = Vehicle(id=1, name="generic")
    db.session.add(first)
    db.session.commit()
    db.session.delete(first)
    db.session.commit()
    car = Car(id=1, name="car", doors=4)
    db.session.add(car)
    db.session.commit()
    car.doors = 5
    db.session.commit()
    found = [(type(h), h.version, h.name) for h in car.versions()]
    assert found == [
        (history_class(Vehicle), 0, "generic"),
        (history_class(Car), 1, "car"),
    ]
    assert car.diff(car.versions()[0]) == {
        "kind": ("vehicle", "car"),
        "name": ("generic", "car"),
        "doors": (None, 5),
    }


def test_key_reinserted_across_joined_and_single_table_siblings(
    db: VersionedSQLAlchemy,
) -> None:
    """A key used by a single-table subclass, deleted, then inserted as a joined-table
    sibling (and back): every class reads the key's whole history, each row as the
    class it was, with its subclass columns loaded in the same query."""

    class Animal(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "ri_animal"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        name = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "animal"}

    class Dog(Animal):
        __tablename__ = "ri_dog"
        id = db.Column(db.ForeignKey("ri_animal.id"), primary_key=True)
        bark = db.Column(db.String(10))
        __mapper_args__ = {"polymorphic_identity": "dog"}

    class Cat(Animal):
        meow = db.Column(db.String(10), nullable=True)
        __mapper_args__ = {"polymorphic_identity": "cat"}

    db.create_all()
    cat = Cat(id=5, name="tom", meow="m")
    db.session.add(cat)
    db.session.commit()
    cat.name = "TOM"
    db.session.commit()
    db.session.delete(cat)
    db.session.commit()
    dog = cast(Any, Dog(id=5, name="rex", bark="woof"))
    db.session.add(dog)
    db.session.commit()
    dog.name = "REX"
    db.session.commit()
    assert dog.version == 3
    sent: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    found = [(type(h), h.version, h.name) for h in dog.versions()]
    barks = [h.bark for h in dog.versions() if isinstance(h, history_class(Dog))]
    assert found == [
        (history_class(Cat), 0, "tom"),
        (history_class(Cat), 1, "TOM"),
        (history_class(Dog), 2, "rex"),
    ]
    assert barks == ["woof"]
    assert len(sent) == 2  # one query per versions() call, subclass columns included
    db.session.delete(dog)
    db.session.commit()
    again = cast(Any, Cat(id=5, name="felix"))
    db.session.add(again)
    db.session.commit()
    assert [(type(h), h.version) for h in again.versions()] == [
        (history_class(Cat), 0),
        (history_class(Cat), 1),
        (history_class(Dog), 2),
        (history_class(Dog), 3),
    ]
