"""``flask chrononaut import-activity``, ``prune`` and ``history``.

Gathered into the ``flask chrononaut`` group by :mod:`chrononaut._cli` through
``COMMANDS``. Each command works on the app's ``VersionedSQLAlchemy`` (or any
Flask-SQLAlchemy extension) and its ``Versioned`` models.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from chrononaut._cli_errors import cli_errors
from chrononaut.errors import ChrononautException
from chrononaut.maintenance import _activity, _retention, _timeline
from chrononaut.maintenance._models import (
    cli_extension,
    cli_models,
    find_model,
    parse_duration,
)

__all__ = ["COMMANDS", "history_command", "import_activity_command", "prune_command"]


def _engine(ext: Any, bind: str | None) -> sa.Engine:
    try:
        engine: sa.Engine = ext.engines[bind]
    except KeyError:
        raise click.ClickException(f"no database bind {bind!r}") from None
    return engine


def _select(models: list[type[Any]], names: tuple[str, ...]) -> list[type[Any]]:
    if not names:
        return models
    try:
        return [find_model(models, name) for name in names]
    except ChrononautException as exc:
        raise click.ClickException(str(exc)) from exc


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise click.BadParameter(str(exc) or "too long a duration") from exc


_bind_option = click.option(
    "--bind", default=None, help="Flask-SQLAlchemy bind key (default: the main database)."
)


@click.command("import-activity")
@click.option(
    "--table", default=_activity.ACTIVITY_TABLE, show_default=True, help="Activity table."
)
@click.option("--schema", default=None, help="Schema of the activity table.")
@click.option(
    "--chunk-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Keys per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Convert everything, then roll back.")
@click.option(
    "--merge",
    is_flag=True,
    help="Import keys that already have history, putting the imported versions first.",
)
@_bind_option
@with_appcontext
def import_activity_command(
    table: str, schema: str | None, chunk_size: int, dry_run: bool, merge: bool, bind: str | None
) -> None:
    """Convert the original Chrononaut 0.3/0.4 activity table into history tables.

    Resumable and idempotent: keys imported before are skipped. Refuses to run
    when history tables already hold rows for keys in the activity table, unless
    --merge is given.
    """
    ext = cli_extension()
    models = cli_models(ext)
    engine = _engine(ext, bind)
    try:
        total = _activity.count_keys(engine, table=table, schema=schema)
        with click.progressbar(length=total, label="Importing", file=sys.stderr) as bar:
            summary = _activity.import_activity(
                engine,
                models,
                table=table,
                schema=schema,
                chunk_size=chunk_size,
                dry_run=dry_run,
                merge=merge,
                progress=bar.update,
            )
    except ChrononautException as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary.lines():
        click.echo(line)


@click.command("prune")
@click.argument("models", nargs=-1)
@click.option(
    "--older-than",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="Delete history rows changed longer ago than this (30d, 12h, 90m, 2w).",
)
@click.option(
    "--keep-last",
    type=click.IntRange(min=0, max=_retention.MAX_KEEP_LAST),
    default=None,
    metavar="N",
    help="Keep the N newest history rows of every record.",
)
@click.option(
    "--batch-size",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1, max=_retention.MAX_BATCH_SIZE),
    help="Rows examined per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@_bind_option
@with_appcontext
@cli_errors
def prune_command(
    models: tuple[str, ...],
    older_than: Any,
    keep_last: int | None,
    batch_size: int,
    dry_run: bool,
    bind: str | None,
) -> None:
    """Delete old history rows of MODELS (class or table names; default: all).

    With both --older-than and --keep-last a row is deleted only when it is older
    and not among the newest N of its record. Live rows are never touched.
    """
    if older_than is None and keep_last is None:
        raise click.UsageError("give --older-than, --keep-last or both")
    ext = cli_extension()
    selected = _select(cli_models(ext), models)
    engine = _engine(ext, bind)
    total = _retention.count_history_rows(engine, selected)
    with click.progressbar(length=total, label="Pruning", file=sys.stderr) as bar:
        summary = _retention.prune(
            engine,
            selected,
            older_than=older_than,
            keep_last=keep_last,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=bar.update,
        )
    for line in summary.lines():
        click.echo(line)


@click.command("history")
@click.argument("model")
@click.argument("key", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per change.")
@with_appcontext
@cli_errors
def history_command(model: str, key: tuple[str, ...], as_json: bool) -> None:
    """Print the timeline of the MODEL record with primary key KEY (one value per
    key column): version, when, who, why and the changed fields (old -> new)."""
    ext = cli_extension()
    try:
        cls = find_model(cli_models(ext), model)
        pk = _timeline.parse_key(cls, key)
    except ChrononautException as exc:
        raise click.ClickException(str(exc)) from exc
    session = ext.session
    try:
        result = _timeline.timeline(session, cls, pk)
    finally:
        session.rollback()
    if not result.found:
        shown = ", ".join(key)
        raise click.ClickException(
            f"{cls.__name__} {shown}: not found (no such record, and no history for this key)"
        )
    if as_json:
        for change in result.changes:
            click.echo(json.dumps(change.as_dict()))
        return
    for line in result.lines():
        click.echo(line)


COMMANDS = [import_activity_command, prune_command, history_command]
