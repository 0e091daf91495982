"""Edit leases combined with bulk statements, upserts and inheritance (SPEC §2, §4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import (
    RecordLeasedError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    suppress_versioning,
)


@pytest.fixture()
def Page(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A leased model with a unique slug and an untracked counter; rows 1-2 committed."""

    class Page(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_page"
        __chrononaut_leases__ = True
        __chrononaut_untracked__ = ["views"]
        id = sa.Column(sa.Integer, primary_key=True)
        slug = sa.Column(sa.String(20), unique=True, nullable=False)
        title = sa.Column(sa.String(50), nullable=False, default="")
        views = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add_all([Page(id=1, slug="one", title="t1"), Page(id=2, slug="two", title="t2")])
    db.session.commit()
    yield Page


def _alice_leases(db: VersionedSQLAlchemy, cls: Any, id_: int) -> None:
    session = db.session.session_factory()
    try:
        with acting_as("alice"):
            cast(Any, session.get(cls, id_)).lease()
    finally:
        session.close()


def _title(db: VersionedSQLAlchemy, id_: int) -> str:
    with db.engine.connect() as conn:
        return str(conn.execute(sa.text(f"SELECT title FROM int_page WHERE id = {id_}")).scalar())


def test_upsert_of_untracked_column_not_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """An upsert whose update branch sets only untracked columns passes a lease."""
    _alice_leases(db, Page, 1)
    stmt = pg_insert(Page).values(id=1, slug="one", title="x", views=0)
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"views": 7})
    with acting_as("bob"):
        db.session.execute(stmt)
        db.session.commit()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT views FROM int_page WHERE id = 1")).scalar() == 7


def test_upsert_on_unique_column_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """An upsert conflicting on a unique non-key column still honours the lease."""
    _alice_leases(db, Page, 1)
    stmt = pg_insert(Page).values(slug="one", title="bob's")
    stmt = stmt.on_conflict_do_update(
        index_elements=[Page.slug], set_={"title": stmt.excluded.title}
    )
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(stmt)
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_bulk_update_under_suppress_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """suppress_versioning() does not let a bulk UPDATE bypass a lease."""
    _alice_leases(db, Page, 1)
    with acting_as("bob"), suppress_versioning(), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Page).where(Page.id == 1).values(title="bob's"))
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_bulk_update_by_pk_untracked_only_not_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """A bulk UPDATE by primary key of untracked columns only passes a lease."""
    _alice_leases(db, Page, 1)
    with acting_as("bob"):
        db.session.execute(sa.update(Page), [{"id": 1, "views": 3}])
        db.session.commit()


def test_bulk_update_by_pk_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """A bulk UPDATE by primary key of a tracked column is refused by a lease."""
    _alice_leases(db, Page, 2)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(sa.update(Page), [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}])
    db.session.rollback()
    assert _title(db, 2) == "t2"


def test_bulk_update_setting_expression_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """A bulk UPDATE setting a tracked column from an expression is refused by a lease."""
    _alice_leases(db, Page, 1)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(
            sa.update(Page).where(Page.slug == "one").values({Page.title: Page.title + "!"})
        )
    db.session.rollback()
    assert _title(db, 1) == "t1"


def test_upsert_multi_values_refused(db: VersionedSQLAlchemy, Page: Any) -> None:
    """A multi-row upsert touching a leased row is refused; nothing is written."""
    _alice_leases(db, Page, 2)
    stmt = pg_insert(Page).values(
        [{"id": 1, "slug": "one", "title": "a"}, {"id": 2, "slug": "two", "title": "b"}]
    )
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"title": stmt.excluded.title})
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.execute(stmt)
    db.session.rollback()
    assert (_title(db, 1), _title(db, 2)) == ("t1", "t2")
