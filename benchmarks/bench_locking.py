"""Benchmark: the cost of Chrononaut's locking over hand-written SQLAlchemy.

Issue 3, item 10. Two comparisons on a ``Versioned`` record, each pair measured
interleaved in one run (rounds alternate the two sides, the median per-operation
time of each side is compared):

- ``with rec.lock(): rec.n += 1`` vs ``session.refresh(rec, with_for_update=True)``,
  ``rec.n += 1``, ``session.commit()`` (target <= 1.15x);
- ``with advisory_lock(key): pass`` vs ``session.execute(text("SELECT
  pg_advisory_xact_lock(:k)"))`` + ``session.commit()`` (target <= 1.20x).

It also counts the statements each side sends (psycopg2 sends its implicit
BEGIN outside the cursor, for both sides alike). Usage::

    python benchmarks/bench_locking.py [--driver psycopg2|psycopg] [--rounds 30] [--ops 50]

The database comes from _devdb (DATABASE_URL, a local server, or the
embedded one); the benchmark works in a scratch database it creates and drops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # _devdb: project tooling

from _devdb import database_url
from chrononaut import Versioned, advisory_lock, versioned_session


class Base(DeclarativeBase):
    """The benchmark's own metadata."""


class BenchAccount(Base, Versioned):
    """A versioned counter."""

    __tablename__ = "bench_lock_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


def _measure(op: Callable[[], None], ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        op()
    return (time.perf_counter() - started) / ops


def _statements(engine: sa.Engine, op: Callable[[], None]) -> int:
    sent: list[str] = []

    def count(*args: Any) -> None:
        sent.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        op()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return len(sent)


def _compare(
    name: str,
    engine: sa.Engine,
    base: Callable[[], None],
    ours: Callable[[], None],
    rounds: int,
    ops: int,
    target: float,
) -> bool:
    for _ in range(3):  # warm up caches and connections
        base()
        ours()
    base_times: list[float] = []
    our_times: list[float] = []
    for i in range(rounds):
        # Alternate which side goes first so drift hits both alike.
        if i % 2:
            our_times.append(_measure(ours, ops))
            base_times.append(_measure(base, ops))
        else:
            base_times.append(_measure(base, ops))
            our_times.append(_measure(ours, ops))
    b, o = statistics.median(base_times), statistics.median(our_times)
    ratio = o / b
    ok = ratio <= target
    print(
        f"{name}: by hand {b * 1e6:7.1f} us ({_statements(engine, base)} statements), "
        f"chrononaut {o * 1e6:7.1f} us ({_statements(engine, ours)} statements), "
        f"ratio {ratio:.3f} (target <= {target:.2f}) {'OK' if ok else 'OVER TARGET'}"
    )
    return ok


def main() -> int:
    """Run both comparisons; exit status 1 when a ratio is over its target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="psycopg2", choices=["psycopg2", "psycopg"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--ops", type=int, default=50)
    args = parser.parse_args()

    server = sa.make_url(database_url())
    scratch = f"chrononaut_bench_lock_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
    engine = sa.create_engine(server.set(database=scratch, drivername=f"postgresql+{args.driver}"))
    try:
        Base.metadata.create_all(engine)
        factory = versioned_session(sessionmaker(engine))
        with factory.begin() as setup:
            setup.add(BenchAccount(id=1, n=0))
        session: Session = factory()
        rec = session.get(BenchAccount, 1)
        assert rec is not None
        session.commit()

        def by_hand() -> None:
            session.refresh(rec, with_for_update=True)
            rec.n += 1
            session.commit()

        def with_lock() -> None:
            with rec.lock():
                rec.n += 1

        advisory_sql = sa.text("SELECT pg_advisory_xact_lock(:k)")

        def advisory_by_hand() -> None:
            session.execute(advisory_sql, {"k": 42})
            session.commit()

        def with_advisory() -> None:
            with advisory_lock(42, session=session):
                pass

        print(f"driver {args.driver}, {args.rounds} rounds x {args.ops} operations per side")
        ok = _compare(
            "row lock + update + commit", engine, by_hand, with_lock, args.rounds, args.ops, 1.15
        )
        ok &= _compare(
            "advisory lock + commit",
            engine,
            advisory_by_hand,
            with_advisory,
            args.rounds,
            args.ops,
            1.20,
        )
        session.close()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        admin.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
