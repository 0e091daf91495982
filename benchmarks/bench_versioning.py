"""Benchmark: what history capture costs on the write paths, and how history reads scale.

Every case compares variants of the *same* model (same columns, same session
factory) measured side by side in one run, interleaved round by round; see
``benchmarks/README.md`` for how to read the output. Variants:

``plain``
    a plain declarative model, no ``version`` column, no Chrononaut.
``version_id_col``
    the plain model plus an integer ``version`` column as SQLAlchemy's own
    ``version_id_col`` (no Chrononaut): what optimistic version checking alone costs.
``versioned``
    ``chrononaut.Versioned``: history capture plus version checking, as shipped
    (plain updates use the one-statement UPDATE + history INSERT path).
``versioned-2stmt``
    the same Versioned model with a no-op ``before_update`` mapper listener, which
    makes Chrononaut fall back to SQLAlchemy's UPDATE + one history INSERT per
    flush: shows whether the one-statement path pays off on each driver.

Run it with ``.venv/bin/python benchmarks/bench_versioning.py [--big]``. It reports
only (no assertions) and exits 0.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import itertools
import json
import platform
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    TIMES,
    StatementCounter,
    count_statements,
    driver_urls,
    fmt_time,
    interleave,
    print_results,
    scratch_database,
    unique_suffix,
)

import chrononaut
from _devdb import (
    database_url,
    describe_database,
)
from chrononaut import Versioned, history_class, versioned_session

ROWS = 1000  # live rows per table
BATCH = 100  # rows per flush in case 2
BULK = 1000  # rows per ORM bulk UPDATE in case 4

BIG_RECORDS = 100  # --big: records in the big history table ...
BIG_VERSIONS = 10_000  # ... with this many versions each (1,000,000 history rows)
BIG_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


# -- models -------------------------------------------------------------------------


def history_of(model: type[Any]) -> Any:
    """The mapped history class of ``model`` (typed loosely: its attributes are dynamic)."""
    return history_class(model)


def _no_op_listener(mapper: Any, connection: Any, target: Any) -> None:
    """A mapper listener doing nothing: its presence turns the one-statement path off."""


def build_models(suffix: str) -> tuple[type[DeclarativeBase], dict[str, type[Any]]]:
    """Four models with the same columns in uniquely named tables (see module doc)."""

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = f"bv_plain_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class VidOnly(Base):
        __tablename__ = f"bv_vid_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)
        version: Mapped[int] = mapped_column(server_default=sa.text("0"))
        __mapper_args__ = {"version_id_col": version}

    class Rec(Base, Versioned):
        __tablename__ = f"bv_ver_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class RecTwoStatements(Base, Versioned):
        __tablename__ = f"bv_ver2_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    class RecHandWritten(Base, Versioned):
        """Written only by hand-written SQL (the reference variants of cases 2 and 4)."""

        __tablename__ = f"bv_hand_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    event.listen(RecTwoStatements, "before_update", _no_op_listener)
    models = {
        "plain": Plain,
        "version_id_col": VidOnly,
        "versioned": Rec,
        "versioned-2stmt": RecTwoStatements,
        "hand-written": RecHandWritten,
    }
    return Base, models


def build_big_model(suffix: str) -> tuple[type[DeclarativeBase], type[Any]]:
    class BigBase(DeclarativeBase):
        pass

    class Big(BigBase, Versioned):
        __tablename__ = f"bv_big_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        n: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))
        note: Mapped[str | None] = mapped_column(sa.Text)

    return BigBase, Big


def reset_data(engine: sa.Engine, base: type[DeclarativeBase]) -> None:
    """Every live table back to ROWS fresh rows at version 0, history tables empty."""
    tables = list(base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE " + ", ".join(f'"{t.name}"' for t in tables))
        for table in tables:
            if table.name.endswith("_history"):
                continue
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" (id, n, name, note) '
                f"SELECT g, 0, 'row ' || g, 'some text that stays the same' "
                f"FROM generate_series(1, {ROWS}) g"
            )
        for table in tables:
            conn.exec_driver_sql(f'ANALYZE "{table.name}"')


# -- cases --------------------------------------------------------------------------

Op = Callable[[], "float | None"]


def one_row_transaction(factory: sessionmaker[Any], model: type[Any]) -> Op:
    ids = itertools.cycle(range(1, ROWS + 1))

    def op() -> None:
        pk = next(ids)
        with factory() as session:
            record = session.get(model, pk)
            record.n = record.n + 1
            session.commit()

    return op


def batch_flush(factory: sessionmaker[Any], model: type[Any]) -> Op:
    starts = itertools.cycle(range(1, ROWS + 1, BATCH))

    def op() -> float:
        lo = next(starts)
        with factory() as session:
            records = session.scalars(
                select(model).where(model.id >= lo, model.id < lo + BATCH)
            ).all()
            # Only the change + flush + commit is timed: the load is the same for all.
            start = time.perf_counter()
            for record in records:
                record.n = record.n + 1
            session.commit()
            return time.perf_counter() - start

    return op


def _change_info_json() -> str:
    # What Chrononaut writes outside a request with no extra info, built per row
    # as a library would.
    return json.dumps({"user_id": None, "remote_addr": None})


def hand_written_batch(factory: sessionmaker[Any], model: type[Any]) -> Op:
    """Reference for case 2: the same load and change, written by one hand-written
    statement that takes the rows as arrays (``unnest``): version-checked UPDATE
    plus history INSERT copied from the stored rows, constant SQL text whatever
    the number of rows."""
    table = model.__table__.name
    history = history_of(model).__table__.name
    statement = sa.text(
        f"WITH v AS (SELECT * FROM unnest(CAST(:ids AS INTEGER[]), CAST(:vs AS INTEGER[]), "
        f"CAST(:ns AS INTEGER[]), CAST(:cis AS JSONB[])) AS v(k, v, s, ci)), "
        f"h AS (INSERT INTO {history} (id, n, name, note, version, changed, change_info) "
        f"SELECT t.id, t.n, t.name, t.note, t.version, CAST(:changed AS TIMESTAMPTZ), v.ci "
        f"FROM {table} t JOIN v ON t.id = v.k AND t.version = v.v ON CONFLICT DO NOTHING) "
        f"UPDATE {table} SET n = v.s, version = v.v + 1 FROM v "
        f"WHERE {table}.id = v.k AND {table}.version = v.v RETURNING {table}.id"
    )
    starts = itertools.cycle(range(1, ROWS + 1, BATCH))

    def op() -> float:
        lo = next(starts)
        with factory() as session:
            records = session.scalars(
                select(model).where(model.id >= lo, model.id < lo + BATCH)
            ).all()
            start = time.perf_counter()
            params: dict[str, Any] = {
                "ids": [r.id for r in records],
                "vs": [r.version for r in records],
                "ns": [r.n + 1 for r in records],
                "cis": [_change_info_json() for _ in records],
                "changed": dt.datetime.now(dt.timezone.utc),
            }
            written = session.execute(statement, params).all()
            if len(written) != len(records):
                print("    (hand-written: stale rows?)")
            session.commit()
            return time.perf_counter() - start

    return op


def hand_written_bulk(factory: sessionmaker[Any], model: type[Any]) -> Op:
    """Reference for case 4: the bulk UPDATE with history in one statement. The rows
    are locked and read in a CTE, history rows are copied for those whose tracked
    values change, and the version is bumped for exactly those."""
    table = model.__table__.name
    history = history_of(model).__table__.name
    statement = sa.text(
        f"WITH old AS (SELECT * FROM {table} WHERE id <= :bulk FOR UPDATE), "
        f"h AS (INSERT INTO {history} (id, n, name, note, version, changed, change_info) "
        f"SELECT old.id, old.n, old.name, old.note, old.version, "
        f"CAST(:changed AS TIMESTAMPTZ), CAST(:ci AS JSONB) "
        f"FROM old WHERE (old.n + 1) IS DISTINCT FROM old.n) "
        f"UPDATE {table} SET n = old.n + 1, version = CASE WHEN (old.n + 1) IS DISTINCT "
        f"FROM old.n THEN old.version + 1 ELSE old.version END "
        f"FROM old WHERE {table}.id = old.id"
    )

    def op() -> None:
        with factory() as session:
            session.execute(
                statement,
                {
                    "bulk": BULK,
                    "changed": dt.datetime.now(dt.timezone.utc),
                    "ci": _change_info_json(),
                },
            )
            session.commit()

    return op


def bulk_update(factory: sessionmaker[Any], model: type[Any]) -> Op:
    def op() -> None:
        with factory() as session:
            session.execute(update(model).where(model.id <= BULK).values(n=model.n + 1))
            session.commit()

    return op


def statement_report(
    engine: sa.Engine, ops: dict[str, Op], *, per_flush_tables: int = 1
) -> dict[str, StatementCounter]:
    counters = {name: count_statements(engine, op) for name, op in ops.items()}
    width = max(len(name) for name in counters)
    print("    SQL statements per operation (before_cursor_execute on this engine):")
    for name, counter in counters.items():
        print(f"      {name:<{width}}  {counter.summary()}")
    return counters


def capture_verdict(counters: dict[str, StatementCounter], *, what: str) -> None:
    """Print whether history capture stayed within one statement and no extra SELECT."""
    plain = counters["plain"]
    vid = counters["version_id_col"]
    for name in ("versioned", "versioned-2stmt"):
        if name not in counters:
            continue
        ver = counters[name]
        extra_selects = ver.kinds["SELECT"] - plain.kinds["SELECT"]
        extra_statements = sum(ver.kinds.values()) - sum(vid.kinds.values())
        history_writes = ver.kinds["INSERT"] + ver.kinds["UPDATE+INSERT"]
        ok = extra_selects <= 0 and extra_statements <= 1 and history_writes <= 1
        print(
            f"      -> {name}: {extra_selects:+d} SELECT vs plain, {extra_statements:+d} "
            f"statements vs version_id_col, {history_writes} statement(s) writing history "
            f"per {what}: {'within' if ok else 'OUTSIDE'} 'at most one statement per flush "
            f"per table, no extra SELECT'"
        )


def run_write_cases(
    driver: str,
    engine: sa.Engine,
    factory: sessionmaker[Any],
    base: type[DeclarativeBase],
    models: dict[str, type[Any]],
    args: argparse.Namespace,
    summary: dict[tuple[str, str], dict[str, float]],
) -> None:
    scale = args.scale
    if "1" in args.cases:
        reset_data(engine, base)
        rounds = max(5, int(1000 * scale))
        print("\n  case 1: 1-row update transaction (new session, get, change one column, commit)")
        print(f"    {rounds} interleaved rounds")
        ops = {
            name: one_row_transaction(factory, m)
            for name, m in models.items()
            if name != "hand-written"
        }
        counters = statement_report(engine, ops)
        capture_verdict(counters, what="flush")
        results = interleave(ops, rounds, warmup=10)
        summary[(driver, "1")] = print_results(
            results, "plain", targets={"versioned": 1.20}, unit="per tx"
        )
        fast_verdict(results)

    if "2" in args.cases:
        reset_data(engine, base)
        rounds = max(5, int(100 * scale))
        print(
            f"\n  case 2: {BATCH}-row flush (load {BATCH} rows, change one column on each, "
            f"commit; change+flush+commit timed, per row)"
        )
        print(f"    {rounds} interleaved rounds")
        ops = {
            name: (hand_written_batch if name == "hand-written" else batch_flush)(factory, m)
            for name, m in models.items()
        }
        counters = statement_report(engine, ops)
        capture_verdict(counters, what="flush")
        results = interleave(ops, rounds, warmup=3, per=BATCH)
        summary[(driver, "2")] = print_results(
            results, "plain", targets={"versioned": 1.40}, unit="per row"
        )
        fast_verdict(results)

    if "4" in args.cases:
        reset_data(engine, base)
        rounds = max(5, int(30 * scale))
        print(
            f"\n  case 4: ORM bulk statement: session.execute(update(M).where(M.id <= {BULK})"
            f".values(n=M.n + 1)) + commit, {BULK} rows"
        )
        print(f"    {rounds} interleaved rounds")
        bulk_models = {k: v for k, v in models.items() if k != "versioned-2stmt"}
        ops = {
            name: (hand_written_bulk if name == "hand-written" else bulk_update)(factory, m)
            for name, m in bulk_models.items()
        }
        statement_report(engine, ops)
        print(
            "      (version_id_col: SQLAlchemy neither checks nor bumps the version in "
            "bulk statements)"
        )
        results = interleave(ops, rounds, warmup=2)
        summary[(driver, "4")] = print_results(results, "plain", unit="per stmt")
        per_row = results["versioned"].median / BULK
        print(f"    versioned: {fmt_time(per_row).strip()} per row")


def fast_verdict(results: dict[str, Any]) -> None:
    fast = results["versioned"].median
    slow = results["versioned-2stmt"].median
    change = (slow - fast) / slow * 100
    word = "faster" if fast < slow else "slower"
    print(
        f"    one-statement path: versioned {fmt_time(fast).strip()} vs two statements "
        f"{fmt_time(slow).strip()}: {abs(change):.0f} % {word}"
    )


# -- case 5: reading a long history --------------------------------------------------


def seed_big(engine: sa.Engine, big_base: type[DeclarativeBase], big: type[Any]) -> None:
    table = big.__table__
    history = history_of(big).__table__
    print(
        f"    seeding {BIG_RECORDS} records x {BIG_VERSIONS:,} versions = "
        f"{BIG_RECORDS * BIG_VERSIONS:,} history rows ...",
        end="",
        flush=True,
    )
    start = time.perf_counter()
    big_base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'INSERT INTO "{table.name}" (id, n, name, note, version) '
            f"SELECT g, {BIG_VERSIONS}, 'record ' || g, 'note', {BIG_VERSIONS} "
            f"FROM generate_series(1, {BIG_RECORDS}) g"
        )
        # Versions outer, records inner: the way history really arrives (a record's
        # versions interleaved with everyone else's), so its rows are spread over
        # the heap, not packed together.
        conn.exec_driver_sql(
            f'INSERT INTO "{history.name}" (id, n, name, note, version, changed, change_info) '
            f"SELECT r, v, 'record ' || r, 'note', v, "
            f"timestamptz '{BIG_EPOCH.isoformat()}' + v * interval '1 minute' "
            f"+ r * interval '1 millisecond', "
            f"""'{{"user_id": "7", "remote_addr": "10.0.0.1"}}'::jsonb """
            f"FROM generate_series(0, {BIG_VERSIONS - 1}) v "
            f"CROSS JOIN generate_series(1, {BIG_RECORDS}) r ORDER BY v, r"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'VACUUM ANALYZE "{history.name}"')
        conn.exec_driver_sql(f'ANALYZE "{table.name}"')
    print(f" {time.perf_counter() - start:.1f} s")


def explain(engine: sa.Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
        ).all()
    return "\n".join(row[0] for row in rows)


def print_plan(engine: sa.Engine, label: str, statement: str, parameters: Any) -> None:
    plan = explain(engine, statement, parameters)
    scan = "Seq Scan present!" if "Seq Scan" in plan else "index-backed, no Seq Scan"
    print(f"    EXPLAIN ANALYZE {label}: {scan}")
    for line in plan.splitlines():
        print(f"      | {line}")


def generic_plan(engine: sa.Engine, history: sa.Table) -> None:
    """psycopg 3 prepares a statement after 5 executions; PostgreSQL may then use a
    generic plan (parameters unknown). Show that one too, for version_at()."""
    name = f"chrononaut_bench_{unique_suffix()}"
    sql = f'SELECT * FROM "{history.name}" WHERE id = $1 AND changed > $2 ORDER BY version LIMIT $3'
    with engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE {name}(int, timestamptz, int) AS {sql}")
        at = BIG_EPOCH + dt.timedelta(minutes=BIG_VERSIONS // 2)
        rows = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE {name}(1, '{at.isoformat()}', 1)"
        ).all()
        conn.exec_driver_sql(f"DEALLOCATE {name}")
        conn.exec_driver_sql("RESET plan_cache_mode")
        conn.rollback()
    plan = "\n".join(row[0] for row in rows)
    scan = "Seq Scan present!" if "Seq Scan" in plan else "index-backed, no Seq Scan"
    print(f"    EXPLAIN ANALYZE version_at() as a generic (prepared) plan: {scan}")
    for line in plan.splitlines():
        print(f"      | {line}")


def run_big_case(
    driver: str,
    engine: sa.Engine,
    factory: sessionmaker[Any],
    big: type[Any],
    args: argparse.Namespace,
    show_plans: bool,
    summary: dict[tuple[str, str], dict[str, float]],
) -> None:
    history_cls = history_of(big)
    history = history_cls.__table__
    rid = BIG_RECORDS // 2
    rounds = max(3, int(15 * args.scale))
    print(
        f"\n  case 5: reading a record with {BIG_VERSIONS:,} versions in a history table of "
        f"{BIG_RECORDS * BIG_VERSIONS:,} rows ({rounds} interleaved rounds, fresh session "
        f"each, only the read timed)"
    )

    def timed_read(read: Callable[[Any, Any], Any]) -> Op:
        def op() -> float:
            with factory() as session:
                record = session.get(big, rid)
                start = time.perf_counter()
                read(session, record)
                return time.perf_counter() - start

        return op

    def api_versions(session: Any, record: Any) -> Any:
        return record.versions()

    def orm_versions(session: Any, record: Any) -> Any:
        return session.scalars(
            select(history_cls).where(history_cls.id == rid).order_by(history_cls.version)
        ).all()

    def core_versions(session: Any, record: Any) -> Any:
        return session.execute(
            select(history).where(history.c.id == rid).order_by(history.c.version)
        ).all()

    # The same history table mapped by an ordinary class: shows what the history
    # class itself costs per loaded record, apart from the query.
    class PlainHistoryRow:
        pass

    sa.orm.registry().map_imperatively(PlainHistoryRow, history)

    def plain_class_versions(session: Any, record: Any) -> Any:
        return session.scalars(
            select(PlainHistoryRow).where(history.c.id == rid).order_by(history.c.version)
        ).all()

    ops = {
        "hand-written ORM select": timed_read(orm_versions),
        "record.versions()": timed_read(api_versions),
        "same, plain mapped class": timed_read(plain_class_versions),
        "hand-written Core select": timed_read(core_versions),
    }
    print(f"    versions() -> {BIG_VERSIONS:,} history records")
    results = interleave(ops, rounds, warmup=1)
    summary[(driver, "5 versions")] = print_results(
        results, "hand-written ORM select", unit="per call"
    )

    positions = {
        "1 % into the history": BIG_VERSIONS // 100,
        "50 %": BIG_VERSIONS // 2,
        "99 %": BIG_VERSIONS * 99 // 100,
        "after the last change (returns the record)": BIG_VERSIONS + 10,
    }
    for label, minutes in positions.items():
        at = BIG_EPOCH + dt.timedelta(minutes=minutes, seconds=30)

        def api_at(session: Any, record: Any, at: dt.datetime = at) -> Any:
            return record.version_at(at)

        def orm_at(session: Any, record: Any, at: dt.datetime = at) -> Any:
            found = session.scalars(
                select(history_cls)
                .where(history_cls.id == rid, history_cls.changed > at)
                .order_by(history_cls.version)
                .limit(1)
            ).first()
            return record if found is None else found

        ops = {
            "hand-written ORM select": timed_read(orm_at),
            "record.version_at(t)": timed_read(api_at),
        }
        print(f"    version_at(t), t {label}")
        results = interleave(ops, max(5, rounds * 4), warmup=2)
        summary[(driver, f"5 version_at {label}")] = print_results(
            results, "hand-written ORM select", unit="per call"
        )

    if show_plans:
        with factory() as session:
            record = session.get(big, rid)
            with StatementCounter(engine) as counter:
                record.versions()
            statement, params = counter.statements[-1]
            print_plan(engine, "of versions()", statement, params)
            at = BIG_EPOCH + dt.timedelta(minutes=BIG_VERSIONS // 2, seconds=30)
            with StatementCounter(engine) as counter:
                record.version_at(at)
            statement, params = counter.statements[-1]
            print_plan(engine, "of version_at(t at 50 %)", statement, params)
            at = BIG_EPOCH + dt.timedelta(minutes=BIG_VERSIONS + 10)
            with StatementCounter(engine) as counter:
                record.version_at(at)
            statement, params = counter.statements[-1]
            print_plan(engine, "of version_at(t after the last change)", statement, params)
        generic_plan(engine, history)


def index_experiment(engine: sa.Engine, factory: sessionmaker[Any], big: type[Any]) -> None:
    """What an index on (key, changed) would do for version_at() (a suggestion, not
    something Chrononaut creates): run after the main comparison, then dropped."""
    history_cls = history_of(big)
    history = history_cls.__table__
    rid = BIG_RECORDS // 2
    index = f"{history.name}_changed_idx"
    print(
        f"\n  case 5b (reference): version_at() with an extra index on ({history.name}.id, "
        f"changed), {engine.dialect.driver}"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE INDEX "{index}" ON "{history.name}" (id, changed)')
        conn.exec_driver_sql(f'ANALYZE "{history.name}"')
    try:
        for label, minutes in {
            "1 %": BIG_VERSIONS // 100,
            "50 %": BIG_VERSIONS // 2,
            "after the last change": BIG_VERSIONS + 10,
        }.items():
            at = BIG_EPOCH + dt.timedelta(minutes=minutes, seconds=30)

            def api_at(at: dt.datetime = at) -> float:
                with factory() as session:
                    record = session.get(big, rid)
                    start = time.perf_counter()
                    record.version_at(at)
                    return time.perf_counter() - start

            def by_changed(at: dt.datetime = at) -> float:
                with factory() as session:
                    session.get(big, rid)
                    start = time.perf_counter()
                    session.scalars(
                        select(history_cls)
                        .where(history_cls.id == rid, history_cls.changed > at)
                        .order_by(history_cls.changed, history_cls.version)
                        .limit(1)
                    ).first()
                    return time.perf_counter() - start

            print(f"    version_at(t), t {label}")
            results = interleave(
                {"record.version_at(t)": api_at, "ORDER BY changed, version": by_changed},
                40,
                warmup=2,
            )
            print_results(results, "record.version_at(t)", unit="per call")
        with factory() as session:
            record = session.get(big, rid)
            at = BIG_EPOCH + dt.timedelta(minutes=BIG_VERSIONS // 2, seconds=30)
            with StatementCounter(engine) as counter:
                record.version_at(at)
            statement, params = counter.statements[-1]
            print_plan(engine, "of version_at(t at 50 %) with the extra index", statement, params)
            with StatementCounter(engine) as counter:
                session.scalars(
                    select(history_cls)
                    .where(history_cls.id == rid, history_cls.changed > at)
                    .order_by(history_cls.changed, history_cls.version)
                    .limit(1)
                ).first()
            statement, params = counter.statements[-1]
            print_plan(engine, "of ORDER BY changed, version (t at 50 %)", statement, params)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{index}"')


# -- profiling ----------------------------------------------------------------------


def profile(label: str, op: Op, n: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        op()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    print(f"\n  --- profile: {label}, {n} operations ---")
    print(out.getvalue())


# -- main ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--big",
        action="store_true",
        help="also run case 5 (seeds a 1,000,000-row history table; a few minutes)",
    )
    parser.add_argument(
        "--cases", default="1,2,4", help="comma-separated write cases to run (default 1,2,4)"
    )
    parser.add_argument(
        "--drivers", default="psycopg2,psycopg", help="comma-separated drivers (default both)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the number of rounds (default 1)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print cProfile output for cases 1 and 2"
    )
    args = parser.parse_args()
    args.cases = set(args.cases.split(","))
    wanted = args.drivers.split(",")

    began = time.perf_counter()
    url = database_url()
    print(f"Chrononaut {chrononaut.__version__} versioning benchmark")
    print(
        f"  {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, SQLAlchemy {sa.__version__}, {platform.machine()}, "
        f"{_cpu_count()} CPUs"
    )
    print(f"  {describe_database()}")
    suffix = unique_suffix()
    base, models = build_models(suffix)
    big_base, big = build_big_model(suffix) if args.big else (None, None)
    summary: dict[tuple[str, str], dict[str, float]] = {}

    with scratch_database(url) as (scratch_url, where):
        print(f"  tables in {where}")
        urls = {k: v for k, v in driver_urls(scratch_url).items() if k in wanted}
        setup_engine = sa.create_engine(next(iter(urls.values())))
        try:
            with setup_engine.connect() as conn:
                print(f"  {conn.exec_driver_sql('SELECT version()').scalar()}")
            base.metadata.create_all(setup_engine)
            if big_base is not None and big is not None:
                seed_big(setup_engine, big_base, big)
            for n, (driver, driver_url) in enumerate(urls.items()):
                engine = sa.create_engine(driver_url)
                # One factory for every variant: unversioned models pay for the
                # listeners being there, as in an app that versions some models.
                factory = versioned_session(sessionmaker(engine))
                print(f"\n=== driver {driver} ({engine.dialect.driver}) ===")
                try:
                    run_write_cases(driver, engine, factory, base, models, args, summary)
                    if big is not None:
                        run_big_case(driver, engine, factory, big, args, n == 0, summary)
                    if args.profile:
                        reset_data(engine, base)
                        for name in ("plain", "versioned"):
                            profile(
                                f"{driver} case 1 {name}",
                                one_row_transaction(factory, models[name]),
                                300,
                            )
                            profile(
                                f"{driver} case 2 {name}", batch_flush(factory, models[name]), 30
                            )
                finally:
                    engine.dispose()
            if big is not None:
                engine = sa.create_engine(next(iter(urls.values())))
                try:
                    index_experiment(engine, versioned_session(sessionmaker(engine)), big)
                finally:
                    engine.dispose()
        finally:
            try:
                base.metadata.drop_all(setup_engine)
                if big_base is not None:
                    big_base.metadata.drop_all(setup_engine)
            finally:
                setup_engine.dispose()

    print("\n=== summary: ratio of medians against the baseline ===")
    for (driver, case), ratios in summary.items():
        shown = ", ".join(f"{k} {v:.2f}{TIMES}" for k, v in ratios.items())
        print(f"  {driver:<8} case {case}: {shown}")
    print(f"\n(total {time.perf_counter() - began:.0f} s)")
    return 0


def _cpu_count() -> int | str:
    import os

    return os.cpu_count() or "?"


if __name__ == "__main__":
    sys.exit(main())
