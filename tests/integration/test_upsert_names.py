"""Upserts whose conflict target names columns by string (SPEC §2 bulk statements)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import Versioned, VersionedSQLAlchemy


def test_upsert_with_string_index_elements_captured(db: VersionedSQLAlchemy) -> None:
    """``index_elements=["id"]`` (SQLAlchemy's documented form) is captured like columns."""

    class Tag(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_tag"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))

    db.create_all()
    db.session.add(Tag(id=1, name="a"))
    db.session.commit()
    stmt = pg_insert(Tag).values(id=1, name="b")
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"name": stmt.excluded.name})
    db.session.execute(stmt)
    db.session.commit()
    tag = cast(Any, db.session.get(Tag, 1))
    assert tag.version == 1
    assert [v.name for v in tag.versions()] == ["a"]


@pytest.mark.parametrize("form", ["attribute keyword", "column object", "rows list"])
def test_upsert_of_column_whose_key_and_attribute_differ_from_its_name(
    db: VersionedSQLAlchemy, form: str
) -> None:
    """``amount = Column("db amount", key="amt")``: the upsert's values named by the
    attribute, by the Column or in a list of rows are all captured."""

    class Entry(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_entry"
        id = sa.Column(sa.Integer, primary_key=True)
        amount = sa.Column("db amount", sa.Integer, key="amt")

    db.create_all()
    db.session.add(Entry(id=1, amount=1))
    db.session.commit()
    if form == "attribute keyword":
        stmt = pg_insert(Entry).values(id=1, amount=2)
    elif form == "column object":
        stmt = pg_insert(Entry).values({Entry.__table__.c.id: 1, Entry.__table__.c.amt: 2})
    else:
        stmt = pg_insert(Entry).values([{"id": 1, "amount": 2}])
    column = Entry.__table__.c.amt
    stmt = stmt.on_conflict_do_update(
        index_elements=[Entry.id], set_={column: stmt.excluded[column.key]}
    )
    db.session.execute(stmt)
    db.session.commit()
    entry = cast(Any, db.session.get(Entry, 1))
    db.session.refresh(entry)
    assert (entry.amount, entry.version) == (2, 1)
    assert [v.amount for v in entry.versions()] == [1]
