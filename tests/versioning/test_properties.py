"""Property test (issue 2 item 9): random sequences of edits to tracked, untracked
and hidden columns, flushes, commits, rollbacks, expiries, ORM bulk updates and
delete + re-insert of a few records, checked against a simple in-Python model of
SPEC §2 after every flush, bulk statement and commit."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chrononaut import Versioned, VersionedSQLAlchemy

TRACKED = ("name", "score")
UNTRACKED = ("views",)
HIDDEN = ("secret",)
VALUES: dict[str, list[Any]] = {
    "name": ["a", "b"],
    "score": [0, 1],
    "views": [0, 1],
    "secret": ["s", "t"],
}
IDS = (1, 2)
INITIAL = {"name": "a", "score": 0, "views": 0, "secret": "s"}


@dataclasses.dataclass
class Env:
    db: VersionedSQLAlchemy
    Item: Any


@pytest.fixture(scope="module")
def env(database_url: str) -> Iterator[Env]:
    """One app, db and pair of tables for the whole module (autoflush off: flushes are ops)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = VersionedSQLAlchemy(app, session_options={"autoflush": False})

    class Item(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "prop_item"
        __chrononaut_untracked__ = list(UNTRACKED)
        __chrononaut_hidden__ = list(HIDDEN)
        id = db.Column(db.Integer, primary_key=True, autoincrement=False)
        name = db.Column(db.String(10))
        score = db.Column(db.Integer)
        views = db.Column(db.Integer)
        secret = db.Column(db.String(10))

    with app.app_context():
        db.create_all()
        try:
            yield Env(db, Item)
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@dataclasses.dataclass
class Row:
    """The model of one record: session, flushed (in transaction) and committed state."""

    session: dict[str, Any]
    flushed: dict[str, Any]
    committed: dict[str, Any]
    flushed_version: int = 0
    committed_version: int = 0


class Model:
    """What SPEC §2 says the database holds after each operation."""

    def __init__(self) -> None:
        self.rows = {i: Row(dict(INITIAL), dict(INITIAL), dict(INITIAL)) for i in IDS}
        #: (id, version, name, score, hidden column changed, deleted)
        self.history: list[tuple[int, int, str, int, bool, bool]] = []
        self.pending: list[tuple[int, int, str, int, bool, bool]] = []

    def set(self, rid: int, column: str, value: Any) -> None:
        self.rows[rid].session[column] = value

    def expire(self, rid: int) -> None:
        row = self.rows[rid]
        row.session = dict(row.flushed)

    def flush(self) -> None:
        for rid, row in self.rows.items():
            changed = {k for k in row.session if row.session[k] != row.flushed[k]}
            if changed & set(TRACKED + HIDDEN):
                self.pending.append(
                    (
                        rid,
                        row.flushed_version,
                        row.flushed["name"],
                        row.flushed["score"],
                        bool(changed & set(HIDDEN)),
                        False,
                    )
                )
                row.flushed_version += 1
            row.flushed = dict(row.session)

    def bulk_update(self, rids: list[int], column: str, value: Any) -> None:
        """Flush, then an ORM ``update()`` of ``column`` on ``rids``."""
        self.flush()
        for rid in rids:
            row = self.rows[rid]
            if row.flushed[column] == value:
                continue
            if column not in UNTRACKED:
                name, score = row.flushed["name"], row.flushed["score"]
                self.pending.append(
                    (rid, row.flushed_version, name, score, column in HIDDEN, False)
                )
                row.flushed_version += 1
            row.flushed[column] = value
            row.session = dict(row.flushed)

    def delete_reinsert(self, rid: int) -> None:
        """Flush, delete the record (flushed), insert it again with the initial values."""
        self.flush()
        row = self.rows[rid]
        name, score = row.flushed["name"], row.flushed["score"]
        self.pending.append((rid, row.flushed_version, name, score, False, True))
        row.flushed_version += 1
        row.flushed = dict(INITIAL)
        row.session = dict(INITIAL)

    def commit(self) -> None:
        self.flush()
        for row in self.rows.values():
            row.committed = dict(row.flushed)
            row.committed_version = row.flushed_version
        self.history.extend(self.pending)
        self.pending = []

    def rollback(self) -> None:
        for row in self.rows.values():
            row.session = dict(row.committed)
            row.flushed = dict(row.committed)
            row.flushed_version = row.committed_version
        self.pending = []

    def expected_history(self, in_transaction: bool) -> list[tuple[Any, ...]]:
        rows = self.history + (self.pending if in_transaction else [])
        return sorted(
            (
                rid,
                version,
                name,
                score,
                {"user_id": None, "remote_addr": None}
                | ({"hidden_cols_changed": ["secret"]} if hidden else {})
                | ({"deleted": True} if deleted else {}),
            )
            for rid, version, name, score, hidden, deleted in rows
        )

    def expected_records(self, in_transaction: bool) -> list[tuple[Any, ...]]:
        result = []
        for rid, row in sorted(self.rows.items()):
            values = row.flushed if in_transaction else row.committed
            version = row.flushed_version if in_transaction else row.committed_version
            result.append(
                (rid, *(values[c] for c in ("name", "score", "views", "secret")), version)
            )
        return result


def _db_state(
    env: Env, in_transaction: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(records, history rows) as the database holds them, in or outside the transaction."""
    records_sql = sa.text(
        "SELECT id, name, score, views, secret, version FROM prop_item ORDER BY id"
    )
    history_sql = sa.text(
        "SELECT id, version, name, score, change_info FROM prop_item_history ORDER BY id, version"
    )
    if in_transaction:
        execute = env.db.session.execute
        records = [tuple(r) for r in execute(records_sql)]
        history = [tuple(r) for r in execute(history_sql)]
    else:
        with env.db.engine.connect() as conn:
            records = [tuple(r) for r in conn.execute(records_sql)]
            history = [tuple(r) for r in conn.execute(history_sql)]
    return records, history


def _check(env: Env, model: Model, objects: dict[int, Any], in_transaction: bool) -> None:
    records, history = _db_state(env, in_transaction)
    assert records == model.expected_records(in_transaction)
    assert history == model.expected_history(in_transaction)
    if in_transaction:
        for rid, obj in objects.items():
            assert obj.version == model.rows[rid].flushed_version


def _reset(env: Env) -> dict[int, Any]:
    db = env.db
    db.session.remove()
    db.session.execute(sa.text("TRUNCATE prop_item, prop_item_history"))
    objects = {i: env.Item(id=i, **INITIAL) for i in IDS}
    db.session.add_all(objects.values())
    db.session.commit()
    return objects


set_op = st.sampled_from(sorted(VALUES)).flatmap(
    lambda column: st.tuples(
        st.just("set"), st.sampled_from(IDS), st.just(column), st.sampled_from(VALUES[column])
    )
)
operation = st.one_of(
    set_op,
    set_op,
    set_op,
    st.just(("flush",)),
    st.just(("commit",)),
    st.just(("rollback",)),
    st.sampled_from(IDS).map(lambda rid: ("expire", rid)),
    st.sampled_from(sorted(VALUES)).flatmap(
        lambda column: st.tuples(
            st.just("bulk"),
            st.sets(st.sampled_from(IDS), min_size=1).map(sorted),
            st.just(column),
            st.sampled_from(VALUES[column]),
        )
    ),
    st.sampled_from(IDS).map(lambda rid: ("delete_reinsert", rid)),
)


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(operation, max_size=25))
# A real change beside an expired attribute set to its stored value.
@example(ops=[("set", 1, "name", "b"), ("set", 1, "score", 0)])
# Flushed changes rolled back, then changed again.
@example(ops=[("set", 1, "name", "b"), ("flush",), ("rollback",), ("set", 1, "secret", "t")])
# A pending change dropped by expire, then an untracked-only change.
@example(ops=[("set", 2, "name", "b"), ("expire", 2), ("set", 2, "views", 1), ("commit",)])
def test_history_matches_model(env: Env, ops: list[tuple[Any, ...]]) -> None:
    """Random operation sequences keep history, versions and values as SPEC §2 predicts."""
    objects = _reset(env)
    committed_objects = dict(objects)
    model = Model()
    session = env.db.session
    Item = env.Item
    try:
        for op in ops:
            if op[0] == "set":
                _, rid, column, value = op
                setattr(objects[rid], column, value)
                model.set(rid, column, value)
            elif op[0] == "expire":
                session.expire(objects[op[1]])
                model.expire(op[1])
            elif op[0] == "flush":
                session.flush()
                model.flush()
                _check(env, model, objects, in_transaction=True)
            elif op[0] == "commit":
                session.commit()
                model.commit()
                committed_objects = dict(objects)
                _check(env, model, objects, in_transaction=False)
            elif op[0] == "rollback":
                session.rollback()
                model.rollback()
                objects = dict(committed_objects)
            elif op[0] == "bulk":
                _, rids, column, value = op
                session.flush()
                session.execute(sa.update(Item).where(Item.id.in_(rids)).values({column: value}))
                model.bulk_update(rids, column, value)
                _check(env, model, objects, in_transaction=True)
            else:
                rid = op[1]
                session.flush()
                session.delete(objects[rid])
                session.flush()
                objects[rid] = Item(id=rid, **INITIAL)
                session.add(objects[rid])
                session.flush()
                model.delete_reinsert(rid)
                _check(env, model, objects, in_transaction=True)
        session.commit()
        model.commit()
        _check(env, model, objects, in_transaction=False)
        for rid, obj in objects.items():
            expected = [h for h in model.expected_history(False) if h[0] == rid]
            got = [(h.id, h.version, h.name, h.score, h.change_info) for h in obj.versions()]
            assert got == expected
    finally:
        session.rollback()
