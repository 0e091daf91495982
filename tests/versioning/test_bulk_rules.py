"""SPEC §2/§3 rules for ORM bulk statements: UPDATE by primary key without
``version``, refused ``version`` assignments, user RETURNING, identity-map
synchronisation per ``synchronize_session``, and the one-statement shape."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event

from chrononaut import (
    ChrononautException,
    StaleWriteError,
    VersionedSQLAlchemy,
    append_change_info,
    rationale,
)

PLAIN = {"user_id": None, "remote_addr": None}
SYNCING = ["auto", "fetch", "evaluate"]


@pytest.fixture()
def db_with_config(request: pytest.FixtureRequest, app: Flask) -> Any:
    """A ``db`` created after the indirect parameter (a dict) was put into the app config."""
    app.config.update(request.param)
    return request.getfixturevalue("db")


@pytest.fixture()
def trio(make_user: Any) -> list[Any]:
    """Three committed users: alice (id 1), bob (id 2), carol (id 3), each at version 0."""
    return [make_user(id=i, name=n) for i, n in enumerate(["alice", "bob", "carol"], start=1)]


def _versions(db: VersionedSQLAlchemy, User: Any) -> dict[int, int]:
    """The committed ``version`` of each user, read on a separate connection."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(User.__table__.c.id, User.__table__.c.version))
        return {row[0]: row[1] for row in rows}


def _summary(rows: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(r["id"], r["version"], r["name"]) for r in rows]


@contextmanager
def sent(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """Collect (SQL, parameters) of the statements sent through ``engine`` in the block."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# -- UPDATE by primary key without version -------------------------------------------


def test_by_key_without_version_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """``execute(update(User), [{"id": ..., "name": ...}])`` without version writes history."""
    db.session.execute(sa.update(User), [{"id": 1, "name": "zed"}, {"id": 2, "name": "bob"}])
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    assert _versions(db, User) == {1: 1, 2: 0, 3: 0}


def test_by_key_without_version_is_not_checked(
    db: VersionedSQLAlchemy, trio: Any, User: Any
) -> None:
    """A parameter set without version updates a row whatever its version."""
    db.session.execute(sa.update(User).where(User.id == 1).values(name="b"))
    db.session.execute(sa.update(User), [{"id": 1, "name": "c"}])
    db.session.commit()
    assert _versions(db, User)[1] == 2


def test_by_key_mixed_with_versions(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Sets with and without version in one call: all captured."""
    params = [{"id": 1, "version": 0, "name": "zed"}, {"id": 2, "name": "bo"}]
    db.session.execute(sa.update(User), params)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (2, 0, "bob")]
    assert _versions(db, User) == {1: 1, 2: 1, 3: 0}


