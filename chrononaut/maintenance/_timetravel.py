"""``flask chrononaut as-of`` and ``backfill-valid-from``, and the backfill itself.

Gathered into the ``flask chrononaut`` group by :mod:`chrononaut._cli` through
``COMMANDS``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import sqlalchemy as sa
from flask.cli import with_appcontext
from sqlalchemy.orm import registry

from chrononaut.errors import ChrononautException
from chrononaut.maintenance._models import (
    base_pk_columns,
    cli_extension,
    cli_models,
    find_model,
    live_pk_columns,
    versioned_models,
)
from chrononaut.versioning._as_of import as_of
from chrononaut.versioning._meta import VALID_FROM_KEY, VERSION_KEY, VersionMeta, meta_of

__all__ = [
    "COMMANDS",
    "BackfillSummary",
    "as_of_command",
    "backfill_valid_from",
    "backfill_valid_from_command",
    "count_legacy_rows",
    "parse_instant",
]


# -- the backfill ---------------------------------------------------------------


@dataclass
class BackfillSummary:
    """What :func:`backfill_valid_from` did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    #: history table name -> rows given a valid_from
    history_rows: dict[str, int] = field(default_factory=dict)
    #: model table name -> live rows given a valid_from
    live_rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def lines(self) -> list[str]:
        """A human-readable account, one line per table."""
        verb = "would set" if self.dry_run else "set"
        out = [
            f"{name}: {verb} valid_from of {count} history row{'s' if count != 1 else ''}"
            for name, count in sorted(self.history_rows.items())
        ]
        out += [
            f"{name}: {verb} valid_from of {count} live row{'s' if count != 1 else ''}"
            for name, count in sorted(self.live_rows.items())
        ]
        if not out:
            out.append("nothing to backfill: every row that can have a valid_from has one")
        return out


def _roots(models: registry | Iterable[type[Any]]) -> list[VersionMeta]:
    metas = []
    for cls in versioned_models(models):
        meta = meta_of(cls)
        if meta is not None and meta.mapper.inherits is None:
            metas.append(meta)
    return metas


def _previous_end(meta: VersionMeta, history: Any) -> Any:
    """When the version before ``history``'s row ended (its key's previous row)."""
    base = meta.tables[0]
    earlier = base.history.alias("chrononaut_earlier")
    return (
        sa.select(sa.func.max(earlier.c.changed))
        .where(
            *[earlier.c[col] == history.c[col] for _, col in base.pk],
            earlier.c[VERSION_KEY] < history.c[VERSION_KEY],
        )
        .scalar_subquery()
    )


def count_legacy_rows(engine: sa.Engine, models: registry | Iterable[type[Any]]) -> int:
    """History rows with a ``NULL`` ``valid_from`` (what the backfill looks at).

    :param engine: the database.
    :param models: Versioned models or their registry.
    """
    total = 0
    with engine.connect() as conn:
        for meta in _roots(models):
            history = meta.tables[0].history
            total += conn.execute(
                sa.select(sa.func.count()).where(history.c[VALID_FROM_KEY].is_(None))
            ).scalar_one()
    return int(total)


