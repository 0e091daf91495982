"""Benchmark: ``chrononaut.as_of()`` against the best hand-written SQL for the same rows.

One table of 10,000 live rows whose history table holds 1,000,000 rows (100 versions
per key, seeded with ``generate_series`` in SQL). Each case compares, side by side
and interleaved round by round (see ``benchmarks/README.md``):

``as_of``
    ``session.scalars(select(as_of(Model, at)) ...).all()``, as shipped.
``hand-gist`` / ``hand-btree``
    hand-written SQL for the same result, mapped to the history class through
    ``select(HistoryClass).from_statement(text(...))`` so both sides pay the same
    ORM cost: a ``UNION ALL`` of the history rows whose range contains ``at`` and
    the live rows that began at or before it, without any handling of legacy
    (``NULL`` ``valid_from``) rows. ``gist`` asks with ``tstzrange(...) @> at``
    (the GiST index of ``--range-index``), ``btree`` with ``valid_from <= at AND
    changed > at`` (whatever plan PostgreSQL prefers for that).

The history rows are seeded in the order their versions ended, as an application
writes them. ``--range-index`` builds the model with ``__chrononaut_range_index__ =
True`` (a GiST index over each history row's range, on top of the default btree on
``changed``).

``hand-aliased`` (one key only)
    ``hand-btree``'s SQL as a ``text()`` subquery behind
    ``sqlalchemy.orm.aliased(HistoryClass, ...)``, made afresh per query (as an
    instant of its own needs), filtered with ``.where(Past.id == k)``: the least any
    API returning an aliased class can cost, printed next to ``as_of``.

Cases: the whole table at an instant in the middle of the history (every row from
the history table), at an instant after the last change (every row from the live
table), and one key at the middle instant. The query plans of ``as_of`` are printed.

Run it with ``.venv/bin/python benchmarks/bench_time_travel.py`` (``--live 1000``
for a quicker run on a tenth of the data); it reports only
(no assertions) and exits 0. A noisy shared machine moves single figures; compare
the ratios of one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import driver_urls, interleave, print_results, scratch_database, unique_suffix

import chrononaut
from chrononaut import Versioned, as_of, history_class, versioned_session
from chrononaut.testing import database_url
from chrononaut.versioning._as_of import as_of_selectable
from chrononaut.versioning._meta import meta_of

LIVE = 10_000
VERSIONS = 100
BASE = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
MIDDLE = BASE + dt.timedelta(days=50, hours=12)
AFTER = BASE + dt.timedelta(days=VERSIONS + 10)
TARGET = 1.25


def build_model(suffix: str, range_index: bool = False) -> tuple[type[Any], type[Any]]:
    class Base(DeclarativeBase):
        pass

    class Account(Base, Versioned):
        __tablename__ = f"tt_account_{suffix}"
        __chrononaut_range_index__ = range_index
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[str] = mapped_column(sa.Text)
        balance: Mapped[int] = mapped_column(sa.Integer)
        note: Mapped[str | None] = mapped_column(sa.Text)

    return Base, Account


def seed(engine: sa.Engine, model: Any) -> None:
    """10,000 live rows, 100 history versions each: version v of key k covered
    ``[BASE + v days + k s, BASE + (v + 1) days + k s)``."""
    meta = meta_of(model)
    assert meta is not None
    live = meta.version_column.table.name
    history = meta.tables[0].history
    indexes = list(history.indexes)
    started = time.perf_counter()
    with engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
        conn.execute(
            sa.text(
                f"INSERT INTO {history.name} (id, owner, balance, note, version, valid_from, "
                f"changed, change_info) "
                f"SELECT k, 'owner ' || k, k * 10 + v, 'note', v, "
                f"  :base + v * interval '1 day' + k * interval '1 second', "
                f"  :base + (v + 1) * interval '1 day' + k * interval '1 second', "
                f'  \'{{"user_id": null, "remote_addr": null}}\'::jsonb '
                f"FROM generate_series(0, :v - 1) AS v, generate_series(1, :n) AS k "
                # In the order the versions ended, as a history table is written.
                f"ORDER BY v, k"
            ),
            {"base": BASE, "n": LIVE, "v": VERSIONS},
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {live} (id, owner, balance, note, version, valid_from) "
                f"SELECT k, 'owner ' || k, k * 10 + :v, 'note', :v, "
                f"  :base + :v * interval '1 day' + k * interval '1 second' "
                f"FROM generate_series(1, :n) AS k"
            ),
            {"base": BASE, "n": LIVE, "v": VERSIONS},
        )
        for index in indexes:
            index.create(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {history.name}")
        conn.exec_driver_sql(f"VACUUM ANALYZE {live}")
    print(
        f"  seeded {LIVE:,} live rows and {LIVE * VERSIONS:,} history rows "
        f"in {time.perf_counter() - started:.1f} s"
    )


def hand_written(model: Any, style: str, one_key: bool) -> str:
    meta = meta_of(model)
    assert meta is not None
    live = meta.version_column.table.name
    history = meta.tables[0].history.name
    if style == "gist":
        contains = "tstzrange(valid_from, greatest(changed, valid_from)) @> :at"
    else:
        contains = "valid_from <= :at AND changed > :at"
    key = " AND id = :k" if one_key else ""
    return (
        f"SELECT id, owner, balance, note, version, valid_from, changed, change_info "
        f"FROM {history} WHERE {contains}{key} "
        f"UNION ALL "
        f"SELECT id, owner, balance, note, version, valid_from, NULL, NULL "
        f"FROM {live} WHERE valid_from <= :at{key}"
    )


def explain(engine: sa.Engine, statement: Any, label: str) -> None:
    with engine.connect() as conn:
        compiled = statement.compile(dialect=engine.dialect)
        if isinstance(statement, sa.TextClause):
            rows = conn.execute(
                sa.text("EXPLAIN (ANALYZE, COSTS OFF) " + statement.text),
                {k: v.value for k, v in statement._bindparams.items()},
            )
        else:
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, COSTS OFF) " + str(compiled), compiled.params
            )
        print(f"\n  plan: {label}")
        for (line,) in rows:
            print(f"    {line}")


def run(driver: str, engine: sa.Engine, model: Any, rounds: int, show_plans: bool) -> None:
    factory = versioned_session(sessionmaker(engine))
    history_cls = history_class(model)

    def orm_all(at: dt.datetime) -> Callable[[], None]:
        def go() -> None:
            with factory() as session:
                past = as_of(model, at)
                rows = session.scalars(select(past)).all()
                assert len(rows) == LIVE, len(rows)

        return go

    def hand_all(at: dt.datetime, style: str) -> Callable[[], None]:
        sql = hand_written(model, style, one_key=False)

        def go() -> None:
            with factory() as session:
                statement = select(history_cls).from_statement(sa.text(sql).bindparams(at=at))
                rows = session.scalars(statement).all()
                assert len(rows) == LIVE, len(rows)

        return go

    keys = [1 + (i * 7919) % LIVE for i in range(200)]

    def orm_one(at: dt.datetime) -> Callable[[], None]:
        def go() -> None:
            with factory() as session:
                for k in keys:
                    past = as_of(model, at)
                    session.scalars(select(past).where(past.id == k)).one()

        return go

    def hand_one(at: dt.datetime, style: str) -> Callable[[], None]:
        sql = hand_written(model, style, one_key=True)

        def go() -> None:
            with factory() as session:
                for k in keys:
                    text = sa.text(sql).bindparams(at=at, k=k)
                    session.scalars(select(history_cls).from_statement(text)).one()

        return go

    whole_btree = hand_written(model, "btree", one_key=False)
    history_table: Any = sa.inspect(history_cls).local_table

    def aliased_one(at: dt.datetime) -> Callable[[], None]:
        # The hand-written SQL behind an aliased class, made afresh per query as an
        # API returning an aliased class must: what such an API costs at the least.
        def go() -> None:
            with factory() as session:
                for k in keys:
                    text = sa.text(whole_btree).bindparams(at=at)
                    past: Any = aliased(history_cls, text.columns(*history_table.c).subquery())
                    session.scalars(select(past).where(past.id == k)).one()

        return go

    for label, at in (("middle of the history", MIDDLE), ("after the last change", AFTER)):
        print(f"\n  case: whole table ({LIVE:,} rows) as of the {label}")
        results = interleave(
            {
                "hand-gist": hand_all(at, "gist"),
                "hand-btree": hand_all(at, "btree"),
                "as_of": orm_all(at),
            },
            rounds,
        )
        best = min(("hand-gist", "hand-btree"), key=lambda n: results[n].median)
        print(f"    (baseline: {best}, the faster hand-written query)")
        ordered = {best: results[best], **{k: v for k, v in results.items() if k != best}}
        print_results(ordered, best, targets={"as_of": TARGET}, unit="per query")

    print(f"\n  case: one key as of the middle of the history ({len(keys)} keys per sample)")
    results = interleave(
        {
            "hand-gist": hand_one(MIDDLE, "gist"),
            "hand-btree": hand_one(MIDDLE, "btree"),
            "hand-aliased": aliased_one(MIDDLE),
            "as_of": orm_one(MIDDLE),
        },
        rounds,
        per=len(keys),
    )
    best = min(("hand-gist", "hand-btree"), key=lambda n: results[n].median)
    print(f"    (baseline: {best}, the faster hand-written query)")
    ordered = {best: results[best], **{k: v for k, v in results.items() if k != best}}
    print_results(ordered, best, targets={"as_of": TARGET}, unit="per query")
    print(
        "    (hand-aliased: hand-btree's SQL as a text() subquery behind\n"
        "     sqlalchemy.orm.aliased(HistoryClass, ...), made per query: the least an API\n"
        "     that returns an aliased class can cost)"
    )
    print_results(
        {k: results[k] for k in ("hand-aliased", "as_of")}, "hand-aliased", unit="per query"
    )

    if show_plans:
        meta = meta_of(model)
        assert meta is not None
        for label, at in (("middle", MIDDLE), ("after", AFTER)):
            explain(engine, select(as_of_selectable(meta, at)), f"as_of, whole table, {label}")
        past = as_of(model, MIDDLE)
        explain(engine, select(past).where(past.id == 4242), "as_of, one key, middle")
        for style in ("gist", "btree"):
            text = sa.text(hand_written(model, style, one_key=False)).bindparams(at=MIDDLE)
            explain(engine, text, f"hand-{style}, whole table, middle")


def main() -> int:
    global LIVE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", default="psycopg2,psycopg", help="comma-separated drivers")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per case")
    parser.add_argument(
        "--live", type=int, default=LIVE, help="live rows (history: 100 versions each)"
    )
    parser.add_argument(
        "--range-index",
        action="store_true",
        help="the model sets __chrononaut_range_index__ = True (GiST index over the range)",
    )
    args = parser.parse_args()
    LIVE = args.live
    wanted = args.drivers.split(",")
    print(f"Chrononaut {chrononaut.__version__} time-travel benchmark")
    print(
        f"  {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, SQLAlchemy {sa.__version__}"
    )
    base, model = build_model(unique_suffix(), range_index=args.range_index)
    print(f"  __chrononaut_range_index__ = {args.range_index}")
    with scratch_database(database_url()) as (scratch_url, where):
        print(f"  tables in {where}")
        urls = {k: v for k, v in driver_urls(scratch_url).items() if k in wanted}
        setup = sa.create_engine(next(iter(urls.values())))
        try:
            with setup.connect() as conn:
                print(f"  {conn.exec_driver_sql('SELECT version()').scalar()}")
            base.metadata.create_all(setup)
            seed(setup, model)
            for n, (driver, url) in enumerate(urls.items()):
                engine = sa.create_engine(url)
                print(f"\n=== driver {driver} ===")
                try:
                    run(driver, engine, model, args.rounds, show_plans=n == 0)
                finally:
                    engine.dispose()
        finally:
            base.metadata.drop_all(setup)
            setup.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