def test_by_key_mixed_stale_version_raises(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A set carrying a stale version is still checked when mixed with unchecked ones."""
    db.session.execute(sa.update(User).where(User.id == 1).values(name="b"))
    db.session.commit()
    params = [{"id": 1, "version": 0, "name": "zed"}, {"id": 2, "name": "bo"}]
    with pytest.raises(StaleWriteError):
        db.session.execute(sa.update(User), params)
    db.session.rollback()
    assert _versions(db, User) == {1: 1, 2: 0, 3: 0}


# -- version assignments are refused -------------------------------------------------


def test_version_in_values_refused(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """``update(...).values(version=...)`` raises ChrononautException before any statement."""
    with sent(db.engine) as seen, pytest.raises(ChrononautException, match="version"):
        db.session.execute(sa.update(User).where(User.id == 1).values(version=7))
    assert seen == []
    db.session.rollback()
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_version_column_in_values_refused(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """Naming the ``version`` column object in the SET is refused too."""
    with pytest.raises(ChrononautException):
        db.session.execute(sa.update(User).values({User.version: User.version + 5}))


def test_version_in_query_update_refused(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """Legacy ``Query.update({"version": ...})`` is refused."""
    with pytest.raises(ChrononautException):
        db.session.query(User).filter(User.id == 1).update({"version": 3})


def test_version_in_ordered_values_refused(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """``ordered_values`` with ``version`` is refused."""
    statement = sa.update(User).ordered_values((User.name, "x"), (User.version, 9))
    with pytest.raises(ChrononautException):
        db.session.execute(statement)


# -- RETURNING -----------------------------------------------------------------------


def test_returning_version_is_new(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """``returning(User.version)`` gives the version after the statement."""
    statement = sa.update(User).where(User.id.in_([1, 2])).values(name="bob")
    rows = db.session.execute(statement.returning(User.id, User.version)).all()
    assert sorted(tuple(row) for row in rows) == [(1, 1), (2, 0)]
    db.session.commit()


def test_returning_entity(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """``returning(User)`` gives records holding the new values and version."""
    statement = sa.update(User).where(User.id == 3).values(name="cara").returning(User)
    [user] = db.session.execute(statement).scalars().all()
    assert (user.name, user.version) == ("cara", 1)
    db.session.commit()


# -- synchronize_session -------------------------------------------------------------


@pytest.mark.parametrize("mode", SYNCING)
def test_sync_modes_update_loaded_record(
    db: VersionedSQLAlchemy, trio: Any, User: Any, mode: str
) -> None:
    """With "auto"/"fetch"/"evaluate" a loaded record sees the new values and version."""
    alice = trio[0]
    _ = alice.name
    statement = sa.update(User).where(User.id == 1).values(name="zed")
    db.session.execute(statement.execution_options(synchronize_session=mode))
    assert (alice.name, alice.version) == ("zed", 1)
    db.session.commit()


@pytest.mark.parametrize("mode", SYNCING)
def test_sync_modes_later_flush_ok(
    db: VersionedSQLAlchemy, trio: Any, User: Any, mode: str
) -> None:
    """A record synchronised by a bulk statement can be flushed afterwards."""
    alice = trio[0]
    _ = alice.name
    statement = sa.update(User).where(User.id == 1).values(name="zed")
    db.session.execute(statement.execution_options(synchronize_session=mode))
    alice.email = "z@example.com"
    db.session.commit()
    assert [(h.version, h.name) for h in alice.versions()] == [(0, "alice"), (1, "zed")]


def test_no_sync_keeps_old_version(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """With ``synchronize_session=False`` a loaded record keeps its old values and version."""
    alice = trio[0]
    _ = alice.name
    statement = sa.update(User).where(User.id == 1).values(name="zed")
    db.session.execute(statement.execution_options(synchronize_session=False))
    assert (alice.name, alice.version) == ("alice", 0)
    db.session.commit()


def test_no_sync_then_flush_is_stale(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A write from a copy the statement left stale is a StaleWriteError, not a lost update."""
    alice = trio[0]
    _ = alice.name
    statement = sa.update(User).where(User.id == 1).values(name="zed")
    db.session.execute(statement.execution_options(synchronize_session=False))
    alice.email = "z@example.com"
    with pytest.raises(StaleWriteError):
        db.session.flush()
    db.session.rollback()


@pytest.mark.parametrize("mode", [*SYNCING, False])
def test_query_update_sync_modes(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any, mode: Any
) -> None:
    """Legacy ``Query.update()`` writes history in every mode and syncs where asked."""
    bob = trio[1]
    _ = bob.name
    db.session.query(User).filter(User.id == 2).update({"name": "zed"}, synchronize_session=mode)
    expected = (0, "bob") if mode is False else (1, "zed")
    assert (bob.version, bob.name) == expected
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]


@pytest.mark.parametrize("mode", [*SYNCING, False])
def test_query_delete_sync_modes(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any, mode: Any
) -> None:
    """Legacy ``Query.delete()`` writes history in every mode; records leave the session
    where SQLAlchemy synchronises."""
    bob = trio[1]
    _ = bob.name
    db.session.query(User).filter(User.id == 2).delete(synchronize_session=mode)
    assert (bob in db.session) is (mode is False)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]


# -- the one-statement shape ---------------------------------------------------------


