"""SPEC §1-§2 across SQLAlchemy's declarative styles: the same behaviour for each.

Every test runs once per style, the way Flask-SQLAlchemy parametrizes its own
``db`` fixture: Flask-SQLAlchemy's legacy ``db.Model`` with ``db.Column``, a
``DeclarativeBase`` with ``Mapped[...]`` annotations, a ``MappedAsDataclass``
base, and attribute keys that differ from the column names. Each style defines
``Team`` (not versioned) and ``Player`` (``Versioned``, attributes ``label`` and
``team_ref`` plus a many-to-one ``team``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from chrononaut import (
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    history_class,
    versioned_session,
)
from chrononaut.errors import ChrononautException

STYLES = ["db_model", "declarative", "dataclass", "renamed_keys"]


@dataclass
class World:
    """One style's models and a versioned session on the test database."""

    style: str
    session: Session
    Team: Any
    Player: Any
    engine: sa.Engine

    def player(self, label: str, team: Any = None) -> Any:
        return self.Player(label=label, team=team)

    def team(self, name: str) -> Any:
        return self.Team(name=name)

    def history(self) -> list[tuple[Any, ...]]:
        """(version, name, team_id) of the committed history rows, read with raw SQL."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT version, name, team_id FROM player_history ORDER BY version")
            )
            return [tuple(row) for row in rows]


def _db_model(db: VersionedSQLAlchemy) -> tuple[Any, Any]:
    class Team(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "team"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(40))

    class Player(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "player"
        id = db.Column(db.Integer, primary_key=True)
        label = db.Column("name", db.String(40))
        team_ref = db.Column("team_id", db.Integer, db.ForeignKey("team.id"))
        team = relationship(Team)

    return Team, Player


def _declarative() -> tuple[type[DeclarativeBase], Any, Any]:
    class Base(DeclarativeBase):
        pass

    class Team(Base):
        __tablename__ = "team"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str | None] = mapped_column(sa.String(40))

    class Player(Base, Versioned):
        __tablename__ = "player"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str | None] = mapped_column("name", sa.String(40))
        team_ref: Mapped[int | None] = mapped_column("team_id", sa.ForeignKey("team.id"))
        team: Mapped[Team | None] = relationship(Team)

    return Base, Team, Player


def _dataclass() -> tuple[type[DeclarativeBase], Any, Any]:
    class Base(MappedAsDataclass, DeclarativeBase):
        pass

    class Team(Base):
        __tablename__ = "team"
        id: Mapped[int] = mapped_column(primary_key=True, init=False)
        name: Mapped[str | None] = mapped_column(sa.String(40), default=None)

    class Player(Base, Versioned):
        __tablename__ = "player"
        id: Mapped[int] = mapped_column(primary_key=True, init=False)
        label: Mapped[str | None] = mapped_column("name", sa.String(40), default=None)
        team_ref: Mapped[int | None] = mapped_column(
            "team_id", sa.ForeignKey("team.id"), default=None, init=False
        )
        team: Mapped[Team | None] = relationship(Team, default=None)

    return Base, Team, Player


def _renamed_keys() -> tuple[type[DeclarativeBase], Any, Any]:
    class Base(DeclarativeBase):
        pass

    class Team(Base):
        __tablename__ = "team"
        id: Mapped[int] = mapped_column("team_pk", primary_key=True)
        name: Mapped[str | None] = mapped_column("team_name", sa.String(40))

    class Player(Base, Versioned):
        __tablename__ = "player"
        id: Mapped[int] = mapped_column("player_pk", primary_key=True)
        label: Mapped[str | None] = mapped_column("name", sa.String(40))
        team_ref: Mapped[int | None] = mapped_column("team_id", sa.ForeignKey("team.team_pk"))
        team: Mapped[Team | None] = relationship(Team)

    return Base, Team, Player


@pytest.fixture(params=STYLES)
def world(request: pytest.FixtureRequest, app: Flask, database_url: str) -> Iterator[World]:
    """The models of one declarative style, their tables created, and a session."""
    style: str = request.param
    if style == "db_model":
        db = VersionedSQLAlchemy(app)
        Team, Player = _db_model(db)
        db.create_all()
        try:
            yield World(style, cast(Session, db.session), Team, Player, db.engine)
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
        return
    build = {"declarative": _declarative, "dataclass": _dataclass, "renamed_keys": _renamed_keys}
    Base, Team, Player = build[style]()
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    session = versioned_session(sessionmaker(bind=engine))()
    try:
        yield World(style, session, Team, Player, engine)
    finally:
        session.close()
        Base.metadata.drop_all(engine)
        engine.dispose()


def _saved(world: World, *objects: Any) -> None:
    world.session.add_all(objects)
    world.session.commit()


def test_update_writes_prior_values(world: World) -> None:
    """A change writes the prior values and bumps version, in every style."""
    player = world.player("a")
    _saved(world, player)
    assert player.version == 0
    player.label = "b"
    world.session.commit()
    assert player.version == 1
    assert world.history() == [(0, "a", None)]
    (old,) = player.versions()
    assert (old.label, old.version) == ("a", 0)


def test_many_to_one_change(world: World) -> None:
    """Assigning a many-to-one writes history of the old key, in every style."""
    t1, t2 = world.team("x"), world.team("y")
    player = world.player("a", t1)
    _saved(world, t1, t2, player)
    old_key = player.team_ref
    player.team = t2
    world.session.commit()
    assert (player.version, player.team_ref) == (1, t2.id)
    assert world.history() == [(0, "a", old_key)]
    assert player.versions()[0].team_ref == old_key


def test_many_to_one_to_pending_and_none(world: World) -> None:
    """Assigning a pending object, then None, makes a version each."""
    t1 = world.team("x")
    player = world.player("a", t1)
    _saved(world, t1, player)
    first = player.team_ref
    player.team = world.team("new")
    world.session.commit()
    second = player.team_ref
    player.team = None
    world.session.commit()
    assert player.version == 2 and second not in (None, first)
    assert world.history() == [(0, "a", first), (1, "a", second)]


def test_delete_writes_final_values(world: World) -> None:
    """Deleting writes the final values, flagged deleted."""
    player = world.player("a")
    _saved(world, player)
    world.session.delete(player)
    world.session.commit()
    rows = world.session.scalars(sa.select(history_class(world.Player))).all()
    assert [(r.label, r.change_info.get("deleted")) for r in rows] == [("a", True)]


def test_expired_update_one_select(world: World) -> None:
    """Changing expired records sends one SELECT for all of them, not one per record."""
    players = [world.player(f"p{i}") for i in range(5)]
    _saved(world, *players)
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    sa.event.listen(world.engine, "before_cursor_execute", record)
    try:
        for player in players:
            player.label = "changed"
        world.session.commit()
    finally:
        sa.event.remove(world.engine, "before_cursor_execute", record)
    assert seen.count("SELECT") == 1
    assert [p.version for p in players] == [1] * 5
    assert len(world.history()) == 5


def test_version_assignment_refused(world: World) -> None:
    """An application's own assignment to ``version`` raises before any statement."""
    player = world.player("a")
    _saved(world, player)
    assert player.version == 0
    player.version = 5
    player.label = "b"
    with pytest.raises(ChrononautException, match="version"):
        world.session.flush()
    world.session.rollback()
    assert world.history() == []


