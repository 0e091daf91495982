"""``flask chrononaut as-of``, ``backfill-valid-from``, ranges in ``history``, and the
Alembic migration that adds ``valid_from`` to existing Chrononaut tables (issue 11)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic.operations import ops
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import Versioned, VersionedSQLAlchemy, as_of, versioned_session
from chrononaut.maintenance._cli import history_command
from chrononaut.maintenance._timetravel import (
    as_of_command,
    backfill_valid_from,
    backfill_valid_from_command,
    parse_instant,
)

from .migrate import context, described, diff

UTC = dt.timezone.utc


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


@pytest.fixture()
def Account(db: VersionedSQLAlchemy) -> type[Any]:
    """Accounts 1 (changed twice) and 2 (never changed), with a hidden column."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "account"
        __chrononaut_hidden__ = ["pin"]
        id = db.Column(db.Integer, primary_key=True)
        owner = db.Column(db.Text)
        balance = db.Column(db.Numeric(10, 2))
        pin = db.Column(db.Text)

    db.create_all()
    db.session.add_all(
        [
            Account(id=1, owner="ann", balance=decimal.Decimal("10.50"), pin="1"),
            Account(id=2, owner="bob", balance=decimal.Decimal("1"), pin="2"),
        ]
    )
    db.session.commit()
    for value in ("20.00", "30.25"):
        cast(Any, db.session.get(Account, 1)).balance = decimal.Decimal(value)
        db.session.commit()
    return Account


def _null_valid_from(db: VersionedSQLAlchemy) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE account SET valid_from = NULL"))
        conn.execute(sa.text("UPDATE account_history SET valid_from = NULL"))
    db.session.expire_all()


def _valid_froms(db: VersionedSQLAlchemy) -> list[Any]:
    with db.engine.connect() as conn:
        sql = "SELECT version, valid_from, changed FROM account_history ORDER BY version"
        return [tuple(row) for row in conn.execute(sa.text(sql))]


# as-of


