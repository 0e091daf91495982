"""SPEC §2/§3: a versioned ORM bulk DELETE is sent as ``WITH chrononaut_d AS (DELETE
... RETURNING ...) INSERT INTO <history> ...`` unless it must return rows (the
caller's RETURNING, ``synchronize_session="fetch"``), which keep the lock-first
form; both write the same history rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import (
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    append_change_info,
    versioned_session,
)

PLAIN = {"user_id": None, "remote_addr": None}
DELETED = {**PLAIN, "deleted": True}
RETURNING_FORM = "WITH chrononaut_d AS (DELETE"


@pytest.fixture()
def trio(make_user: Any) -> list[Any]:
    """Three committed users: alice (id 1), bob (id 2), carol (id 3), each at version 0."""
    return [make_user(id=i, name=n) for i, n in enumerate(["alice", "bob", "carol"], start=1)]


@contextmanager
def sent(engine: sa.Engine) -> Iterator[list[str]]:
    """Collect the SQL of the statements sent through ``engine`` in the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _deleted(history_rows: Any) -> list[tuple[int, int, str, Any]]:
    return [
        (r["id"], r["version"], r["name"], r["change_info"])
        for r in history_rows("appuser_history")
    ]


def _live(db: VersionedSQLAlchemy) -> list[int]:
    with db.engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text("SELECT id FROM appuser ORDER BY id"))]


@pytest.mark.parametrize("mode", ["auto", "evaluate", False])
def test_returning_form_sent(db: VersionedSQLAlchemy, trio: Any, User: Any, mode: Any) -> None:
    """Without rows to return, the DELETE is one ``DELETE ... RETURNING`` feeding the INSERT."""
    statement = sa.delete(User).where(User.id <= 2).execution_options(synchronize_session=mode)
    with sent(db.engine) as seen:
        db.session.execute(statement)
    assert len(seen) == 1
    assert seen[0].startswith(RETURNING_FORM)
    assert "FOR UPDATE" not in seen[0]
    db.session.commit()


@pytest.mark.parametrize("mode", ["auto", "evaluate", "fetch", False])
def test_every_mode_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any, mode: Any
) -> None:
    """Each ``synchronize_session`` deletes the rows and writes their final states."""
    statement = sa.delete(User).where(User.id <= 2).execution_options(synchronize_session=mode)
    db.session.execute(statement)
    db.session.commit()
    assert _deleted(history_rows) == [(1, 0, "alice", DELETED), (2, 0, "bob", DELETED)]
    assert _live(db) == [3]


@pytest.mark.parametrize("mode", ["auto", "evaluate", "fetch", False])
def test_every_mode_syncs_session(db: VersionedSQLAlchemy, trio: Any, User: Any, mode: Any) -> None:
    """Loaded records leave the session where SQLAlchemy synchronises, as without history."""
    bob = trio[1]
    _ = bob.name
    statement = sa.delete(User).where(User.id == 2).execution_options(synchronize_session=mode)
    db.session.execute(statement)
    assert (bob in db.session) is (mode is False)
    db.session.commit()


