"""``flask chrononaut leases``: listing and releasing expired leases (SPEC §4)."""

from __future__ import annotations

import json
from typing import Any, cast

import sqlalchemy as sa
from flask import Flask

from chrononaut import VersionedSQLAlchemy, acting_as
from chrononaut._cli import chrononaut_cli
from chrononaut._lease_cli import leases_command
from chrononaut._leases import LEASE_TABLE


def _run(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(leases_command, list(args))
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_registered_in_group() -> None:
    """The command is part of ``flask chrononaut``."""
    assert "leases" in chrononaut_cli.commands


def test_no_leases(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """With no live lease the command says so."""
    assert "No live edit leases" in _run(app)


def test_table_lists_who_what_until(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """The table names the record, the holder and the note."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 2)).lease(note="address")
    out = _run(app)
    assert "lease_doc" in out and "[2]" in out and "alice" in out and "address" in out


def test_json_lines(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """--json prints one object per lease, without the token."""
    with acting_as("alice"):
        lease = cast(Any, db.session.get(Doc, 1)).lease()
    (line,) = _run(app, "--json").splitlines()
    found = json.loads(line)
    assert (found["table"], found["key"], found["user_id"]) == ("lease_doc", [1], "alice")
    assert set(found) == {"table", "key", "user_id", "since", "until", "note"}
    assert lease.token is not None and lease.token not in line


def test_expired_not_listed(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """Expired leases are not listed."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease()
    db.session.execute(sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = now()"))
    db.session.commit()
    assert "No live edit leases" in _run(app)


def test_release_expired_in_batches(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """--release-expired deletes only expired rows, in batches."""
    with acting_as("alice"):
        for i in (1, 2, 3):
            cast(Any, db.session.get(Doc, i)).lease()
    db.session.execute(
        sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = now() WHERE record_key <> '[3]'")
    )
    db.session.commit()
    assert "Released 2 expired leases" in _run(app, "--release-expired", "--batch-size", "1")
    left = db.session.execute(sa.text(f"SELECT record_key FROM {LEASE_TABLE}")).scalars().all()
    assert left == ["[3]"]
