"""Benchmark: ORM bulk UPDATE / DELETE statements on a Versioned model.

Variants of the same columns, measured side by side in one run, interleaved round
by round (see ``benchmarks/README.md``):

``plain``
    a plain declarative model, no ``version`` column, no Chrononaut.
``versioned``
    ``chrononaut.Versioned``: the ORM statement as shipped (history rows and
    version bumps written by the statement itself).
``floor``
    the same Versioned table written by one hand-written statement that locks the
    rows, applies the UPDATE, bumps ``version`` where a tracked value changed and
    inserts the prior states into the history table (change_info sent once as one
    JSON value): the least a design writing history in the database can cost.

Cases (all per statement + commit, on a table of live rows with an index on the key):

1. ``update(M).where(M.id <= 5000).values(n=M.n + 1)``: versioned vs plain (target
   ≤ 3.0x) and vs the floor (target ≤ 1.15x).
2. ``delete(M).where(M.id <= 5000)``: versioned vs plain (target ≤ 3.0x). The rows
   are put back between rounds, untimed. ``floor-pk-only`` runs the floor's
   statement on a history table that keeps only its primary key (no secondary
   index): the cost of writing the history rows themselves.
3. The versioned UPDATE of 1,000 / 10,000 (/ 100,000 with ``--big``) rows: time
   per row, which stays flat when the cost grows linearly.
4. ``EXPLAIN ANALYZE`` of the statement Chrononaut sends for 10,000 rows.

Run it with ``.venv/bin/python benchmarks/bench_bulk.py [--big] [--rounds N]``. It
reports only (no assertions) and exits 0. The machine is shared and noisy: read
the ratios (and the paired ratios), not the absolute times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import delete, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    StatementCounter,
    driver_urls,
    fmt_time,
    interleave,
    print_results,
    scratch_database,
    unique_suffix,
)

from chrononaut import Versioned, history_class, versioned_session
from chrononaut.testing import database_url, describe_database

BULK = 5000
SIZES = (1000, 10_000)
BIG = 100_000

Op = Callable[[], "float | None"]


def build_models(suffix: str) -> tuple[type[DeclarativeBase], dict[str, type[Any]]]:
    """The three models of the module doc, in uniquely named tables."""

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = f"bb_plain_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class Rec(Base, Versioned):
        __tablename__ = f"bb_ver_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class Floor(Base, Versioned):
        """Written only by the hand-written statement."""

        __tablename__ = f"bb_floor_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class Bare(Base, Versioned):
        """Written only by the hand-written statement; its history table keeps only
        its primary key (the secondary indexes are dropped after create_all)."""

        __tablename__ = f"bb_bare_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    return Base, {"plain": Plain, "versioned": Rec, "floor": Floor, "bare": Bare}


def drop_secondary_indexes(engine: sa.Engine, model: type[Any]) -> None:
    """Leave ``model``'s history table with its primary key only."""
    history: Any = history_class(model)
    with engine.begin() as conn:
        for index in history.__table__.indexes:
            index.drop(conn)


def history_table(model: type[Any]) -> str:
    """The name of ``model``'s history table."""
    history: Any = history_class(model)
    return str(history.__table__.name)


def fill(engine: sa.Engine, model: type[Any], rows: int) -> None:
    """``rows`` fresh rows at version 0, the history table (if any) emptied."""
    table = model.__table__
    names = [table.name]
    if hasattr(model, "__history_mapper__"):
        names.append(history_table(model))
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE " + ", ".join(f'"{n}"' for n in names))
        conn.exec_driver_sql(
            f'INSERT INTO "{table.name}" (id, n, name, note) '
            f"SELECT g, 0, 'row ' || g, 'some text that stays the same' "
            f"FROM generate_series(1, {rows}) g"
        )
        for name in names:
            conn.exec_driver_sql(f'ANALYZE "{name}"')


