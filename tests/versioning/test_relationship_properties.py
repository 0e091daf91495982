"""Property test (issue 8): random relationship edits — many-to-one assignments,
one-to-many appends and removals through a backref, column edits — flushed and
committed in random order; after every commit the history rows and versions
must be what SPEC §2 says: one row per flush that changed a player's tracked
values, holding the values before that flush."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import relationship

from chrononaut import Versioned, VersionedSQLAlchemy

PLAYERS = (1, 2, 3)
TEAMS = (1, 2)


@dataclasses.dataclass
class Env:
    db: VersionedSQLAlchemy
    Team: Any
    Player: Any


@pytest.fixture(scope="module")
def env(database_url: str) -> Iterator[Env]:
    """One app and schema for the module; autoflush off, so flushes are the test's ops."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = VersionedSQLAlchemy(app, session_options={"autoflush": False})

    class Team(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "prop_team"
        id = db.Column(db.Integer, primary_key=True, autoincrement=False)
        players = relationship("Player", back_populates="team")

    class Player(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "prop_player"
        id = db.Column(db.Integer, primary_key=True, autoincrement=False)
        name = db.Column(db.String(10))
        team_id = db.Column(db.Integer, db.ForeignKey("prop_team.id"))
        team = relationship(Team, back_populates="players")

    with app.app_context():
        db.create_all()
        try:
            yield Env(db, Team, Player)
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


OPS = st.one_of(
    st.tuples(st.just("assign"), st.sampled_from(PLAYERS), st.sampled_from((*TEAMS, None))),
    st.tuples(st.just("append"), st.sampled_from(PLAYERS), st.sampled_from(TEAMS)),
    st.tuples(st.just("remove"), st.sampled_from(PLAYERS), st.none()),
    st.tuples(st.just("rename"), st.sampled_from(PLAYERS), st.sampled_from(("a", "b"))),
    st.tuples(st.just("flush"), st.none(), st.none()),
    st.tuples(st.just("commit"), st.none(), st.none()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, max_size=14))
def test_relationship_edits_match_model(env: Env, ops: list[tuple[str, Any, Any]]) -> None:
    """History and versions after random relationship edits match SPEC §2's model."""
    db, Team, Player = env.db, env.Team, env.Player
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM prop_player_history"))
        conn.execute(sa.text("DELETE FROM prop_player"))
        conn.execute(sa.text("DELETE FROM prop_team"))
    session = db.session
    session.remove()
    teams = {t: Team(id=t) for t in TEAMS}
    players = {p: Player(id=p, name="a", team=teams[1]) for p in PLAYERS}
    session.add_all([*teams.values(), *players.values()])
    session.commit()

    # model: per player (name, team_id) as flushed, its version, and the history
    flushed: dict[Any, tuple[Any, Any]] = {p: ("a", 1) for p in PLAYERS}
    versions = dict.fromkeys(PLAYERS, 0)
    history: list[tuple[int, int, str, int | None]] = []

    def flush() -> None:
        # What the session means each player to hold, read before the flush.
        for pid, player in players.items():
            intent = (player.name, player.team.id if player.team is not None else None)
            if intent != flushed[pid]:
                history.append((pid, versions[pid], *flushed[pid]))
                versions[pid] += 1
                flushed[pid] = intent
        session.flush()

    for op, pid, arg in ops:
        player: Any = players.get(pid) if pid is not None else None
        if op == "assign":
            player.team = teams[arg] if arg is not None else None
        elif op == "append":
            if player not in teams[arg].players:
                teams[arg].players.append(player)
        elif op == "remove":
            current = player.team
            if current is not None and player in current.players:
                current.players.remove(player)
        elif op == "rename":
            player.name = arg
        elif op == "flush":
            flush()
        else:
            flush()
            session.commit()
            with db.engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT id, version, name, team_id FROM prop_player_history "
                        "ORDER BY id, version"
                    )
                ).all()
                live: dict[Any, Any] = dict(
                    conn.execute(sa.text("SELECT id, version FROM prop_player")).all()
                )
            assert [tuple(r) for r in rows] == sorted(history)
            assert live == versions
    flush()
    session.commit()
    assert {p: players[p].version for p in PLAYERS} == versions
