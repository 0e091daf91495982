"""A bounded soak under faults: no lost update, contiguous history, nothing left behind.

Run ``python tests/fleet/soak.py DATABASE_URL [--seconds 20] [--threads 3]
[--processes 2]`` (the database must exist; the tables are created and dropped),
or through ``tests/fleet/test_soak.py``. It stops by itself after ``--seconds``
(at most 120).

Threads of this process and worker processes (this script with ``--worker``)
mix, on a few rows: ``record.lock()`` increments, optimistic increments retried
by ``chrononaut.retry``, ORM bulk ``UPDATE`` statements, and increments under
transaction- and session-scope advisory locks; a killer terminates random
backends of the database meanwhile. Every increment also inserts a row into
``soak_op`` in the same transaction, so a commit whose answer was lost to a
fault is still counted exactly. At the end:

- every counter's ``n`` equals its committed operations, ``version == n``, and
  its history holds versions ``0 .. n-1`` with ``n`` equal to the version
  (contiguous, no lost update, no duplicate);
- no advisory lock is held and no backend carries Chrononaut's
  ``application_name`` tag.

It prints its figures (operations, retries, faults injected, lost) as one JSON
line, and exits 1 when an invariant is broken or a worker met an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chrononaut import (
    LockError,
    StaleWriteError,
    Versioned,
    acting_as,
    advisory_lock,
    versioned_session,
)
from chrononaut.retry import retry_on_conflict

ROWS = (1, 2, 3)
MAX_SECONDS = 120


class Base(DeclarativeBase):
    """The soak's own metadata."""


class SoakCounter(Base, Versioned):
    """A counter only ever incremented by 1."""

    __tablename__ = "soak_counter"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(default=0)


class SoakOp(Base):
    """One committed increment of a counter (written in the increment's transaction)."""

    __tablename__ = "soak_op"
    id: Mapped[int] = mapped_column(primary_key=True)
    counter_id: Mapped[int]
    kind: Mapped[str]


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)


def _ops(session: Session, ids: list[int], kind: str) -> None:
    session.add_all([SoakOp(counter_id=i, kind=kind) for i in ids])


def work(url: str, seconds: float, name: str) -> dict[str, Any]:
    """Run mixed operations until ``seconds`` have passed; return the tallies."""
    engine = _engine(url)
    factory = versioned_session(sessionmaker(engine))
    tally: Tally[str] = Tally()
    unexpected: list[str] = []
    rng = random.Random(f"{name}-{os.getpid()}")
    deadline = time.monotonic() + seconds

    def on_retry(number: int, error: BaseException) -> None:
        tally["retries"] += 1

    session = factory()

    @retry_on_conflict(session, attempts=8, backoff=0.002, max_backoff=0.05, on_retry=on_retry)
    def optimistic(row: int) -> None:
        counter = session.get(SoakCounter, row)
        assert counter is not None
        counter.n += 1
        _ops(session, [row], "optimistic")

    def locked(row: int) -> None:
        counter = session.get(SoakCounter, row)
        assert counter is not None
        with counter.lock(timeout=2):
            counter.n += 1
            _ops(session, [row], "lock")

    def bulk(_: int) -> None:
        ids = rng.sample(ROWS, 2)
        session.execute(
            sa.update(SoakCounter)
            .where(SoakCounter.id.in_(ids))
            .values(n=SoakCounter.n + 1)
            .execution_options(synchronize_session=False)
        )
        _ops(session, ids, "bulk")
        session.commit()

    def xact_advisory(row: int) -> None:
        with advisory_lock(f"soak:{row}", timeout=2, session=session):
            optimistic_inline(row, "xact-advisory")

    def session_advisory(row: int) -> None:
        with advisory_lock(f"soak-session:{row}", scope="session", timeout=2, session=session):
            optimistic_inline(row, "session-advisory")
            session.commit()

    def optimistic_inline(row: int, kind: str) -> None:
        counter = session.get(SoakCounter, row)
        assert counter is not None
        counter.n += 1
        _ops(session, [row], kind)

    operations = [optimistic, locked, bulk, xact_advisory, session_advisory]
    with acting_as(name):
        while time.monotonic() < deadline:
            operation = rng.choice(operations)
            row = rng.choice(ROWS)
            try:
                operation(row)
                tally["operations"] += 1
            except (sa_exc.DBAPIError, LockError, StaleWriteError) as error:
                # Faults the killer injects (a terminated backend), lost
                # session-scope locks, lock timeouts, conflicts beyond retries.
                tally[f"failed:{type(error).__name__}"] += 1
            except Exception as error:  # anything else breaks the soak
                unexpected.append(f"{operation.__name__}: {type(error).__name__}: {error}")
            finally:
                try:
                    session.rollback()
                except Exception:
                    session.close()
                    session = factory()
                session.expunge_all()
    session.close()
    engine.dispose()
    return {"tally": dict(tally), "unexpected": unexpected}


