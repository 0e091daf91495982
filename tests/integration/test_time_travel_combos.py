"""``as_of`` / ``version_at`` after relationship moves, upserts, bulk statements,
re-inserts, deep inheritance and hidden columns (SPEC §2 time travel)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from chrononaut import HiddenAttributeError, Versioned, VersionedSQLAlchemy, as_of


def _now() -> dt.datetime:
    time.sleep(0.002)
    t = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.002)
    return t


@pytest.fixture()
def teams(db: VersionedSQLAlchemy) -> tuple[Any, Any]:
    """Team 1..2 and Player 1 (in team 1, hidden ``pin``), committed."""

    class Team(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_team"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))
        players = db.relationship("Player", back_populates="team")

    class Player(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_player"
        __chrononaut_hidden__ = ["pin"]
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))
        pin = sa.Column(sa.String(8))
        team_id = sa.Column(sa.Integer, sa.ForeignKey("int_team.id"))
        team = db.relationship(Team, back_populates="players")

    db.create_all()
    db.session.add_all([Team(id=1, name="a"), Team(id=2, name="b")])
    db.session.add(Player(id=1, name="p", pin="1234", team_id=1))
    db.session.commit()
    return Team, Player


def _team_at(db: VersionedSQLAlchemy, Player: Any, at: dt.datetime) -> Any:
    Past = as_of(Player, at)
    return db.session.scalars(sa.select(Past.team_id).where(Past.id == 1)).one_or_none()


def test_as_of_after_collection_move(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """Moving a child between collections is seen by ``as_of`` at each instant."""
    Team, Player = teams
    t1 = _now()
    team2 = cast(Any, db.session.get(Team, 2))
    team2.players.append(cast(Any, db.session.get(Player, 1)))
    db.session.commit()
    t2 = _now()
    assert (_team_at(db, Player, t1), _team_at(db, Player, t2)) == (1, 2)


def test_as_of_after_many_to_one_to_pending(
    db: VersionedSQLAlchemy, teams: tuple[Any, Any]
) -> None:
    """Assigning a pending team is seen by ``as_of``; before, the old team."""
    Team, Player = teams
    t1 = _now()
    player = cast(Any, db.session.get(Player, 1))
    player.team = Team(id=3, name="c")
    db.session.commit()
    t2 = _now()
    assert (_team_at(db, Player, t1), _team_at(db, Player, t2)) == (1, 3)


def test_as_of_after_upsert(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """An upsert's update branch ends the old range; ``as_of`` sees both values."""
    Team, _ = teams
    t1 = _now()
    stmt = pg_insert(Team).values(id=1, name="up")
    db.session.execute(
        stmt.on_conflict_do_update(index_elements=[Team.id], set_={"name": stmt.excluded.name})
    )
    db.session.commit()
    t2 = _now()
    names = []
    for at in (t1, t2):
        Past = as_of(Team, at)
        names.append(db.session.scalars(sa.select(Past.name).where(Past.id == 1)).one())
    assert names == ["a", "up"]


def test_as_of_after_bulk_update_by_pk(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """A bulk UPDATE by primary key is seen by ``as_of`` at each instant."""
    Team, _ = teams
    t1 = _now()
    db.session.execute(sa.update(Team), [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}])
    db.session.commit()
    t2 = _now()
    Past1, Past2 = as_of(Team, t1), as_of(Team, t2)
    before = db.session.execute(sa.select(Past1.id, Past1.name).order_by(Past1.id)).all()
    after = db.session.execute(sa.select(Past2.id, Past2.name).order_by(Past2.id)).all()
    assert [tuple(r) for r in before] == [(1, "a"), (2, "b")]
    assert [tuple(r) for r in after] == [(1, "x"), (2, "y")]


def test_as_of_after_bulk_delete_and_reinsert(
    db: VersionedSQLAlchemy, teams: tuple[Any, Any]
) -> None:
    """A key bulk-deleted and re-inserted is absent between and present around."""
    Team, Player = teams
    db.session.execute(sa.update(Player).values(team_id=None))
    t1 = _now()
    db.session.execute(sa.delete(Team).where(Team.id == 2))
    db.session.commit()
    t2 = _now()
    db.session.add(Team(id=2, name="again"))
    db.session.commit()
    t3 = _now()

    def names(at: dt.datetime) -> list[Any]:
        Past = as_of(Team, at)
        return list(db.session.scalars(sa.select(Past.name).order_by(Past.id)))

    assert (names(t1), names(t2), names(t3)) == (["a", "b"], ["a"], ["a", "again"])
    team = cast(Any, db.session.get(Team, 2))
    assert team.version_at(t1).name == "b"
    assert team.version_at(t2) is None


def test_as_of_hidden_after_upsert(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """An upsert changing a hidden column: ``as_of`` records raise on the hidden value."""
    _, Player = teams
    t1 = _now()
    stmt = pg_insert(Player).values(id=1, name="p", pin="9999")
    db.session.execute(
        stmt.on_conflict_do_update(index_elements=[Player.id], set_={"pin": stmt.excluded.pin})
    )
    db.session.commit()
    t2 = _now()
    for at in (t1, t2):
        record = db.session.scalars(sa.select(as_of(Player, at))).one()
        with pytest.raises(HiddenAttributeError):
            _ = record.pin
    assert db.session.scalars(sa.select(as_of(Player, t1))).one().version == 0


def test_as_of_hidden_not_selectable(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """A hidden column is not reachable as an attribute of the ``as_of`` entity."""
    _, Player = teams
    Past = as_of(Player, _now())
    with pytest.raises(AttributeError):
        db.session.execute(sa.select(Past.pin)).all()


def test_version_at_deleted_with_session(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """``version_at(at, session=...)`` on a record deleted by a closed session works."""
    Team, _ = teams
    other = db.session.session_factory()
    team = cast(Any, other.get(Team, 2))
    t1 = _now()
    other.delete(team)
    other.commit()
    other.close()
    t2 = _now()
    reader = db.session()
    assert team.version_at(t1, session=reader).name == "b"
    assert team.version_at(t2, session=reader) is None


def test_version_at_accepts_scoped_session(db: VersionedSQLAlchemy, teams: tuple[Any, Any]) -> None:
    """``session=db.session`` (a scoped_session) reads a deleted record's history."""
    Team, _ = teams
    other = db.session.session_factory()
    team = cast(Any, other.get(Team, 2))
    t1 = _now()
    other.delete(team)
    other.commit()
    other.close()
    t2 = _now()
    assert team.version_at(t1, session=db.session).name == "b"
    assert team.version_at(t2, session=db.session) is None
