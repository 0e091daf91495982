"""Upserts whose conflict target names columns by string (SPEC §2 bulk statements)."""

from __future__ import annotations

from typing import Any, cast

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
