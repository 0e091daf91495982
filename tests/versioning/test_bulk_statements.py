"""SPEC §2: ORM bulk ``update()``/``delete()`` statements and legacy
``Query.update()``/``Query.delete()`` write history like flushes do."""

from __future__ import annotations

import enum
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from chrononaut import (
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    extra_change_info,
    suppress_versioning,
)

PLAIN = {"user_id": None, "remote_addr": None}


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


def test_bulk_update_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` statement writes a history row per affected record."""
    db.session.execute(sa.update(User).where(User.id.in_([1, 2])).values(name="zed"))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (2, 0, "bob")]


def test_bulk_update_change_info(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """History rows of an ORM ``update()`` have the plain change_info."""
    db.session.execute(sa.update(User).where(User.id == 1).values(name="zed"))
    db.session.commit()
    assert [r["change_info"] for r in history_rows("appuser_history")] == [PLAIN]


def test_bulk_update_bumps_version(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """An ORM ``update()`` bumps ``version`` of the affected rows only."""
    db.session.execute(sa.update(User).where(User.id.in_([1, 2])).values(name="zed"))
    db.session.commit()
    assert _versions(db, User) == {1: 1, 2: 1, 3: 0}


def test_bulk_update_in_session_version(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """After an ORM ``update()`` loaded records of the session see the new ``version``."""
    alice = trio[0]
    _ = alice.name
    db.session.execute(sa.update(User).where(User.id == 1).values(name="zed"))
    assert (alice.name, alice.version) == ("zed", 1)
    db.session.commit()


def test_bulk_update_then_flush_not_stale(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """A record loaded before an ORM ``update()`` of the same session can be changed after it."""
    alice = db.session.get(User, 1)
    assert alice is not None
    _ = alice.name
    db.session.execute(sa.update(User).where(User.id == 1).values(name="zed"))
    alice.email = "zed@example.com"
    db.session.commit()
    assert [(h.version, h.name) for h in alice.versions()] == [(0, "alice"), (1, "zed")]
    assert alice.version == 2


def test_bulk_update_unchanged_rows_skipped(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Rows whose tracked values an ORM ``update()`` leaves equal get no history and no bump."""
    db.session.execute(sa.update(User).values(name="bob"))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (3, 0, "carol")]
    assert _versions(db, User) == {1: 1, 2: 0, 3: 1}


def test_bulk_update_untracked_only(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` of untracked columns only writes nothing and keeps versions."""
    db.session.execute(sa.update(User).values(login_count=User.login_count + 1))
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_bulk_update_untracked_applied(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """An ORM ``update()`` of untracked columns still updates them."""
    db.session.execute(sa.update(User).values(login_count=7))
    db.session.commit()
    with db.engine.connect() as conn:
        counts = conn.execute(sa.select(User.__table__.c.login_count)).scalars().all()
    assert counts == [7, 7, 7]


def test_bulk_update_hidden(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` of a hidden column writes rows listing it in ``hidden_cols_changed``."""
    db.session.execute(sa.update(User).where(User.id == 2).values(password="new-secret"))
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["id"], row["version"], row["name"]) == (2, 0, "bob")
    assert row["change_info"] == {**PLAIN, "hidden_cols_changed": ["password"]}
    assert _versions(db, User)[2] == 1


