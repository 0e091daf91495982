"""Capture of records deleted as orphans of a collection (SPEC §2 relationships)."""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy


def test_orphan_delete_writes_one_deleted_row(db: VersionedSQLAlchemy) -> None:
    """A child removed from a delete-orphan collection gets one row marked deleted."""

    class Shelf(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_shelf"
        id = sa.Column(sa.Integer, primary_key=True)
        books = db.relationship("Book", back_populates="shelf", cascade="all, delete-orphan")

    class Book(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_book"
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(20))
        shelf_id = sa.Column(sa.Integer, sa.ForeignKey("int_shelf.id"))
        shelf = db.relationship(Shelf, back_populates="books")

    db.create_all()
    db.session.add(Shelf(id=1, books=[Book(id=1, title="b")]))
    db.session.commit()
    shelf = cast(Any, db.session.get(Shelf, 1))
    book = shelf.books[0]
    shelf.books.clear()
    db.session.commit()
    rows = book.versions(session=db.session())
    assert [(r.version, r.shelf_id, r.change_info.get("deleted")) for r in rows] == [(0, 1, True)]