def backfill_valid_from(
    engine: sa.Engine,
    models: registry | Iterable[type[Any]],
    *,
    batch_size: int = 5000,
    dry_run: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> BackfillSummary:
    """Give legacy rows (``valid_from`` ``NULL``) the ``valid_from`` their neighbours imply.

    A history row's version began where its key's previous history row ended; a
    live row's where its key's last history row ended. A key's first version has
    no known start and keeps ``NULL`` ("since the beginning"). Reads as of any
    instant give the same answers before and after; afterwards they use the
    range index alone. Each batch of ``batch_size`` rows (walked in primary-key
    order) is its own transaction, so the backfill can be interrupted and run
    again.

    :param engine: the database.
    :param models: Versioned models or their registry.
    :param batch_size: rows examined per transaction.
    :param dry_run: count, then roll every batch back.
    :param progress: called with the number of rows examined after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    summary = BackfillSummary(dry_run=dry_run)
    for meta in _roots(models):
        base = meta.tables[0]
        history = base.history
        keys = [*base_pk_columns(meta), history.c[VERSION_KEY]]
        summary.history_rows[history.name] = _batched(
            engine,
            history,
            keys,
            history.c[VALID_FROM_KEY],
            _previous_end(meta, history),
            batch_size,
            dry_run,
            progress,
            summary,
        )
        live = meta.version_column.table
        later = history.alias("chrononaut_later")
        last_end = (
            sa.select(sa.func.max(later.c.changed))
            .where(
                *[
                    later.c[col] == live_col
                    for (_, col), live_col in zip(base.pk, live_pk_columns(meta), strict=True)
                ]
            )
            .scalar_subquery()
        )
        summary.live_rows[live.name] = _batched(
            engine,
            live,
            live_pk_columns(meta),
            live.c[VALID_FROM_KEY],
            last_end,
            batch_size,
            dry_run,
            None,
            summary,
        )
    summary.history_rows = {k: v for k, v in summary.history_rows.items() if v}
    summary.live_rows = {k: v for k, v in summary.live_rows.items() if v}
    return summary


def _batched(
    engine: sa.Engine,
    table: sa.Table,
    keys: list[sa.Column[Any]],
    valid_from: sa.Column[Any],
    start: Any,
    batch_size: int,
    dry_run: bool,
    progress: Callable[[int], Any] | None,
    summary: BackfillSummary,
) -> int:
    """Walk ``table``'s NULL-``valid_from`` rows in key order, ``batch_size`` at a time."""
    done = 0
    last: tuple[Any, ...] | None = None
    while True:
        with engine.begin() as conn:
            batch = sa.select(*keys).where(valid_from.is_(None))
            if last is not None:
                batch = batch.where(sa.tuple_(*keys) > sa.tuple_(*last))
            found = conn.execute(batch.order_by(*keys).limit(batch_size)).all()
            if not found:
                return done
            last = tuple(found[-1])
            chosen = sa.tuple_(*keys).in_([tuple(row) for row in found])
            result = conn.execute(
                sa.update(table)
                .where(chosen, valid_from.is_(None), start.isnot(None))
                .values({valid_from: start})
            )
            done += int(result.rowcount)
            summary.batches += 1
            if dry_run:
                conn.rollback()
        if progress is not None:
            progress(len(found))


# -- reading a table as of an instant ---------------------------------------------


def parse_instant(text: str) -> dt.datetime:
    """An instant from the command line: ISO 8601 (``2026-03-03T10:00``,
    ``2026-03-03 10:00:00+01:00``, a trailing ``Z``) or ``now``; naive is UTC.

    :raises ValueError: for anything else.
    """
    value = text.strip()
    if value.lower() == "now":
        return dt.datetime.now(dt.timezone.utc)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an instant; use ISO 8601, e.g. 2026-03-03T10:00:00+00:00 "
            f"(naive times are UTC) or 'now'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # An exact JSON number: the decimal's own digits, never a float's.
        return json.loads(str(value)) if value.is_finite() else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dict | list):
        return json.dumps(_json_value(value))
    return str(value)


def as_of_rows(
    session: Any, model: type[Any], at: dt.datetime, *, limit: int | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows of ``model``'s table as of ``at`` (tracked columns,
    ``version``, ``valid_from``, ``changed``), in primary-key order."""
    meta = meta_of(model)
    if meta is None:
        raise ChrononautException(f"{model.__name__} is not a Versioned model")
    past = as_of(model, at)
    names = [*meta.tracked, VERSION_KEY, VALID_FROM_KEY, "changed"]
    statement = sa.select(past).order_by(*[getattr(past, key) for key in meta.pk_keys])
    if limit is not None:
        statement = statement.limit(limit)
    rows = []
    for record in session.scalars(statement):
        rows.append({name: record.__dict__.get(name) for name in names})
    return names, rows


def _instant(ctx: click.Context, param: click.Parameter, value: str) -> dt.datetime:
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("as-of")
@click.argument("model")
@click.argument("when", callback=_instant, metavar="WHEN")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per row.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Print at most this many rows."
)
@with_appcontext
def as_of_command(model: str, when: dt.datetime, as_json: bool, limit: int | None) -> None:
    """Print MODEL's table (class or table name) as it was at WHEN (ISO 8601, naive
    times are UTC, or 'now'): every row that existed then, with its values then."""
    ext = cli_extension()
    try:
        cls = find_model(cli_models(ext), model)
    except ChrononautException as exc:
        raise click.ClickException(str(exc)) from exc
    session = ext.session
    try:
        names, rows = as_of_rows(session, cls, when, limit=limit)
    finally:
        session.rollback()
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: _json_value(v) for k, v in row.items()}))
        return
    click.echo(f"{cls.__name__} as of {when.isoformat(sep=' ')}: {len(rows)} row(s)")
    if not rows:
        return
    cells = [[_text(row[name]) for name in names] for row in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, name in enumerate(names)]
    click.echo("  ".join(name.ljust(w) for name, w in zip(names, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for line in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


@click.command("backfill-valid-from")
@click.option(
    "--batch-size",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows examined per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be set; change nothing.")
@click.option(
    "--bind", default=None, help="Flask-SQLAlchemy bind key (default: the main database)."
)
@with_appcontext
def backfill_valid_from_command(batch_size: int, dry_run: bool, bind: str | None) -> None:
    """Set valid_from of history rows written before it existed (from the previous
    row's changed), so time travel reads them through its range index."""
    ext = cli_extension()
    models = cli_models(ext)
    try:
        engine: sa.Engine = ext.engines[bind]
    except KeyError:
        raise click.ClickException(f"no database bind {bind!r}") from None
    total = count_legacy_rows(engine, models)
    with click.progressbar(length=total, label="Backfilling", file=sys.stderr) as bar:
        summary = backfill_valid_from(
            engine, models, batch_size=batch_size, dry_run=dry_run, progress=bar.update
        )
    for line in summary.lines():
        click.echo(line)


COMMANDS = [as_of_command, backfill_valid_from_command]
