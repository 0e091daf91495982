"""Pruning history tables: keeping history at a chosen size.

Pruning deletes history rows only — never a live row, never a live row's
``version``. What a pruned record loses:

- ``versions()`` no longer lists the pruned versions, ``versions()[0]`` is the
  oldest version kept;
- ``version_at(at)`` for a moment before the oldest kept version's ``changed``
  returns that oldest kept version (the earliest state still known), not the
  state that was really current then;
- ``diff()`` and ``restore()`` can't use pruned versions;
- ``has_changed_since()`` stays right for moments after the cut-off.

With ``older_than`` alone, the newest versions of a record that has not changed
for a long time are pruned too; add ``keep_last`` to keep some of each record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from chrononaut.maintenance._models import base_pk_columns, versioned_models
from chrononaut.versioning._meta import VERSION_KEY, VersionMeta, meta_of

__all__ = ["MAX_BATCH_SIZE", "MAX_KEEP_LAST", "PruneSummary", "count_history_rows", "prune"]

#: Largest ``batch_size``: rows examined per transaction (a PostgreSQL integer).
MAX_BATCH_SIZE = 2**31 - 1
#: Largest ``keep_last`` (a PostgreSQL integer; more history rows per record
#: than that can't exist).
MAX_KEEP_LAST = 2**31 - 1


@dataclass
class PruneSummary:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool = False
    #: the cut-off used (rows whose ``changed`` is before it may go), or None
    cutoff: dt.datetime | None = None
    keep_last: int | None = None
    #: history table name -> rows deleted
    deleted: dict[str, int] = field(default_factory=dict)
    #: history table name -> rows examined
    scanned: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows deleted over all tables."""
        return sum(self.deleted.values())

    def lines(self) -> list[str]:
        """A human-readable summary."""
        verb = "would be deleted" if self.dry_run else "deleted"
        out = [
            f"{name}: {self.deleted[name]} of {self.scanned.get(name, 0)} history rows {verb}"
            for name in sorted(self.deleted)
        ]
        out.append(f"total: {self.total} rows {verb}" + (" (dry run)" if self.dry_run else ""))
        return out


def _roots(models: Iterable[type[Any]] | sa.orm.registry) -> list[VersionMeta]:
    """One meta per history hierarchy: pruning the base table prunes the hierarchy."""
    seen: dict[sa.Table, VersionMeta] = {}
    for cls in versioned_models(models):
        meta = meta_of(cls)
        if meta is None:
            continue
        base = meta.tables[0].history
        known = seen.get(base)
        # Keep the meta that knows the most tables (joined-inheritance leaves).
        if known is None or len(meta.tables) > len(known.tables):
            seen[base] = meta
    return list(seen.values())


def _all_tables(metas: list[VersionMeta], base: sa.Table) -> list[tuple[sa.Table, list[str]]]:
    """Every history table hanging off ``base`` with its key columns (children first)."""
    found: dict[sa.Table, list[str]] = {}
    for meta in metas:
        if meta.tables[0].history is not base:
            continue
        for tmap in meta.tables[1:]:
            found.setdefault(tmap.history, [col for _, col in tmap.pk])
    return list(found.items())


def count_history_rows(engine: sa.Engine, models: Iterable[type[Any]] | sa.orm.registry) -> int:
    """Rows in the base history tables of ``models`` (for a progress bar's length).

    :param engine: the database.
    :param models: Versioned models or their registry.
    """
    total = 0
    with engine.connect() as conn:
        for meta in _roots(models):
            history = meta.tables[0].history
            total += int(conn.execute(sa.select(sa.func.count()).select_from(history)).scalar_one())
    return total