def test_as_of_prints_a_table(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """``as-of MODEL WHEN`` prints the rows as they were, hidden columns left out."""
    (first, _) = cast(Any, db.session.get(Account, 1)).versions()
    when = first.valid_from.isoformat()
    result = app.test_cli_runner().invoke(as_of_command, ["Account", when])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2 row(s)" in lines[0] or "1 row(s)" in lines[0]
    assert lines[1].split()[:4] == ["id", "owner", "balance", "version"]
    assert "10.50" in result.stdout and "pin" not in result.stdout


def test_as_of_json_values(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """``--json`` prints JSON values: exact numbers, ISO times, null."""
    result = app.test_cli_runner().invoke(as_of_command, ["account", "now", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["balance"], r["version"]) for r in rows] == [(1, 30.25, 2), (2, 1, 0)]
    assert rows[0]["changed"] is None
    assert dt.datetime.fromisoformat(rows[0]["valid_from"]).tzinfo is not None
    assert '"balance": 30.25' in result.stdout


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01", "12:00"])
def test_as_of_bad_when(app: Flask, db: VersionedSQLAlchemy, Account: Any, when: str) -> None:
    """A WHEN that is not an instant is refused with ``Error: …`` (usage error)."""
    result = app.test_cli_runner().invoke(as_of_command, ["Account", when])
    assert result.exit_code == 2
    assert "Error:" in result.output and "ISO 8601" in result.output


def test_as_of_unknown_model(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """An unknown model is refused with ``Error: …``."""
    result = app.test_cli_runner().invoke(as_of_command, ["Nope", "now"])
    assert result.exit_code == 1 and "Error:" in result.output


def test_parse_instant() -> None:
    """ISO 8601 with ``Z`` or an offset; naive is UTC."""
    assert parse_instant("2026-03-03T10:00Z") == dt.datetime(2026, 3, 3, 10, tzinfo=UTC)
    assert parse_instant("2026-03-03 10:00") == dt.datetime(2026, 3, 3, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant("soon")


# history shows ranges


def test_history_shows_ranges(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """Each version's ``[valid_from, changed)`` and the current version's start are shown."""
    result = app.test_cli_runner().invoke(history_command, ["Account", "1"])
    assert result.exit_code == 0, result.output
    account = db.session.get(Account, 1)
    assert account is not None
    v0, v1 = account.versions()
    out = result.stdout
    assert f"v0 was current [{v0.valid_from.isoformat(sep=' ')}, " in out
    assert f"v1 was current [{v1.valid_from.isoformat(sep=' ')}, " in out
    assert f"current version 2 [{account.valid_from.isoformat(sep=' ')}, now)" in out


def test_history_json_has_valid_from(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """``history --json`` carries each version's ``valid_from``."""
    result = app.test_cli_runner().invoke(history_command, ["Account", "1", "--json"])
    starts = [json.loads(line)["valid_from"] for line in result.stdout.splitlines()]
    assert all(isinstance(s, str) for s in starts) and len(starts) == 2


# backfill


def test_backfill_sets_previous_end(db: VersionedSQLAlchemy, Account: Any) -> None:
    """Legacy history rows get the previous row's ``changed``; a first version stays NULL."""
    expected = _valid_froms(db)
    _null_valid_from(db)
    summary = backfill_valid_from(db.engine, cast(Any, db.Model).registry, batch_size=1)
    got = _valid_froms(db)
    assert got[0][1] is None and got[1][1] == expected[1][1] == got[0][2]
    assert summary.history_rows == {"account_history": 1}
    assert summary.live_rows == {"account": 1}  # account 2 has no history: stays NULL
    assert cast(Any, db.session.get(Account, 1)).valid_from == got[1][2]


def test_backfill_keeps_answers(db: VersionedSQLAlchemy, Account: Any) -> None:
    """``as_of`` answers the same before and after the backfill."""
    _null_valid_from(db)
    instants = [v.changed for v in cast(Any, db.session.get(Account, 1)).versions()]
    instants += [i - dt.timedelta(microseconds=1) for i in instants] + [_now()]

    def read() -> list[Any]:
        out = []
        for at in instants:
            past = as_of(Account, at)
            out.append([(r.id, r.balance) for r in db.session.scalars(sa.select(past))])
        return sorted(map(sorted, out))

    before = read()
    backfill_valid_from(db.engine, [Account])
    assert read() == before


def test_backfill_dry_run(db: VersionedSQLAlchemy, Account: Any) -> None:
    """``dry_run`` counts and changes nothing."""
    _null_valid_from(db)
    summary = backfill_valid_from(db.engine, [Account], dry_run=True)
    assert summary.history_rows == {"account_history": 1}
    assert all(row[1] is None for row in _valid_froms(db))


def test_backfill_cli(app: Flask, db: VersionedSQLAlchemy, Account: Any) -> None:
    """``backfill-valid-from`` reports per table; ``--dry-run`` says "would"."""
    _null_valid_from(db)
    runner = app.test_cli_runner()
    dry = runner.invoke(backfill_valid_from_command, ["--dry-run", "--batch-size", "1"])
    assert dry.exit_code == 0, dry.output
    assert "account_history: would set valid_from of 1 history row" in dry.stdout
    done = runner.invoke(backfill_valid_from_command, [])
    assert "account_history: set valid_from of 1 history row" in done.stdout
    again = runner.invoke(backfill_valid_from_command, [])
    assert "nothing to backfill" in again.stdout


# The Alembic migration for tables created before valid_from


def _model(prefix: str) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Note(Base, Versioned):
        __tablename__ = f"{prefix}note"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str | None] = mapped_column(sa.Text)

    return Note


def _pre_valid_from_schema(engine: sa.Engine, prefix: str, model: Any) -> None:
    """The tables as Chrononaut 0.4/0.5.dev wrote them: no valid_from, no as_of indexes."""
    model.metadata.create_all(engine)
    with engine.begin() as conn:
        for table in (f"{prefix}note", f"{prefix}note_history"):
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN valid_from"))
        conn.execute(sa.text(f"DROP INDEX ix_{prefix}note_history_ended"))
        conn.execute(sa.text(f"INSERT INTO {prefix}note (id, text) VALUES (1, 'a'), (2, 'b')"))
        conn.execute(
            sa.text(
                f"INSERT INTO {prefix}note_history (id, text, version, changed, change_info) "
                f"VALUES (1, 'old', 0, now() - interval '1 day', '{{}}')"
            )
        )
        conn.execute(sa.text(f"UPDATE {prefix}note SET version = 1 WHERE id = 1"))


def _documented_migration(operations: list[ops.MigrateOperation]) -> list[ops.MigrateOperation]:
    """The one hand edit docs/migrations.rst asks for: add ``valid_from`` to the model's
    table without its default, then set the default, so existing rows keep NULL."""
    out: list[ops.MigrateOperation] = []
    for op in operations:
        if isinstance(op, ops.AddColumnOp) and op.column.server_default is not None:
            column = op.column
            bare = sa.Column(column.name, column.type, nullable=True)
            out.append(ops.AddColumnOp(op.table_name, bare, schema=op.schema))
            out.append(
                ops.AlterColumnOp(
                    op.table_name,
                    column.name,
                    schema=op.schema,
                    modify_server_default=column.server_default,
                    existing_type=column.type,
                    existing_nullable=True,
                )
            )
        else:
            out.append(op)
    return out


def test_alembic_adds_valid_from_without_rewrite(engine: sa.Engine, prefix: str) -> None:
    """Autogenerate adds the columns and indexes; with the documented edit, existing
    rows keep NULL, new rows get now(), and nothing is left to migrate."""
    from alembic.autogenerate import produce_migrations
    from alembic.operations import Operations

    model = _model(prefix)
    _pre_valid_from_schema(engine, prefix, model)
    with engine.begin() as conn:
        ctx = context(conn, prefix)
        script = produce_migrations(ctx, model.metadata)
        assert script.upgrade_ops is not None
        flat: list[ops.MigrateOperation] = []
        for op in script.upgrade_ops.ops:
            flat.extend(op.ops if isinstance(op, ops.ModifyTableOps) else [op])
        assert described(flat) == {
            ("add_column", f"{prefix}note", "valid_from"),
            ("add_column", f"{prefix}note_history", "valid_from"),
            ("create_index", f"{prefix}note_history", f"ix_{prefix}note_history_ended"),
            ("create_index", f"{prefix}note_history", f"ix_{prefix}note_history_legacy"),
        }
        history_add = next(
            op
            for op in flat
            if isinstance(op, ops.AddColumnOp) and op.table_name.endswith("history")
        )
        assert history_add.column.server_default is None and history_add.column.nullable
        operations = Operations(ctx)
        for op in _documented_migration(flat):
            operations.invoke(op)
    assert diff(engine, model.metadata, prefix) == []
    with engine.begin() as conn:
        old = conn.execute(sa.text(f"SELECT valid_from FROM {prefix}note")).scalars().all()
        assert old == [None, None]
        conn.execute(sa.text(f"INSERT INTO {prefix}note (id, text) VALUES (3, 'c')"))
        new = conn.execute(sa.text(f"SELECT valid_from FROM {prefix}note WHERE id = 3")).scalar()
        assert new is not None
    session = versioned_session(sessionmaker(engine))()
    try:
        note = session.get(model, 1)
        assert note is not None
        assert note.version_at(_now() - dt.timedelta(days=2)).text == "old"
        assert note.version_at(_now()) is note
        note.text = "new"
        session.commit()
        assert [v.valid_from is None for v in note.versions()] == [True, True]
        past = as_of(model, _now() - dt.timedelta(hours=1))
        assert sorted(r.text for r in session.scalars(sa.select(past))) == ["a", "b"]
    finally:
        session.close()


def test_chrononaut_02_tables_read_as_of(engine: sa.Engine, prefix: str) -> None:
    """0.1/0.2 history (no valid_from, NULL after the documented migration) reads
    correctly as of any instant: each version began where the previous one ended."""
    from alembic.autogenerate import produce_migrations
    from alembic.operations import Operations

    from .test_legacy_history import LEGACY
    from .test_legacy_history import _model as legacy_model

    with engine.begin() as conn:
        conn.exec_driver_sql(LEGACY.format(p=prefix))
        conn.execute(sa.text(f"UPDATE {prefix}todos SET version = 0 WHERE version IS NULL"))
    model = legacy_model(prefix)
    with engine.begin() as conn:
        ctx = context(conn, prefix)
        script = produce_migrations(ctx, model.metadata)
        assert script.upgrade_ops is not None
        flat: list[ops.MigrateOperation] = []
        for op in script.upgrade_ops.ops:
            flat.extend(op.ops if isinstance(op, ops.ModifyTableOps) else [op])
        operations = Operations(ctx)
        for op in _documented_migration(flat):
            operations.invoke(op)
    session = versioned_session(sessionmaker(engine))()
    try:

        def texts(at: dt.datetime) -> list[tuple[int, str | None]]:
            past = as_of(model, at)
            return [(r.id, r.text) for r in session.scalars(sa.select(past).order_by(past.id))]

        assert texts(dt.datetime(2016, 6, 22, 20, tzinfo=UTC)) == [
            (1, "Tpyo"),
            (2, "older than the mixin"),
        ]
        assert texts(dt.datetime(2016, 6, 22, 21, tzinfo=UTC))[0] == (1, "Typo fixed")
        todo = session.get(model, 1)
        assert todo is not None
        assert todo.version_at(dt.datetime(2016, 6, 22, 23, tzinfo=UTC)) is todo
        assert todo.valid_from is None
        backfill_valid_from(engine, [model])
        with engine.connect() as conn:
            starts = (
                conn.execute(
                    sa.text(f"SELECT valid_from FROM {prefix}todos_history ORDER BY version")
                )
                .scalars()
                .all()
            )
        assert starts == [None, dt.datetime(2016, 6, 22, 20, 44, 52, 134125, tzinfo=UTC)]
        assert texts(dt.datetime(2016, 6, 22, 21, tzinfo=UTC))[0] == (1, "Typo fixed")
    finally:
        session.close()
