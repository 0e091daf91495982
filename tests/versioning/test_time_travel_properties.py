"""Property test (issue 11 item 8): for random inserts, updates, deletes, re-inserts
and commits, ``as_of(Model, t)`` at every recorded instant equals the snapshot of the
table taken at that instant, and ``version_at(t)`` of every live record agrees."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chrononaut import Versioned, VersionedSQLAlchemy, as_of

IDS = (1, 2, 3)
VALUES = ("a", "b", "c")


@dataclasses.dataclass
class Env:
    db: VersionedSQLAlchemy
    Item: Any


@pytest.fixture(scope="module", params=[False, True], ids=["btree", "range-index"])
def env(database_url: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    """One app, db and pair of tables for the whole module (per form of the as_of
    query: without and with the GiST range index)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = VersionedSQLAlchemy(app)

    class Item(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "tt_item_r" if request.param else "tt_item"
        __chrononaut_range_index__ = request.param
        __chrononaut_untracked__ = ["hits"]
        id = db.Column(db.Integer, primary_key=True, autoincrement=False)
        value = db.Column(db.String(10))
        hits = db.Column(db.Integer, default=0)

    with app.app_context():
        db.create_all()
        try:
            yield Env(db, Item)
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


operation = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(IDS), st.sampled_from(VALUES)),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
    st.tuples(st.just("hit"), st.sampled_from(IDS)),
    st.just(("commit",)),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(operation, max_size=30))
# Delete and re-insert of one key inside one transaction, then a change.
@example(ops=[("put", 1, "a"), ("commit",), ("delete", 1), ("put", 1, "b"), ("commit",)])
# Several versions of one key in one transaction; an untracked-only change.
@example(ops=[("put", 2, "a"), ("put", 2, "b"), ("commit",), ("hit", 2), ("put", 2, "c")])
def test_as_of_matches_snapshots(env: Env, ops: list[tuple[Any, ...]]) -> None:
    """Every recorded instant reads back as the snapshot taken at it."""
    db, Item = env.db, env.Item
    session = db.session
    with db.engine.begin() as conn:
        name = Item.__table__.name
        conn.execute(sa.text(f"TRUNCATE {name}, {name}_history"))
    session.expire_all()
    live: dict[int, Any] = {}
    committed: dict[int, str] = {}
    pending: dict[int, str | None] = {}
    snapshots: list[tuple[dt.datetime, dict[int, str]]] = [(_now(), {})]

    def commit() -> None:
        session.commit()
        for key, value in pending.items():
            if value is None:
                committed.pop(key, None)
            else:
                committed[key] = value
        pending.clear()
        snapshots.append((_now(), dict(committed)))

    try:
        for op in ops:
            if op[0] == "put":
                _, key, value = op
                if key in live:
                    live[key].value = value
                else:
                    live[key] = Item(id=key, value=value)
                    session.add(live[key])
                session.flush()  # re-inserts must follow their delete
                pending[key] = value
            elif op[0] == "delete" and op[1] in live:
                session.delete(live.pop(op[1]))
                session.flush()
                pending[op[1]] = None
            elif op[0] == "hit" and op[1] in live:
                live[op[1]].hits = (live[op[1]].hits or 0) + 1
            elif op[0] == "commit":
                commit()
        commit()
        for at, snapshot in snapshots:
            Past = as_of(Item, at)
            rows = session.scalars(sa.select(Past).order_by(Past.id)).all()
            assert {r.id: r.value for r in rows} == snapshot, at
            count = session.scalar(sa.select(sa.func.count()).select_from(Past))
            assert count == len(snapshot)
            for key, record in live.items():
                found = record.version_at(at)
                assert (None if found is None else found.value) == snapshot.get(key), (key, at)
    finally:
        session.rollback()
