"""``flask chrononaut leases`` / ``as-of`` / ``history`` on schema-translated and
bind-keyed models (SPEC §1 schema translation and binds, §4 leases CLI)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as
from chrononaut._lease_cli import leases_command
from chrononaut.maintenance._cli import history_command
from chrononaut.maintenance._timetravel import as_of_command


@pytest.fixture()
def tenant_app(database_url: str) -> Iterator[tuple[Flask, VersionedSQLAlchemy]]:
    """An app whose engine translates the default schema to ``tenant_c``."""
    plain = sa.create_engine(database_url)
    with plain.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS tenant_c CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA tenant_c"))
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={
            "execution_options": {"schema_translate_map": {None: "tenant_c"}}
        },
    )
    with app.app_context():
        db = VersionedSQLAlchemy(app)
        try:
            yield app, db
        finally:
            db.session.remove()
            db.engine.dispose()
            with plain.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA tenant_c CASCADE"))
            plain.dispose()


def _tenant_model(db: VersionedSQLAlchemy) -> Any:
    class Form(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_form"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(20))

    db.create_all()
    db.session.add(Form(id=1, title="a"))
    db.session.commit()
    return Form


def test_leases_cli_lists_translated_lease(tenant_app: tuple[Flask, VersionedSQLAlchemy]) -> None:
    """``leases`` lists a lease of a model whose tables are schema-translated."""
    app, db = tenant_app
    Form = _tenant_model(db)
    with acting_as("alice"):
        cast(Any, db.session.get(Form, 1)).lease()
    result = app.test_cli_runner().invoke(leases_command, ["--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    found = [(r["table"], r["key"], r["user_id"]) for r in rows]
    assert found == [("tenant_c.int_form", [1], "alice")]


def test_as_of_and_history_cli_translated(tenant_app: tuple[Flask, VersionedSQLAlchemy]) -> None:
    """``as-of`` and ``history`` read a schema-translated model's tables."""
    app, db = tenant_app
    Form = _tenant_model(db)
    at = dt.datetime.now(dt.timezone.utc)
    cast(Any, db.session.get(Form, 1)).title = "b"
    db.session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(as_of_command, ["Form", at.isoformat(), "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["title"] for line in result.stdout.splitlines()] == ["a"]
    result = runner.invoke(history_command, ["Form", "1"])
    assert result.exit_code == 0, result.output


@pytest.fixture()
def bound_app(database_url: str) -> Iterator[tuple[Flask, VersionedSQLAlchemy]]:
    """An app with a second bind ``other`` (a database of its own)."""
    from chrononaut.testing import temporary_database

    with temporary_database(sa.make_url(database_url), prefix="chrononaut_int_bind") as url:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            SQLALCHEMY_DATABASE_URI=database_url,
            SQLALCHEMY_BINDS={"other": url},
        )
        with app.app_context():
            db = VersionedSQLAlchemy(app)
            try:
                yield app, db
            finally:
                db.session.remove()
                db.drop_all()
                for engine in db.engines.values():
                    engine.dispose()


def _bound_model(db: VersionedSQLAlchemy) -> Any:
    class Memo(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __bind_key__ = "other"
        __tablename__ = "int_memo"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        body = sa.Column(sa.String(20))

    db.create_all()
    db.session.add(Memo(id=1, body="a"))
    db.session.commit()
    return Memo


def test_leases_cli_with_bind(bound_app: tuple[Flask, VersionedSQLAlchemy]) -> None:
    """``leases --bind other`` lists a lease of a bind-keyed model."""
    app, db = bound_app
    Memo = _bound_model(db)
    with acting_as("alice"):
        cast(Any, db.session.get(Memo, 1)).lease()
    result = app.test_cli_runner().invoke(leases_command, ["--json", "--bind", "other"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["user_id"] for line in result.stdout.splitlines()] == ["alice"]


def test_as_of_cli_with_bind(bound_app: tuple[Flask, VersionedSQLAlchemy]) -> None:
    """``as-of`` of a bind-keyed model reads its own database."""
    app, db = bound_app
    Memo = _bound_model(db)
    at = dt.datetime.now(dt.timezone.utc)
    cast(Any, db.session.get(Memo, 1)).body = "b"
    db.session.commit()
    result = app.test_cli_runner().invoke(as_of_command, ["Memo", at.isoformat(), "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["body"] for line in result.stdout.splitlines()] == ["a"]