def test_update_is_one_statement(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A bulk UPDATE with history is one statement (synchronize_session=False)."""
    statement = sa.update(User).where(User.id <= 2).values(name=User.name + "!")
    with sent(db.engine) as seen:
        db.session.execute(statement.execution_options(synchronize_session=False))
    assert len(seen) == 1
    assert seen[0][0].lstrip().startswith("WITH")
    db.session.commit()


def test_delete_is_one_statement(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A bulk DELETE with history is one statement."""
    with sent(db.engine) as seen:
        db.session.execute(sa.delete(User).where(User.id <= 2))
    assert len(seen) == 1
    db.session.commit()


def test_hidden_compared_in_database(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Hidden columns are compared in the database: no digest is sent or read back."""
    with sent(db.engine) as seen:
        db.session.execute(sa.update(User).where(User.id <= 2).values(name="zed"))
        db.session.execute(sa.update(User).where(User.id == 3).values(password="pw-0"))
    text = " ".join(f"{sql} {params}" for sql, params in seen)
    assert "md5" not in text.lower()
    db.session.commit()
    # Setting carol's password to its current value is not a change.
    assert _versions(db, User) == {1: 1, 2: 1, 3: 0}
    assert all(
        "hidden_cols_changed" not in r["change_info"] for r in history_rows("appuser_history")
    )


def test_appended_info_only_on_its_row(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """``append_change_info`` of a loaded record goes into that record's history row only."""
    append_change_info(trio[0], note="from alice")
    db.session.execute(sa.update(User).values(name="zed"))
    db.session.commit()
    infos = {r["id"]: r["change_info"] for r in history_rows("appuser_history")}
    assert infos == {1: {**PLAIN, "extra": {"note": "from alice"}}, 2: PLAIN, 3: PLAIN}


def test_appended_info_consumed(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """The appended note is used once: the next history row of that record lacks it."""
    append_change_info(trio[0], note="once")
    db.session.execute(sa.update(User).where(User.id == 1).values(name="b"))
    db.session.execute(sa.update(User).where(User.id == 1).values(name="c"))
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [r["change_info"].get("extra") for r in rows] == [{"note": "once"}, None]


def test_lock_facts_on_locked_row(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A row locked through Chrononaut in this session gets the ``lock`` fact; others not."""
    with trio[0].lock():
        db.session.execute(sa.update(User).where(User.id <= 2).values(name="zed"))
    infos = {r["id"]: r["change_info"] for r in history_rows("appuser_history")}
    assert set(infos[1]) == {"user_id", "remote_addr", "lock"}
    assert infos[2] == PLAIN


def test_volatile_set_evaluated_once(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A volatile SET (``random()``) falls back and still bumps exactly the changed rows."""
    value = sa.cast(sa.func.floor(sa.func.random() * 2), sa.String())
    db.session.execute(sa.update(User).values(name=value))
    db.session.commit()
    with db.engine.connect() as conn:
        names: dict[int, str] = dict(conn.execute(sa.text("SELECT id, name FROM appuser")).all())
    versions = _versions(db, User)
    assert all(versions[i] == 1 for i in names)  # every name changed from alice/bob/carol
    assert len(history_rows("appuser_history")) == 3


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_required_info_refused_before_sending(db_with_config: Any, User: Any) -> None:
    """With CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO a bulk statement outside a block is refused
    before it is sent, even when it would match no row."""
    with sent(db_with_config.engine) as seen, pytest.raises(ChrononautException):
        db_with_config.session.execute(sa.update(User).where(User.id == 99).values(name="x"))
    assert seen == []


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_required_info_given(db_with_config: Any, User: Any, history_rows: Any) -> None:
    """Inside ``rationale`` the bulk statement runs and records the rationale."""
    with rationale("setup"):
        db_with_config.session.add(User(id=1, name="a", email="a@x", password="p"))
        db_with_config.session.commit()
        db_with_config.session.execute(sa.update(User).values(name="b"))
    db_with_config.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"]["extra"] == {"rationale": "setup"}


# -- the two-statement path: hidden columns stay in the database --------------------


def test_by_key_hidden_change_listed(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """UPDATE by primary key of a hidden column lists it, sending no digest."""
    with sent(db.engine) as seen:
        db.session.execute(sa.update(User), [{"id": 2, "password": "new"}, {"id": 3, "name": "c"}])
    db.session.commit()
    assert all("md5" not in sql.lower() for sql, _ in seen)
    rows = history_rows("appuser_history")
    assert [(r["id"], r["change_info"]) for r in rows] == [
        (2, {**PLAIN, "hidden_cols_changed": ["password"]}),
        (3, PLAIN),
    ]


def test_by_key_hidden_same_value_no_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """UPDATE by primary key setting a hidden column to its value writes nothing."""
    db.session.execute(sa.update(User), [{"id": 2, "password": "pw-0"}])
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_volatile_hidden_change_listed(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A volatile SET of a hidden column (two-statement path) lists it, sending no digest."""
    value = sa.cast(sa.func.random(), sa.Text())
    with sent(db.engine) as seen:
        db.session.execute(sa.update(User).where(User.id == 1).values(password=value))
    db.session.commit()
    assert all("md5" not in sql.lower() for sql, _ in seen)
    [row] = history_rows("appuser_history")
    assert row["change_info"] == {**PLAIN, "hidden_cols_changed": ["password"]}


# -- statement shapes ------------------------------------------------------------------


def test_single_table_subclass_only_its_rows(
    db: VersionedSQLAlchemy, Pet: Any, history_rows: Any
) -> None:
    """A bulk UPDATE of a single-table subclass records only that subclass's rows."""
    db.session.execute(sa.update(Pet).values(name="x"))
    db.session.commit()
    assert [(r["id"], r["version"], r["name"]) for r in history_rows("pet_history")] == [
        (1, 0, "rex")
    ]
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, name, version FROM pet ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "x", 1), (2, "tom", 0)]


def test_update_from_other_table(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """UPDATE ... FROM another table matching a row twice writes one history row."""
    other = sa.Table("tag", db.metadata, sa.Column("user_id", sa.Integer), sa.Column("t", sa.Text))
    other.create(db.engine)
    with db.engine.begin() as conn:
        conn.execute(other.insert(), [{"user_id": 1, "t": "a"}, {"user_id": 1, "t": "b"}])
    statement = sa.update(User).where(User.id == other.c.user_id).values(name="tagged")
    db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    assert _versions(db, User) == {1: 1, 2: 0, 3: 0}


def test_fetch_with_returning(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """``synchronize_session="fetch"`` with the caller's RETURNING gives both."""
    alice = trio[0]
    _ = alice.name
    statement = sa.update(User).where(User.id <= 2).values(name="bob")
    statement = statement.returning(User.id, User.version)
    rows = db.session.execute(statement.execution_options(synchronize_session="fetch")).all()
    assert sorted(tuple(r) for r in rows) == [(1, 1), (2, 0)]
    assert (alice.name, alice.version) == ("bob", 1)
    db.session.commit()


def test_volatile_where_takes_two_statements(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A volatile WHERE is evaluated once: the rows updated are the rows recorded."""
    statement = sa.update(User).where(sa.func.random() < 0.5).values(name="zed")
    db.session.execute(statement)
    db.session.commit()
    changed = {i for i, v in _versions(db, User).items() if v == 1}
    assert {r["id"] for r in history_rows("appuser_history")} == changed


def test_version_in_set_parameters_refused(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A single parameter dict that SETs ``version`` is refused too."""
    with pytest.raises(ChrononautException):
        db.session.execute(sa.update(User).where(User.id == 1), {"version": 4, "name": "x"})


@pytest.mark.parametrize("how", ["values", "ordered", "parameters"])
def test_bulk_update_of_primary_key_refused(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, how: str
) -> None:
    """A bulk UPDATE that changes the primary key is refused before any statement."""
    make_user(id=1, name="alice")
    statement = sa.update(User).where(User.id == 1)
    with pytest.raises(ChrononautException, match="can't change its primary key"):
        if how == "values":
            db.session.execute(statement.values(id=5, name="x"))
        elif how == "ordered":
            db.session.execute(statement.ordered_values((User.id, 5), (User.name, "x")))
        else:
            db.session.execute(statement, {"id": 5, "name": "x"})
    db.session.rollback()
    assert db.session.scalars(sa.select(User.id)).all() == [1]


@pytest.mark.parametrize("path", ["one-statement", "two-statement"])
def test_unevaluated_match_keeps_old_version(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, path: str
) -> None:
    """A row the SQL WHERE matches but SQLAlchemy's evaluator does not (``-3 % 2`` is
    ``-1`` in SQL, ``1`` in Python) keeps its loaded record's old version, on both
    paths (the two-statement path is taken for a volatile SET): a later write
    from that stale copy is a StaleWriteError."""
    alice = make_user(name="alice", login_count=-3)
    _ = alice.name  # loaded before the statement
    name: Any = "zed" if path == "one-statement" else sa.func.concat("zed", sa.func.random() * 0)
    statement = sa.update(User).where(User.login_count % 2 == -1).values(name=name)
    db.session.execute(statement.execution_options(synchronize_session="evaluate"))
    assert alice.version == 0
    alice.email = "z@example.com"
    with pytest.raises(StaleWriteError):
        db.session.flush()
    db.session.rollback()


VOLATILE_NAME: Any = sa.func.concat("zed", sa.func.floor(sa.func.random()))


@pytest.mark.parametrize("returned", ["columns", "with-key", "labeled", "entity"])
def test_two_statement_returning_shows_bumped_version(
    db: VersionedSQLAlchemy, trio: Any, User: Any, returned: str
) -> None:
    """On the two-statement path (a volatile SET) RETURNING shows ``version`` and
    ``valid_from`` as the rows hold them after the statement, like the one-statement
    path."""
    statement = sa.update(User).where(User.id.in_([1, 2])).values(name=VOLATILE_NAME)
    if returned == "entity":
        users = db.session.execute(statement.returning(User)).scalars().all()
        got = sorted((u.id, u.version, u.valid_from) for u in users)
    elif returned == "with-key":
        rows = db.session.execute(statement.returning(User.id, User.version, User.valid_from))
        got = sorted(tuple(row) for row in rows)
    elif returned == "labeled":
        rows = db.session.execute(
            statement.returning(User.id, User.version.label("v"), User.valid_from.label("f"))
        )
        got = sorted(tuple(row) for row in rows)
    else:
        plain = db.session.execute(statement.returning(User.version, User.valid_from)).all()
        got = [(i, *row) for i, row in zip((1, 2), sorted(plain), strict=True)]
    db.session.commit()
    with db.engine.connect() as conn:
        stored = conn.execute(
            sa.select(User.id, User.version, User.valid_from).where(User.id.in_([1, 2]))
        ).all()
    assert [(i, v) for i, v, _ in got] == [(1, 1), (2, 1)]
    assert {vf for _, _, vf in got} == {vf for _, _, vf in stored}