def test_stale_write(world: World) -> None:
    """A change from a stale copy is a StaleWriteError, in every style."""
    player = world.player("a")
    _saved(world, player)
    assert player.version == 0
    with world.engine.begin() as conn:
        conn.execute(sa.text("UPDATE player SET version = 1"))
    player.label = "b"
    with pytest.raises(StaleWriteError):
        world.session.commit()


def test_version_at(world: World) -> None:
    """``version_at`` finds the version current at an instant, in every style."""
    player = world.player("a")
    _saved(world, player)
    between = dt.datetime.now(dt.timezone.utc)
    player.label = "b"
    world.session.commit()
    found = player.version_at(between)
    assert found is not None and found.label == "a"


def test_dataclass_version_not_an_init_argument(app: Flask) -> None:
    """With ``MappedAsDataclass``, ``version`` is not a constructor argument (init=False)."""
    _, _, Player = _dataclass()
    with pytest.raises(TypeError):
        Player(label="a", version=3)
    assert Player(label="a").label == "a"


def test_version_assignment_on_new_record_refused(world: World) -> None:
    """A new record given a ``version`` of the application's raises before any statement."""
    player = world.player("a")
    player.version = 4
    world.session.add(player)
    with pytest.raises(ChrononautException, match="version"):
        world.session.flush()
    world.session.rollback()
    with world.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM player")).scalar_one() == 0