def test_fetch_keeps_lock_first_form(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """``synchronize_session="fetch"`` reads the keys back: the lock-first form is sent."""
    statement = sa.delete(User).where(User.id <= 2).execution_options(synchronize_session="fetch")
    with sent(db.engine) as seen:
        db.session.execute(statement)
    assert len(seen) == 1
    assert "chrononaut_o" in seen[0] and not seen[0].startswith(RETURNING_FORM)
    db.session.commit()


def test_auto_falling_back_to_fetch(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """ "auto" with a WHERE SQLAlchemy can't evaluate (a subquery) becomes "fetch": right rows."""
    bob = trio[1]
    _ = bob.name
    ids = sa.select(User.id).where(User.name == "bob").scalar_subquery()
    with sent(db.engine) as seen:
        db.session.execute(sa.delete(User).where(User.id == ids))
    assert bob not in db.session
    assert not seen[-1].startswith(RETURNING_FORM)
    db.session.commit()
    assert _deleted(history_rows) == [(2, 0, "bob", DELETED)]


def test_user_returning_rows(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """The caller's ``returning(...)`` gives the deleted rows; history is written."""
    statement = sa.delete(User).where(User.id >= 2).returning(User.id, User.name, User.version)
    rows = db.session.execute(statement).all()
    assert sorted(tuple(r) for r in rows) == [(2, "bob", 0), (3, "carol", 0)]
    db.session.commit()
    assert _deleted(history_rows) == [(2, 0, "bob", DELETED), (3, 0, "carol", DELETED)]


def test_rowcount_is_rows_deleted(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """The result's rowcount is the number of rows deleted (not of some other statement)."""
    result: Any = db.session.execute(sa.delete(User).where(User.id <= 2))
    assert result.rowcount == 2
    db.session.commit()


def test_pinned_stale_delete_raises(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A DELETE pinning a (key, version) that is gone raises StaleWriteError."""
    db.session.execute(sa.update(User).where(User.id == 1).values(name="zed"))
    db.session.commit()
    with pytest.raises(StaleWriteError):
        db.session.execute(sa.delete(User).where(User.id == 1, User.version == 0))
    db.session.rollback()
    assert _live(db) == [1, 2, 3]


def test_pinned_current_delete_deletes(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A DELETE pinning the current (key, version) deletes the row and records it."""
    db.session.execute(sa.delete(User).where(User.id == 1, User.version == 0))
    db.session.commit()
    assert _deleted(history_rows) == [(1, 0, "alice", DELETED)]


def test_appended_info_on_its_row(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """``append_change_info`` of a loaded record goes into its delete row only."""
    append_change_info(trio[0], note="gone")
    with sent(db.engine) as seen:
        db.session.execute(sa.delete(User).where(User.id <= 2))
    assert seen[0].startswith(RETURNING_FORM)
    db.session.commit()
    infos = {r["id"]: r["change_info"] for r in history_rows("appuser_history")}
    assert infos == {1: {**DELETED, "extra": {"note": "gone"}}, 2: DELETED}


def test_locked_record_gets_lock_fact(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A row locked through Chrononaut in this session gets the ``lock`` fact; others not."""
    with trio[0].lock():
        db.session.execute(sa.delete(User).where(User.id <= 2))
    infos = {r["id"]: r["change_info"] for r in history_rows("appuser_history")}
    assert set(infos[1]) == {"user_id", "remote_addr", "deleted", "lock"}
    assert infos[2] == DELETED


def test_same_statement_with_and_without_notes(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A compiled form is not reused for a statement whose exceptional rows differ."""
    db.session.execute(sa.delete(User).where(User.id == 1))
    append_change_info(trio[1], note="second")
    db.session.execute(sa.delete(User).where(User.id == 2))
    db.session.execute(sa.delete(User).where(User.id == 3))
    db.session.commit()
    infos = {r["id"]: r["change_info"] for r in history_rows("appuser_history")}
    assert infos == {1: DELETED, 2: {**DELETED, "extra": {"note": "second"}}, 3: DELETED}


def test_user_cte_keeps_lock_first_form(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """A DELETE whose WHERE uses a CTE of its own keeps the lock-first form, same rows."""
    chosen = sa.select(User.id).where(User.name != "alice").cte("chosen")
    statement = sa.delete(User).where(User.id.in_(sa.select(chosen.c.id)))
    with sent(db.engine) as seen:
        db.session.execute(statement.execution_options(synchronize_session=False))
    assert not seen[-1].startswith(RETURNING_FORM)
    db.session.commit()
    assert _deleted(history_rows) == [(2, 0, "bob", DELETED), (3, 0, "carol", DELETED)]


def test_legacy_query_delete(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Legacy ``Query.delete()`` takes the returning form and returns the count."""
    with sent(db.engine) as seen:
        count = db.session.query(User).filter(User.id >= 2).delete()
    assert count == 2
    assert seen[-1].startswith(RETURNING_FORM)
    db.session.commit()
    assert _deleted(history_rows) == [(2, 0, "bob", DELETED), (3, 0, "carol", DELETED)]


def test_single_table_subclass_deletes_its_rows(
    db: VersionedSQLAlchemy, Pet: Any, history_rows: Any
) -> None:
    """A bulk DELETE of a single-table subclass deletes and records only its rows."""
    with sent(db.engine) as seen:
        db.session.execute(sa.delete(Pet))
    assert seen[-1].startswith(RETURNING_FORM)
    db.session.commit()
    assert [(r["id"], r["kind"], r["name"]) for r in history_rows("pet_history")] == [
        (1, "dog", "rex")
    ]
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.text("SELECT id FROM pet"))] == [2]


def test_schema_translate_map(database_url: str) -> None:
    """The returning form writes to the translated schema's tables."""

    class Base(DeclarativeBase):
        pass

    class Doc(Base, Versioned):
        __tablename__ = "tdoc_del"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(40))

    plain = sa.create_engine(database_url)
    try:
        with plain.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS tenant_d CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA tenant_d"))
        engine = plain.execution_options(schema_translate_map={None: "tenant_d"})
        Base.metadata.create_all(engine)
        with versioned_session(sessionmaker(bind=engine))() as session:
            session.add_all([Doc(id=1, title="a"), Doc(id=2, title="b")])
            session.commit()
            with sent(plain) as seen:
                session.execute(sa.delete(Doc).where(Doc.id == 1))
            session.commit()
        assert seen[-1].startswith(RETURNING_FORM)
        with plain.connect() as conn:
            history = conn.execute(
                sa.text("SELECT id, version, title FROM tenant_d.tdoc_del_history")
            )
            assert [tuple(r) for r in history] == [(1, 0, "a")]
            assert [r[0] for r in conn.execute(sa.text("SELECT id FROM tenant_d.tdoc_del"))] == [2]
    finally:
        with plain.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS tenant_d CASCADE"))
        plain.dispose()


def test_compiled_form_follows_sync_mode(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """The same DELETE run with "evaluate", then "fetch", then False gets the form each needs."""
    forms = []
    for row_id, mode in [(1, "evaluate"), (2, "fetch"), (3, False)]:
        statement = sa.delete(User).where(User.id == row_id)
        with sent(db.engine) as seen:
            db.session.execute(statement.execution_options(synchronize_session=mode))
        forms.append(seen[0].startswith(RETURNING_FORM))
    assert forms == [True, False, True]
    db.session.commit()
    assert _live(db) == []