def _killer(admin: sa.Engine, database: str, stop: threading.Event, tally: Tally[str]) -> None:
    rng = random.Random(7)
    with admin.connect() as conn:
        while not stop.wait(rng.uniform(0.1, 0.4)):
            pids = (
                conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :db "
                        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    ),
                    {"db": database},
                )
                .scalars()
                .all()
            )
            if not pids:
                continue
            victim = rng.choice(pids)
            if conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": victim}).scalar():
                tally["faults"] += 1
            conn.commit()


def check(url: str) -> dict[str, Any]:
    """The invariants after the soak: lost updates, history gaps, leftovers."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    history = SoakCounter.__history_mapper__.local_table
    problems: list[str] = []
    lost = 0
    with engine.connect() as conn:
        for row in ROWS:
            n, version = conn.execute(
                sa.select(SoakCounter.n, SoakCounter.version).where(SoakCounter.id == row)
            ).one()
            committed = conn.execute(
                sa.select(sa.func.count()).select_from(SoakOp).where(SoakOp.counter_id == row)
            ).scalar_one()
            lost += abs(committed - n)
            if n != committed:
                problems.append(f"counter {row}: n={n} but {committed} committed increments")
            if version != n:
                problems.append(f"counter {row}: version {version} != n {n}")
            versions = conn.execute(
                sa.select(history.c.version, history.c.n)
                .where(history.c.id == row)
                .order_by(history.c.version)
            ).all()
            if [v for v, _ in versions] != list(range(version)):
                problems.append(f"counter {row}: history versions are not 0..{version - 1}")
            if any(v != value for v, value in versions):
                problems.append(f"counter {row}: a history row holds another n than its version")
        deadline = time.monotonic() + 10
        while True:
            locks, tagged = conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM pg_locks l JOIN pg_database d "
                    "ON d.oid = l.database WHERE l.locktype = 'advisory' "
                    "AND d.datname = current_database()), "
                    "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'chrononaut%')"
                )
            ).one()
            conn.rollback()
            if (locks, tagged) == (0, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if locks:
            problems.append(f"{locks} advisory locks left")
        if tagged:
            problems.append(f"{tagged} backends still tagged chrononaut")
        total = conn.execute(sa.select(sa.func.count()).select_from(SoakOp)).scalar_one()
    engine.dispose()
    return {"lost": lost, "committed_increments": total, "problems": problems}


def run(url: str, seconds: float, threads: int, processes: int) -> dict[str, Any]:
    """Set up, run workers and the killer for ``seconds``, check, tear down."""
    seconds = min(seconds, MAX_SECONDS)
    setup = sa.create_engine(url, poolclass=sa.pool.NullPool)
    Base.metadata.drop_all(setup)
    Base.metadata.create_all(setup)
    with Session(setup) as session:
        session.add_all([SoakCounter(id=row, n=0) for row in ROWS])
        session.commit()
    database = sa.make_url(url).database or ""
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    killer_tally: Tally[str] = Tally()
    stop = threading.Event()
    killer = threading.Thread(target=_killer, args=(admin, database, stop, killer_tally))
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, here, url, "--worker", f"proc{i}", "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def thread_main(index: int) -> None:
        result = work(url, seconds, f"thread{index}")
        with lock:
            results.append(result)

    workers = [threading.Thread(target=thread_main, args=(i,)) for i in range(threads)]
    killer.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 60)
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            results.append({"tally": {}, "unexpected": [f"worker process failed: {err[-2000:]}"]})
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    stop.set()
    killer.join(10)
    admin.dispose()
    figures: Tally[str] = Tally()
    unexpected: list[str] = []
    for result in results:
        figures.update(result["tally"])
        unexpected.extend(result["unexpected"])
    checked = check(url)
    Base.metadata.drop_all(setup)
    setup.dispose()
    return {
        "seconds": seconds,
        "threads": threads,
        "processes": processes,
        "operations": figures.pop("operations", 0),
        "retries": figures.pop("retries", 0),
        "faults_injected": killer_tally["faults"],
        "failed_operations": dict(figures),
        "committed_increments": checked["committed_increments"],
        "lost": checked["lost"],
        "problems": checked["problems"] + unexpected[:20],
    }


def main() -> int:
    """Command line: run the soak (or, with ``--worker``, one worker process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(work(args.url, args.seconds, args.worker)))
        return 0
    figures = run(args.url, args.seconds, args.threads, args.processes)
    print(json.dumps(figures))
    return 1 if figures["problems"] or figures["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