def test_bulk_update_expression(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` with a SQL expression records the values before it."""
    db.session.execute(sa.update(User).where(User.id <= 2).values(name=User.name + "!"))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (2, 0, "bob")]
    assert cast(Any, db.session.get(User, 1)).name == "alice!"


def test_bulk_update_with_context(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` records the actor and extra info like a flush."""
    with acting_as("admin", remote_addr="10.0.0.1"), extra_change_info(job="rename"):
        db.session.execute(sa.update(User).where(User.id == 1).values(name="zed"))
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"] == {
        "user_id": "admin",
        "remote_addr": "10.0.0.1",
        "extra": {"job": "rename"},
    }


def test_bulk_update_rollback(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Rolling back after an ORM ``update()`` leaves no history."""
    db.session.execute(sa.update(User).values(name="zed"))
    db.session.rollback()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_bulk_update_suppressed(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` inside ``suppress_versioning`` writes no history, no bump."""
    with suppress_versioning():
        db.session.execute(sa.update(User).values(name="zed"))
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_bulk_update_twice_continues(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Two ORM ``update()`` statements write successive versions."""
    db.session.execute(sa.update(User).where(User.id == 1).values(name="b"))
    db.session.execute(sa.update(User).where(User.id == 1).values(name="c"))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (1, 1, "b")]
    assert _versions(db, User)[1] == 2


def test_bulk_update_returns_rowcount(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """An ORM ``update()`` still returns its result (rowcount of matched rows)."""
    statement = sa.update(User).where(User.id.in_([1, 2])).values(name="zed")
    result = cast("sa.CursorResult[Any]", db.session.execute(statement))
    assert result.rowcount == 2
    db.session.commit()


def test_bulk_delete_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``delete()`` writes a final history row per deleted record, marked deleted."""
    db.session.execute(sa.delete(User).where(User.id.in_([1, 3])))
    db.session.commit()
    rows = history_rows("appuser_history")
    assert _summary(rows) == [(1, 0, "alice"), (3, 0, "carol")]
    assert [r["change_info"] for r in rows] == [{**PLAIN, "deleted": True}] * 2


def test_bulk_delete_removes_rows(db: VersionedSQLAlchemy, trio: Any, User: Any) -> None:
    """An ORM ``delete()`` still deletes the rows."""
    db.session.execute(sa.delete(User).where(User.id.in_([1, 3])))
    db.session.commit()
    assert _versions(db, User) == {2: 0}


def test_bulk_delete_rollback(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Rolling back after an ORM ``delete()`` leaves no history and the rows in place."""
    db.session.execute(sa.delete(User))
    db.session.rollback()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_query_update_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Legacy ``Query.update()`` writes history rows and bumps ``version``."""
    db.session.query(User).filter(User.id == 2).update({"name": "zed"})
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["id"], row["version"], row["name"], row["change_info"]) == (2, 0, "bob", PLAIN)
    assert _versions(db, User) == {1: 0, 2: 1, 3: 0}


def test_query_update_unchanged_rows_skipped(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Legacy ``Query.update()`` skips rows whose tracked values stay equal."""
    User.query.update({"name": "alice"})
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob"), (3, 0, "carol")]
    assert _versions(db, User) == {1: 0, 2: 1, 3: 1}


def test_query_update_untracked_only(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Legacy ``Query.update()`` of untracked columns only writes nothing."""
    User.query.update({"login_count": 3})
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_query_delete_writes_history(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """Legacy ``Query.delete()`` writes final rows marked deleted."""
    db.session.query(User).filter(User.id == 1).delete()
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["id"], row["version"], row["name"]) == (1, 0, "alice")
    assert row["change_info"] == {**PLAIN, "deleted": True}
    assert _versions(db, User) == {2: 0, 3: 0}


def test_bulk_delete_after_update_continues(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``delete()`` after a flushed change records the changed record's final version."""
    alice = trio[0]
    alice.name = "alice2"
    db.session.flush()
    db.session.execute(sa.delete(User).where(User.id == 1))
    db.session.commit()
    rows = history_rows("appuser_history")
    assert _summary(rows) == [(1, 0, "alice"), (1, 1, "alice2")]
    assert rows[1]["change_info"] == {**PLAIN, "deleted": True}


def test_bulk_update_no_synchronize(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` with ``synchronize_session=False`` writes history and bumps too."""
    statement = sa.update(User).where(User.id == 1).values(name="zed")
    db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    assert _versions(db, User)[1] == 1


def test_bulk_update_returning(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``update()`` with RETURNING still returns the caller's rows and writes history."""
    statement = sa.update(User).where(User.id.in_([1, 2])).values(name="zed")
    result = db.session.execute(statement.returning(User.id, User.name))
    assert sorted(tuple(row) for row in result) == [(1, "zed"), (2, "zed")]
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice"), (2, 0, "bob")]


def test_bulk_update_by_primary_key(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM bulk UPDATE by primary key (parameter dicts with versions) writes history, bumps."""
    params = [{"id": 1, "version": 0, "name": "zed"}, {"id": 3, "version": 0, "name": "carol"}]
    db.session.execute(sa.update(User), params)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    assert _versions(db, User) == {1: 1, 2: 0, 3: 0}


def test_bulk_delete_returning(
    db: VersionedSQLAlchemy, trio: Any, User: Any, history_rows: Any
) -> None:
    """An ORM ``delete()`` with RETURNING returns the caller's rows and writes history."""
    result = db.session.execute(sa.delete(User).where(User.id == 2).returning(User.name))
    assert result.scalars().all() == ["bob"]
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@pytest.mark.parametrize(
    ("column_type", "before", "after"),
    [
        (sa.Integer(), 1234, None),
        (sa.Enum(Level, name="chron_test_level"), Level.LOW, Level.HIGH),
        (JSONB(), {"a": 1}, {"b": 2}),
    ],
    ids=["integer-to-null", "enum", "jsonb"],
)
def test_by_primary_key_hidden_column_types(
    db: VersionedSQLAlchemy, column_type: Any, before: Any, after: Any
) -> None:
    """An UPDATE by primary key of a hidden column of any type bumps the version and
    lists the column (its proposed values are compared as the column's type)."""

    class Vault(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "vault"
        __chrononaut_hidden__ = ["secret"]
        id = db.Column(db.Integer, primary_key=True)
        secret = db.Column(column_type, nullable=True)

    db.create_all()
    db.session.add(Vault(id=1, secret=before))
    db.session.commit()
    db.session.execute(sa.update(Vault), [{"id": 1, "secret": after}])
    db.session.commit()
    vault = db.session.get(Vault, 1)
    assert vault is not None
    assert vault.version == 1
    assert vault.versions()[0].change_info["hidden_cols_changed"] == ["secret"]
