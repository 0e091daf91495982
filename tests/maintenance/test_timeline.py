"""A record's timeline: ``timeline()`` and ``flask chrononaut history`` (issue 5, item 4)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as, rationale
from chrononaut.maintenance._cli import history_command
from chrononaut.maintenance._timeline import timeline


@pytest.fixture()
def Account(db: VersionedSQLAlchemy) -> type[Any]:
    """Account 1: renamed by ann with a rationale, then its password changed by bob."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "account"
        __chrononaut_hidden__ = ["password"]
        __chrononaut_untracked__ = ["visits"]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.Text)
        balance = db.Column(db.Integer)
        password = db.Column(db.Text)
        visits = db.Column(db.Integer)

    db.create_all()
    account = Account(id=1, name="old", balance=10, password="secret-1", visits=0)
    db.session.add(account)
    db.session.commit()
    with acting_as("ann", remote_addr="10.0.0.1"), rationale("rename"):
        account.name = "new"
        account.balance = 20
        db.session.commit()
    with acting_as("bob"):
        account.password = "secret-2"
        account.visits = 5
        db.session.commit()
    return Account


def test_timeline_lists_changes_with_who_when_why_what(
    db: VersionedSQLAlchemy, Account: type[Any]
) -> None:
    """Each change has its version, time, actor, rationale and old → new values."""
    result = timeline(cast(Session, db.session), Account, (1,))
    assert result.current_version == 2
    first, second = result.changes
    assert (first.version, first.user_id, first.remote_addr, first.why) == (
        0,
        "ann",
        "10.0.0.1",
        "rename",
    )
    assert first.fields == {"name": ("old", "new"), "balance": (10, 20)}
    assert first.hidden == []
    assert (second.version, second.user_id, second.fields, second.hidden) == (
        1,
        "bob",
        {},
        ["password"],
    )
    assert first.changed <= second.changed


def test_deleted_record_keeps_its_timeline(db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """A deleted record's timeline ends with the deletion."""
    db.session.delete(db.session.get(Account, 1))
    db.session.commit()
    result = timeline(cast(Session, db.session), Account, (1,))
    assert result.current_version is None
    assert result.changes[-1].deleted and result.changes[-1].fields == {}
    assert "deleted" in result.lines()[0]


def test_cli_prints_the_timeline(app: Flask, db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """``history Account 1`` shows who, why and old → new; hidden columns without values."""
    result = app.test_cli_runner().invoke(history_command, ["Account", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Account 1: current version 2" in out
    assert "v0 -> v1" in out and "by ann from 10.0.0.1" in out
    assert "why: rename" in out
    assert "name: 'old' -> 'new'" in out and "balance: 10 -> 20" in out
    assert "password: changed (hidden)" in out
    assert "secret" not in out and "visits" not in out


def test_cli_json_output(app: Flask, db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """``--json`` prints one object per change."""
    result = app.test_cli_runner().invoke(history_command, ["account", "1", "--json"])
    assert result.exit_code == 0, result.output
    changes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c["version"] for c in changes] == [0, 1]
    assert changes[0]["fields"]["name"] == ["old", "new"]
    assert changes[1]["hidden_changed"] == ["password"]


def test_cli_json_values_are_json(app: Flask, db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """``--json`` field values are JSON numbers and strings, not Python reprs."""
    result = app.test_cli_runner().invoke(history_command, ["account", "1", "--json"])
    first = json.loads(result.stdout.splitlines()[0])
    assert first["fields"]["balance"] == [10, 20]
    assert first["extra"] == {"rationale": "rename"}


def test_cli_never_existing_key_is_not_found(
    app: Flask, db: VersionedSQLAlchemy, Account: type[Any]
) -> None:
    """A key with no record and no history says "not found" and exits 1."""
    result = app.test_cli_runner().invoke(history_command, ["Account", "99"])
    assert result.exit_code == 1
    assert "Account 99: not found" in result.output


def test_cli_no_user_is_anonymous(app: Flask, db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """A change without an acting user is shown as made by "anonymous"."""
    account = db.session.get(Account, 1)
    assert account is not None
    account.name = "third"
    db.session.commit()
    result = app.test_cli_runner().invoke(history_command, ["Account", "1"])
    assert "by anonymous" in result.stdout


def test_cli_record_without_changes(
    app: Flask, db: VersionedSQLAlchemy, Account: type[Any]
) -> None:
    """A record that never changed says so."""
    db.session.add(Account(id=2, name="quiet"))
    db.session.commit()
    result = app.test_cli_runner().invoke(history_command, ["Account", "2"])
    assert result.exit_code == 0, result.output
    assert "no recorded changes" in result.stdout


def test_cli_errors(app: Flask, db: VersionedSQLAlchemy, Account: type[Any]) -> None:
    """Unknown models, keys of the wrong type or count are reported as errors."""
    runner = app.test_cli_runner()
    unknown = runner.invoke(history_command, ["Nope", "1"])
    assert unknown.exit_code == 1 and "Versioned models: Account" in unknown.output
    wrong = runner.invoke(history_command, ["Account", "one"])
    assert wrong.exit_code == 1 and "not a valid id" in wrong.output
    many = runner.invoke(history_command, ["Account", "1", "2"])
    assert many.exit_code == 1 and "keyed by id" in many.output
