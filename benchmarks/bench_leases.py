"""Benchmark: what edit leases cost a write transaction (issue 13).

One ``Versioned`` model with ``__chrononaut_leases__ = True`` and an identical one
without; each variant changes one tracked column of one row and commits, as the
acting user. Variants, measured interleaved in one run (see ``_harness``):

- ``plain``: the model without leases (the baseline);
- ``leased, free``: the leased model, no lease on the row (one check statement
  after the UPDATE);
- ``leased, holder``: the holder writes; the transaction has not seen the lease
  yet, so the check (still one statement) also adds ``change_info["lease"]`` to
  the history row just written;
- ``leased, holder+renew``: the web save pattern: ``renew_lease(token,
  commit=False)`` (a statement of its own), then the write, whose flush checks
  the lease once.

Statements per transaction are counted for each variant, and (counts only, not
timed) for an ORM bulk ``UPDATE`` of one row the session does not hold: of the
model without leases, of a free leased row and of a row the acting user holds.
Usage::

    python benchmarks/bench_leases.py [--rounds 30] [--ops 50]

The database comes from chrononaut.testing; both drivers run when installed.
The machine is shared and noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    StatementCounter,
    driver_urls,
    interleave,
    print_results,
    scratch_database,
)

from chrononaut import Versioned, acting_as, versioned_session
from chrononaut.testing import database_url


class Base(DeclarativeBase):
    """The benchmark's own metadata."""


class PlainDoc(Versioned, Base):
    """No leases."""

    __tablename__ = "bench_lease_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(default="")


class LeasedDoc(Versioned, Base):
    """Leased."""

    __tablename__ = "bench_lease_leased"
    __chrononaut_leases__ = True
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(default="")


def _timed(op: Callable[[], None], ops: int) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        for _ in range(ops):
            op()
        return (time.perf_counter() - started) / ops

    return run


def run_driver(name: str, url: sa.URL, rounds: int, ops: int) -> dict[str, float]:
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    factory = versioned_session(sessionmaker(engine, expire_on_commit=False))
    with engine.begin() as conn:
        conn.execute(sa.insert(PlainDoc), [{"id": 1, "title": "", "version": 0}])
        conn.execute(
            sa.insert(LeasedDoc),
            [{"id": i, "title": "", "version": 0} for i in (1, 2, 3, 4)],
        )
        conn.execute(sa.insert(PlainDoc), [{"id": 2, "title": "", "version": 0}])
    session: Session = factory()
    plain = session.get(PlainDoc, 1)
    free = session.get(LeasedDoc, 1)
    held = session.get(LeasedDoc, 2)
    assert plain is not None and free is not None and held is not None
    with acting_as("alice"):
        token = held.lease(dt.timedelta(hours=1)).token
    assert token is not None
    with acting_as("alice"):
        bulk_held = session.get(LeasedDoc, 3)
        assert bulk_held is not None
        bulk_held.lease(dt.timedelta(hours=1))
        session.expunge(bulk_held)
    counter = [0]

    def write(record: object) -> Callable[[], None]:
        def op() -> None:
            counter[0] += 1
            with acting_as("alice"):
                record.title = f"t{counter[0]}"  # type: ignore[attr-defined]
                session.commit()

        return op

    def renew_then_write() -> None:
        counter[0] += 1
        with acting_as("alice"):
            held.renew_lease(token, commit=False)
            held.title = f"t{counter[0]}"
            session.commit()

    variants = {
        "plain": write(plain),
        "leased, free": write(free),
        "leased, holder": write(held),
        "leased, holder+renew": renew_then_write,
    }
    print(f"  {name}: statements per transaction")
    for label, op in variants.items():
        op()  # warm
        with StatementCounter(engine) as count:
            op()
        print(f"    {label:<22} {count.summary()}")

    def bulk(model: type[Any], id_: int) -> Callable[[], None]:
        def op() -> None:
            counter[0] += 1
            with acting_as("alice"):
                session.execute(
                    sa.update(model).where(model.id == id_).values(title=f"b{counter[0]}")
                )
                session.commit()

        return op

    bulk_variants = {
        "bulk, plain": bulk(PlainDoc, 2),
        "bulk, leased, free": bulk(LeasedDoc, 4),
        "bulk, leased, holder": bulk(LeasedDoc, 3),
    }
    print(f"  {name}: statements per bulk UPDATE transaction (rows not in the session)")
    for label, op in bulk_variants.items():
        op()  # warm
        with StatementCounter(engine) as count:
            op()
        print(f"    {label:<22} {count.summary()}")
    results = interleave({k: _timed(v, ops) for k, v in variants.items()}, rounds, warmup=2)
    print(f"  {name}: time per write transaction")
    ratios = print_results(results, "plain")
    session.close()
    Base.metadata.drop_all(engine)
    engine.dispose()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--ops", type=int, default=50)
    args = parser.parse_args()
    with scratch_database(database_url()) as (url, where):
        print(f"bench_leases: {where}; {args.rounds} rounds x {args.ops} transactions")
        for driver, driver_url in driver_urls(url).items():
            run_driver(driver, driver_url, args.rounds, args.ops)
    print("Noisy shared machine: compare the ratios of one run, not absolute times.")


if __name__ == "__main__":
    main()