def prune(
    engine: sa.Engine,
    models: Iterable[type[Any]] | sa.orm.registry,
    *,
    older_than: dt.timedelta | None = None,
    keep_last: int | None = None,
    dry_run: bool = False,
    batch_size: int = 5000,
    now: dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> PruneSummary:
    """Delete old history rows of ``models``.

    A row goes when it matches every rule given: ``older_than`` — its ``changed``
    is more than that long ago; ``keep_last`` — it is not among the ``keep_last``
    newest history rows of its record. The table is walked in primary-key order,
    ``batch_size`` rows at a time, one transaction per batch, so a long prune does
    not hold locks for long and can be stopped at any time.

    :param engine: the database.
    :param models: Versioned models (or their registry, ``db.Model.registry``);
        joined-inheritance subclasses are pruned with their base.
    :param older_than: minimum age of a pruned row.
    :param keep_last: number of history rows kept per record (0 keeps none).
    :param dry_run: count what would go, delete nothing.
    :param batch_size: rows examined per transaction.
    :param now: the moment ``older_than`` counts back from (default: now).
    :param progress: called with the number of rows examined after each batch.
    :raises TypeError: an argument of the wrong type (``older_than`` not a
        ``timedelta``, ``keep_last``/``batch_size`` not an ``int`` — ``bool`` and
        ``float`` included —, ``now`` not a ``datetime``, ``engine`` not an Engine).
    :raises ValueError: when neither rule is given, or a value is out of range
        (negative, or so large that the cut-off falls before year 1). All checked
        before anything is sent to the database.
    """
    if not isinstance(engine, sa.Engine):
        raise TypeError(f"engine must be a SQLAlchemy Engine, not {type(engine).__name__}")
    if older_than is not None and not isinstance(older_than, dt.timedelta):
        raise TypeError(f"older_than must be a timedelta, not {type(older_than).__name__}")
    for name, value in (("keep_last", keep_last), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not isinstance(dry_run, bool):
        raise TypeError(f"dry_run must be True or False, not {dry_run!r}")
    if now is not None and not isinstance(now, dt.datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if older_than is None and keep_last is None:
        raise ValueError("give older_than, keep_last or both; pruning everything is not a rule")
    if older_than is not None and older_than < dt.timedelta(0):
        raise ValueError(f"older_than must not be negative, not {older_than}")
    if keep_last is not None and not 0 <= keep_last <= MAX_KEEP_LAST:
        raise ValueError(f"keep_last must be between 0 and {MAX_KEEP_LAST}, not {keep_last}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}")
    moment = now if now is not None else dt.datetime.now(dt.timezone.utc)
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        cutoff = moment - older_than if older_than is not None else None
    except OverflowError:
        raise ValueError(
            f"older_than={older_than} reaches back before year 1; give a shorter age"
        ) from None
    summary = PruneSummary(dry_run=dry_run, cutoff=cutoff, keep_last=keep_last)
    metas = _roots(models)
    with engine.connect() as conn:
        for meta in metas:
            _prune_table(
                conn, meta, metas, cutoff, keep_last, dry_run, batch_size, summary, progress
            )
    return summary


def _prune_table(
    conn: sa.Connection,
    meta: VersionMeta,
    metas: list[VersionMeta],
    cutoff: dt.datetime | None,
    keep_last: int | None,
    dry_run: bool,
    batch_size: int,
    summary: PruneSummary,
    progress: Callable[[int], None] | None,
) -> None:
    history = meta.tables[0].history
    pk = base_pk_columns(meta)
    version = history.c[VERSION_KEY]
    order = [*pk, version]
    width = len(pk)
    children = _all_tables(metas, history)
    deleted = scanned = 0
    last: tuple[Any, ...] | None = None
    while True:
        # Keyset pagination over the primary key: each page is an index range scan,
        # however many rows earlier pages deleted.
        page = sa.select(*order, history.c.changed).order_by(*order).limit(batch_size)
        if last is not None:
            page = page.where(sa.tuple_(*order) > sa.tuple_(*last))
        rows = conn.execute(page).all()
        if not rows:
            conn.rollback()
            break
        last = tuple(rows[-1][: width + 1])
        thresholds = _nth_newest(conn, history, pk, rows, keep_last) if keep_last else {}
        doomed: list[tuple[Any, ...]] = []
        for row in rows:
            key = tuple(row[:width])
            if cutoff is not None and not row[-1] < cutoff:
                continue
            if keep_last:
                nth = thresholds.get(key)
                # Records with no more than keep_last rows keep them all.
                if nth is None or not row[width] < nth:
                    continue
            doomed.append(tuple(row[: width + 1]))
        if doomed and not dry_run:
            for table, key_columns in children:
                _delete(conn, table, [table.c[c] for c in (*key_columns, VERSION_KEY)], doomed)
            _delete(conn, history, order, doomed)
            conn.commit()
        else:
            conn.rollback()
        deleted += len(doomed)
        scanned += len(rows)
        if progress is not None:
            progress(len(rows))
    summary.deleted[history.name] = deleted
    summary.scanned[history.name] = scanned


def _nth_newest(
    conn: sa.Connection,
    history: sa.Table,
    pk: list[sa.Column[Any]],
    rows: Sequence[Sequence[Any]],
    keep_last: int,
) -> dict[tuple[Any, ...], int]:
    """For each record in ``rows``, the version of its ``keep_last``-th newest history row.

    Records with fewer rows are absent (they keep everything).
    """
    keys = sorted({tuple(row[: len(pk)]) for row in rows})
    match = pk[0].in_([k[0] for k in keys]) if len(pk) == 1 else sa.tuple_(*pk).in_(keys)
    version = history.c[VERSION_KEY]
    rank = sa.func.row_number().over(partition_by=pk, order_by=version.desc()).label("rank")
    ranked = sa.select(*pk, version, rank).where(match).subquery()
    query = sa.select(*[ranked.c[c.key] for c in pk], ranked.c[VERSION_KEY]).where(
        ranked.c.rank == keep_last
    )
    return {tuple(row[: len(pk)]): int(row[-1]) for row in conn.execute(query)}


def _delete(
    conn: sa.Connection,
    table: sa.Table,
    columns: list[sa.Column[Any]],
    keys: list[tuple[Any, ...]],
) -> None:
    """Delete the rows of ``table`` whose ``columns`` equal one of ``keys`` (sorted).

    The keys travel as one array per column, unnested into a derived table: the
    statement stays the same for every batch (SQLAlchemy compiles it once), and
    PostgreSQL joins it against the primary-key range of the page.
    """
    arrays = [
        sa.func.unnest(sa.bindparam(f"k{i}", [key[i] for key in keys], type_=ARRAY(c.type))).label(
            f"k{i}"
        )
        for i, c in enumerate(columns)
    ]
    doomed = sa.select(*arrays).subquery("chrononaut_doomed")
    match = [c == doomed.c[f"k{i}"] for i, c in enumerate(columns)]
    rows = sa.tuple_(*columns)
    bounds = [rows >= sa.tuple_(*keys[0]), rows <= sa.tuple_(*keys[-1])]
    conn.execute(sa.delete(table).where(*match, *bounds))
