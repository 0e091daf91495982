"""valid_from left alone by untracked-only and suppressed bulk statements and upserts,
and set by hidden-only ones (SPEC §2 valid_from)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import (
    HiddenAttributeError,
    Versioned,
    VersionedSQLAlchemy,
    as_of,
    suppress_versioning,
)


@pytest.fixture()
def Acct(db: VersionedSQLAlchemy) -> type[Any]:
    """Acct 1 with hidden ``pin`` and untracked ``seen``, committed."""

    class Acct(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_acct"
        __chrononaut_hidden__ = ["pin"]
        __chrononaut_untracked__ = ["seen"]
        id = sa.Column(sa.Integer, primary_key=True)
        owner = sa.Column(sa.String(20))
        pin = sa.Column(sa.String(8))
        seen = sa.Column(sa.Integer, nullable=False, default=0)

    db.create_all()
    db.session.add(Acct(id=1, owner="o", pin="1"))
    db.session.commit()
    return Acct


def _row(db: VersionedSQLAlchemy) -> tuple[Any, ...]:
    with db.engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT version, valid_from FROM int_acct")).one())


def _upsert(Acct: Any, **set_: Any) -> Any:
    stmt = pg_insert(Acct).values(id=1, owner="o")
    return stmt.on_conflict_do_update(index_elements=[Acct.id], set_=set_)


WRITES: dict[str, Callable[[Any], Any]] = {
    "update": lambda A: sa.update(A).where(A.id == 1).values(seen=5),
    "upsert": lambda A: _upsert(A, seen=5),
}


@pytest.mark.parametrize("kind", list(WRITES))
def test_untracked_only_keeps_valid_from(db: VersionedSQLAlchemy, Acct: Any, kind: str) -> None:
    """A bulk UPDATE or upsert of untracked columns only keeps version and valid_from."""
    before = _row(db)
    db.session.execute(WRITES[kind](Acct))
    db.session.commit()
    assert _row(db) == before


def test_untracked_by_pk_keeps_valid_from(db: VersionedSQLAlchemy, Acct: Any) -> None:
    """A bulk UPDATE by primary key of untracked columns keeps version and valid_from."""
    before = _row(db)
    db.session.execute(sa.update(Acct), [{"id": 1, "seen": 9}])
    db.session.commit()
    assert _row(db) == before


@pytest.mark.parametrize("kind", ["update", "by_pk", "upsert"])
def test_suppressed_keeps_valid_from(db: VersionedSQLAlchemy, Acct: Any, kind: str) -> None:
    """Under suppress_versioning() a bulk change keeps version and valid_from."""
    before = _row(db)
    with suppress_versioning():
        if kind == "update":
            db.session.execute(sa.update(Acct).where(Acct.id == 1).values(owner="x"))
        elif kind == "by_pk":
            db.session.execute(sa.update(Acct), [{"id": 1, "owner": "x"}])
        else:
            db.session.execute(_upsert(Acct, owner="x"))
        db.session.commit()
    assert _row(db) == before


def test_hidden_only_by_pk_is_a_version(db: VersionedSQLAlchemy, Acct: Any) -> None:
    """A bulk UPDATE by primary key of a hidden column makes a version; as_of hides it."""
    v0, began = _row(db)
    db.session.execute(sa.update(Acct), [{"id": 1, "pin": "2"}])
    db.session.commit()
    v1, now = _row(db)
    assert (v0, v1) == (0, 1) and now > began
    acct = cast(Any, db.session.get(Acct, 1))
    assert acct.versions()[0].change_info["hidden_cols_changed"] == ["pin"]
    old = db.session.scalars(sa.select(as_of(Acct, began))).one()
    assert old.version == 0
    with pytest.raises(HiddenAttributeError):
        _ = old.pin
