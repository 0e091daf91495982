"""SPEC §2: an ORM bulk statement on the base class of a joined-table hierarchy
keeps the history of the subclass rows it changes or deletes complete."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy, as_of, history_class


@pytest.fixture()
def zoo(db: VersionedSQLAlchemy) -> dict[str, Any]:
    """Animal (base) and Dog (joined subclass, cascading delete); rex the dog and
    tom the plain animal, committed."""

    class Animal(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "jb_animal"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        name = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "animal"}

    class Dog(Animal):
        __tablename__ = "jb_dog"
        id = db.Column(
            db.Integer, db.ForeignKey("jb_animal.id", ondelete="CASCADE"), primary_key=True
        )
        bark = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_identity": "dog"}

    db.create_all()
    db.session.add_all([Dog(id=1, name="rex", bark="woof"), Animal(id=2, name="tom")])
    db.session.commit()
    return {"Animal": Animal, "Dog": Dog}


def _dog_versions(db: VersionedSQLAlchemy, Dog: Any) -> list[tuple[int, str, str]]:
    history = history_class(Dog)
    rows = db.session.scalars(sa.select(history).order_by(cast(Any, history).version))
    return [(r.version, r.name, r.bark) for r in rows]


def test_base_update_keeps_subclass_versions(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """``update(Base)`` gives a subclass row's version its subclass history row too."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    db.session.execute(sa.update(Animal).values(name=Animal.name + "!"))
    db.session.commit()
    db.session.execute(sa.update(Animal).where(Animal.id == 1).values(name="max"))
    db.session.commit()
    assert _dog_versions(db, Dog) == [(0, "rex", "woof"), (1, "rex!", "woof")]
    dog: Any = db.session.get(Dog, 1)
    assert [(v.version, v.name, v.bark) for v in dog.versions()] == _dog_versions(db, Dog)
    tom: Any = db.session.get(Animal, 2)
    assert [v.name for v in tom.versions()] == ["tom"]


def test_base_update_keeps_subclass_as_of(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """``as_of(Subclass, t)`` before a base-class bulk UPDATE yields the row as it was."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    before = dt.datetime.now(dt.timezone.utc)
    db.session.execute(sa.update(Animal).where(Animal.id == 1).values(name="max"))
    db.session.commit()
    past = as_of(Dog, before)
    assert [(r.name, r.bark) for r in db.session.scalars(sa.select(past))] == [("rex", "woof")]


def test_base_delete_keeps_subclass_last_version(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """``delete(Base)`` that cascades to subclass rows records their last version whole."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    db.session.execute(sa.delete(Animal).where(Animal.id.in_([1, 2])))
    db.session.commit()
    assert _dog_versions(db, Dog) == [(0, "rex", "woof")]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Dog)) == 0


def test_base_update_without_change_writes_nothing(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """A base-class bulk UPDATE that changes no value writes no subclass history."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    db.session.execute(sa.update(Animal).where(Animal.id == 1).values(name="rex"))
    db.session.commit()
    assert _dog_versions(db, Dog) == []


def test_base_upsert_refused(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """An upsert on a base class with joined-table subclasses is refused before any
    statement (its update branch could not record the subclass rows' history)."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    statement = (
        insert(Animal)
        .values(id=1, kind="dog", name="max")
        .on_conflict_do_update(index_elements=["id"], set_={"name": "max"})
    )
    with pytest.raises(ChrononautException, match="joined-table subclasses"):
        db.session.execute(statement)
    db.session.rollback()
    assert cast(Any, db.session.get(Dog, 1)).name == "rex"
    assert _dog_versions(db, Dog) == []


@pytest.fixture()
def shapes(db: VersionedSQLAlchemy) -> dict[str, Any]:
    """Shape (base) and Circle (single-table subclass adding ``radius``); circle 1
    (radius 10) and circle 2 (radius 20), committed."""

    class Shape(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "sb_shape"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        size = db.Column(db.Integer)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "shape"}

    class Circle(Shape):
        radius = db.Column(db.Integer, nullable=True)
        __mapper_args__ = {"polymorphic_identity": "circle"}

    db.create_all()
    db.session.add_all([Circle(id=1, size=1, radius=10), Circle(id=2, size=2, radius=20)])
    db.session.commit()
    return {"Shape": Shape, "Circle": Circle}


def _circle_history(db: VersionedSQLAlchemy, Shape: Any) -> list[tuple[int, int, int, int]]:
    table = cast(Any, history_class(Shape)).__table__
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.id, table.c.version, table.c.size, table.c.radius).order_by(
                table.c.id, table.c.version
            )
        )
        return [tuple(row) for row in rows]


def _upsert_shapes(Shape: Any) -> Any:
    statement = insert(Shape).values([{"id": 1, "size": 5}, {"id": 2, "size": 6}])
    return statement.on_conflict_do_update(
        index_elements=[Shape.id], set_={"size": statement.excluded.size}
    )


STATEMENTS: dict[str, Any] = {
    "update": lambda s, S: s.execute(sa.update(S).values(size=S.size + 10)),
    "update-volatile": lambda s, S: s.execute(
        sa.update(S).values(size=S.size + 10 + sa.func.floor(sa.func.random()))
    ),
    "update-by-pk": lambda s, S: s.execute(
        sa.update(S), [{"id": 1, "size": 11}, {"id": 2, "size": 12}]
    ),
    "query-update": lambda s, S: s.query(S).update({"size": S.size + 10}),
    "upsert": lambda s, S: s.execute(_upsert_shapes(S)),
    "delete": lambda s, S: s.execute(sa.delete(S)),
    "delete-returning": lambda s, S: s.execute(sa.delete(S).returning(S.id)).all(),
    "delete-fetch": lambda s, S: s.execute(
        sa.delete(S).execution_options(synchronize_session="fetch")
    ),
}


@pytest.mark.parametrize("form", list(STATEMENTS))
def test_single_table_base_statement_keeps_subclass_columns(
    db: VersionedSQLAlchemy, shapes: dict[str, Any], form: str
) -> None:
    """A bulk statement on a single-table base class copies the subclass columns of
    the rows it changes or deletes into their history rows."""
    Shape = shapes["Shape"]
    STATEMENTS[form](db.session, Shape)
    db.session.commit()
    assert _circle_history(db, Shape) == [(1, 0, 1, 10), (2, 0, 2, 20)]


def test_joined_subclass_delete_refused(db: VersionedSQLAlchemy, zoo: Any) -> None:
    """``delete(Dog)`` (SQLAlchemy deletes only the subclass rows) is refused before
    any statement; deleting through the base class works."""
    Animal, Dog = zoo["Animal"], zoo["Dog"]
    with pytest.raises(ChrononautException, match="delete from the base class"):
        db.session.execute(sa.delete(Dog).where(Dog.id == 1))
    db.session.rollback()
    db.session.execute(sa.delete(Animal).where(Animal.id.in_(sa.select(Dog.id))))
    db.session.commit()
    assert db.session.scalars(sa.select(Animal.id)).all() == [2]
    assert _dog_versions(db, Dog) == [(0, "rex", "woof")]
