"""Keys deleted and inserted again by ORM bulk statements continue their version
sequence (SPEC §2: re-inserting a deleted primary key), and time travel tells the
incarnations apart."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import Versioned, VersionedSQLAlchemy, as_of


def _now() -> dt.datetime:
    time.sleep(0.002)
    t = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.002)
    return t


@pytest.fixture()
def Item(db: VersionedSQLAlchemy) -> type[Any]:
    """Item 1 committed, changed once (history v0), then deleted (history v1)."""

    class Item(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_item"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))

    db.create_all()
    db.session.add(Item(id=1, name="a"))
    db.session.commit()
    cast(Any, db.session.get(Item, 1)).name = "b"
    db.session.commit()
    db.session.delete(db.session.get(Item, 1))
    db.session.commit()
    return Item


def _change_and_read(db: VersionedSQLAlchemy, Item: Any) -> list[int]:
    item = cast(Any, db.session.get(Item, 1))
    item.name = "d"
    db.session.commit()
    return [v.version for v in item.versions()]


def test_bulk_insert_continues_sequence(db: VersionedSQLAlchemy, Item: Any) -> None:
    """An ORM bulk INSERT of a deleted key continues its versions; a later change works."""
    db.session.execute(sa.insert(Item), [{"id": 1, "name": "c"}])
    db.session.commit()
    assert _change_and_read(db, Item) == [0, 1, 2]


def test_as_of_between_incarnations(db: VersionedSQLAlchemy, Item: Any) -> None:
    """as_of between a delete and an upsert's re-insert sees no row; after, the new one."""
    gap = _now()
    stmt = pg_insert(Item).values(id=1, name="c")
    db.session.execute(stmt.on_conflict_do_nothing())
    db.session.commit()
    after = _now()
    assert db.session.scalars(sa.select(as_of(Item, gap))).all() == []
    assert [r.name for r in db.session.scalars(sa.select(as_of(Item, after)))] == ["c"]


def test_bulk_insert_values_continues_sequence(db: VersionedSQLAlchemy, Item: Any) -> None:
    """``insert(Model).values(...)`` of a deleted key continues its versions."""
    db.session.execute(sa.insert(Item).values(id=1, name="c"))
    db.session.commit()
    assert _change_and_read(db, Item) == [0, 1, 2]


def test_bulk_insert_multi_values_continues_sequence(db: VersionedSQLAlchemy, Item: Any) -> None:
    """A multi-row ``values([...])`` continues a deleted key's versions; new keys start at 0."""
    db.session.execute(sa.insert(Item).values([{"id": 1, "name": "c"}, {"id": 2, "name": "n"}]))
    db.session.commit()
    assert _change_and_read(db, Item) == [0, 1, 2]
    assert cast(Any, db.session.get(Item, 2)).version == 0


def test_insert_do_nothing_continues_sequence(db: VersionedSQLAlchemy, Item: Any) -> None:
    """``on_conflict_do_nothing()`` inserting a deleted key continues its versions."""
    db.session.execute(pg_insert(Item).values(id=1, name="c").on_conflict_do_nothing())
    db.session.commit()
    assert _change_and_read(db, Item) == [0, 1, 2]


def test_upsert_insert_branch_continues_sequence(db: VersionedSQLAlchemy, Item: Any) -> None:
    """An upsert inserting a deleted key continues its versions; a later change works."""
    stmt = pg_insert(Item).values(id=1, name="c")
    db.session.execute(
        stmt.on_conflict_do_update(index_elements=[Item.id], set_={"name": stmt.excluded.name})
    )
    db.session.commit()
    assert _change_and_read(db, Item) == [0, 1, 2]
