"""``flask chrononaut leases``: who is editing what, and until when."""

from __future__ import annotations

import json
from typing import Any

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from chrononaut._app import current_extension
from chrononaut._cli_errors import cli_errors
from chrononaut._lease_table import LEASE_TABLE, lease_table
from chrononaut._leases import live_leases

__all__ = ["COMMANDS", "leases_command", "release_expired"]

_EXPIRED_BATCH = sa.text(
    f"DELETE FROM {LEASE_TABLE} WHERE ctid = ANY(ARRAY("
    f"SELECT ctid FROM {LEASE_TABLE} WHERE expires_at <= clock_timestamp() LIMIT :n))"
)


def release_expired(engine: sa.Engine, batch_size: int = 1000) -> int:
    """Delete expired lease rows, ``batch_size`` per transaction; return how many.

    Expired leases are free anyway (every check compares ``expires_at`` with the
    database clock); this only keeps the table small. Each batch is a short
    transaction of its own, so it never holds many row locks for long.
    """
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(_EXPIRED_BATCH, {"n": batch_size}).rowcount
        total += deleted
        if deleted < batch_size:
            return total


def _iso(value: Any) -> str:
    return str(value.isoformat(timespec="seconds"))


@click.command("leases")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option(
    "--release-expired",
    "release",
    is_flag=True,
    help="Delete expired leases (in batches) instead of listing.",
)
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per transaction with --release-expired.",
)
@click.option(
    "--bind", default=None, help="Flask-SQLAlchemy bind key (default: the main database)."
)
@with_appcontext
@cli_errors
def leases_command(as_json: bool, release: bool, batch_size: int, bind: str | None) -> None:
    """List the live edit leases: which record, who holds it, since and until when."""
    ext = current_extension()
    if ext is None:
        raise click.ClickException("this app has no Flask-SQLAlchemy extension")
    try:
        engine = ext.engines[bind]
    except KeyError:
        raise click.ClickException(f"no database bind {bind!r}") from None
    # The lease table is where the engine's schema_translate_map puts it.
    translate = engine.get_execution_options().get("schema_translate_map") or {}
    if not sa.inspect(engine).has_table(LEASE_TABLE, schema=translate.get(None)):
        raise click.ClickException(
            f"no {LEASE_TABLE} table: define a model with __chrononaut_leases__ = True "
            f"and create its tables (db.create_all() or a migration)"
        )
    if release:
        count = release_expired(engine, batch_size)
        click.echo(f"Released {count} expired lease{'s' if count != 1 else ''}.")
        return
    with engine.connect() as conn:
        rows = list(live_leases(conn, lease_table(sa.MetaData())))
    if as_json:
        for row in rows:
            click.echo(
                json.dumps(
                    {
                        "table": row.table_name,
                        "key": json.loads(row.record_key),
                        "user_id": row.user_id,
                        "since": row.acquired_at.isoformat(),
                        "until": row.expires_at.isoformat(),
                        "note": row.note,
                    }
                )
            )
        return
    if not rows:
        click.echo("No live edit leases.")
        return
    header = ("TABLE", "KEY", "USER", "SINCE", "UNTIL", "NOTE")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.table_name,
                row.record_key,
                row.user_id,
                _iso(row.acquired_at),
                _iso(row.expires_at),
                row.note or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


COMMANDS = [leases_command]