def put_back(engine: sa.Engine, model: type[Any], rows: int) -> None:
    """Re-insert the rows a DELETE removed (untimed), at version 0 with no history."""
    table = model.__table__.name
    with engine.begin() as conn:
        if hasattr(model, "__history_mapper__"):
            conn.exec_driver_sql(f'TRUNCATE "{history_table(model)}"')
        conn.exec_driver_sql(
            f'INSERT INTO "{table}" (id, n, name, note) '
            f"SELECT g, 0, 'row ' || g, 'some text that stays the same' "
            f"FROM generate_series(1, {rows}) g ON CONFLICT DO NOTHING"
        )


def orm_update(factory: sessionmaker[Any], model: type[Any], rows: int) -> Op:
    def op() -> None:
        with factory() as session:
            session.execute(update(model).where(model.id <= rows).values(n=model.n + 1))
            session.commit()

    return op


def floor_update(factory: sessionmaker[Any], model: type[Any], rows: int) -> Op:
    """The hand-written one-statement floor (see the module doc)."""
    table = model.__table__.name
    history = history_table(model)
    # valid_from: copied into the history row, and set to the change's instant where
    # the version is bumped, as Chrononaut does.
    statement = sa.text(
        f"WITH old AS (SELECT * FROM {table} WHERE id <= :rows FOR UPDATE), "
        f"h AS (INSERT INTO {history} "
        f"(id, n, name, note, version, valid_from, changed, change_info) "
        f"SELECT old.id, old.n, old.name, old.note, old.version, old.valid_from, "
        f"CAST(:changed AS TIMESTAMPTZ), CAST(:ci AS JSONB) "
        f"FROM old WHERE (old.n + 1) IS DISTINCT FROM old.n) "
        f"UPDATE {table} SET n = old.n + 1, version = CASE WHEN (old.n + 1) IS DISTINCT "
        f"FROM old.n THEN old.version + 1 ELSE old.version END, "
        f"valid_from = CASE WHEN (old.n + 1) IS DISTINCT FROM old.n "
        f"THEN CAST(:changed AS TIMESTAMPTZ) ELSE old.valid_from END "
        f"FROM old WHERE {table}.id = old.id"
    )
    info = json.dumps({"user_id": None, "remote_addr": None})

    def op() -> None:
        with factory() as session:
            session.execute(
                statement,
                {"rows": rows, "changed": dt.datetime.now(dt.timezone.utc), "ci": info},
            )
            session.commit()

    return op


def orm_delete(engine: sa.Engine, factory: sessionmaker[Any], model: type[Any]) -> Op:
    def op() -> float:
        put_back(engine, model, BULK)
        with factory() as session:
            start = time.perf_counter()
            session.execute(delete(model).where(model.id <= BULK))
            session.commit()
            return time.perf_counter() - start

    return op


def floor_delete(engine: sa.Engine, factory: sessionmaker[Any], model: type[Any]) -> Op:
    """The least a DELETE with history can cost: the deleted rows, as RETURNING gives
    them, copied into the history table by the same statement (no separate lock)."""
    table = model.__table__.name
    history = history_table(model)
    statement = sa.text(
        f"WITH d AS (DELETE FROM {table} WHERE id <= :rows RETURNING *) "
        f"INSERT INTO {history} (id, n, name, note, version, valid_from, changed, change_info) "
        f"SELECT d.id, d.n, d.name, d.note, d.version, d.valid_from, "
        f"CAST(:changed AS TIMESTAMPTZ), "
        f"CAST(:ci AS JSONB) FROM d"
    )
    info = json.dumps({"user_id": None, "remote_addr": None, "deleted": True})

    def op() -> float:
        put_back(engine, model, BULK)
        with factory() as session:
            start = time.perf_counter()
            session.execute(
                statement,
                {"rows": BULK, "changed": dt.datetime.now(dt.timezone.utc), "ci": info},
            )
            session.commit()
            return time.perf_counter() - start

    return op


def statements_of(engine: sa.Engine, op: Op) -> str:
    with StatementCounter(engine) as counter:
        op()
    return counter.summary()


def explain(engine: sa.Engine, factory: sessionmaker[Any], model: type[Any], rows: int) -> None:
    """Print EXPLAIN ANALYZE of what Chrononaut sends for a bulk UPDATE of ``rows`` rows."""
    with StatementCounter(engine) as counter, factory() as session:
        session.execute(update(model).where(model.id <= rows).values(n=model.n + 1))
        session.rollback()
    sql, params = counter.statements[-1]
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, params)
        for (line,) in plan:
            print(f"      {line}")
        conn.rollback()


def run_driver(driver: str, url: sa.URL, args: argparse.Namespace) -> None:
    print(f"\n== driver {driver}")
    engine = sa.create_engine(url)
    factory = versioned_session(sessionmaker(engine))
    base, models = build_models(unique_suffix())
    base.metadata.create_all(engine)
    drop_secondary_indexes(engine, models["bare"])
    try:
        rounds = args.rounds
        print(
            f"\n  case 1: session.execute(update(M).where(M.id <= {BULK}).values(n=M.n + 1))"
            f" + commit; {rounds} interleaved rounds"
        )
        for model in models.values():
            fill(engine, model, BULK)
        ops = {
            "plain": orm_update(factory, models["plain"], BULK),
            "versioned": orm_update(factory, models["versioned"], BULK),
            "floor": floor_update(factory, models["floor"], BULK),
        }
        for name, op in ops.items():
            print(f"    statements, {name}: {statements_of(engine, op)}")
        results = interleave(ops, rounds, warmup=2)
        print_results(results, "plain", targets={"versioned": 3.0}, unit="per stmt")
        floor = {k: results[k] for k in ("floor", "versioned")}
        print_results(floor, "floor", targets={"versioned": 1.15}, unit="per stmt")

        print(f"\n  case 2: session.execute(delete(M).where(M.id <= {BULK})) + commit")
        del_ops = {
            "plain": orm_delete(engine, factory, models["plain"]),
            "versioned": orm_delete(engine, factory, models["versioned"]),
            "floor": floor_delete(engine, factory, models["floor"]),
            "floor-pk-only": floor_delete(engine, factory, models["bare"]),
        }
        for name in del_ops:
            print(
                f"    statements, {name} (with the untimed re-insert): "
                f"{statements_of(engine, del_ops[name])}"
            )
        results = interleave(del_ops, rounds, warmup=2)
        print_results(results, "plain", targets={"versioned": 3.0}, unit="per stmt")
        floor = {k: results[k] for k in ("floor", "versioned")}
        print_results(floor, "floor", unit="per stmt")
        print(
            "    (floor-pk-only: the floor's statement on a history table without the "
            "secondary indexes,\n     only its primary key: what writing the history "
            "rows costs at the least)"
        )

        sizes = (*SIZES, BIG) if args.big else SIZES
        print(f"\n  case 3: versioned bulk UPDATE, rows {', '.join(f'{s:,}' for s in sizes)}")
        model = models["versioned"]
        fill(engine, model, max(sizes))
        size_rounds = max(3, rounds // 3)
        per_row: dict[int, float] = {}
        for size in sizes:
            op = orm_update(factory, model, size)
            result = interleave({"versioned": op}, size_rounds, warmup=1)["versioned"]
            per_row[size] = result.median / size
            print(
                f"    {size:>7,} rows: {fmt_time(result.median)} per statement, "
                f"{fmt_time(per_row[size])} per row"
            )
        smallest = per_row[sizes[0]]
        growth = ", ".join(f"{s:,}: {per_row[s] / smallest:.2f}" for s in sizes)
        print(f"    per-row cost relative to {sizes[0]:,} rows: {growth} (flat = linear)")

        print("\n  case 4: EXPLAIN ANALYZE of the statement sent for 10,000 rows")
        explain(engine, factory, model, 10_000)
    finally:
        base.metadata.drop_all(engine)
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="add the 100,000-row size")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case")
    args = parser.parse_args()
    print("ORM bulk statements on a Versioned model")
    print(f"  {describe_database()}")
    with scratch_database(database_url()) as (scratch_url, where):
        print(f"  {where}")
        for driver, url in driver_urls(scratch_url).items():
            run_driver(driver, url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
