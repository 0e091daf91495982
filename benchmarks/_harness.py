"""Shared helpers for the benchmark scripts: a scratch database, interleaved timing,
and a per-engine SQL statement counter.

Why interleaved: the benchmark machines are small and shared (two cores, other
people's test runs). Timing variant A for a minute and then variant B lets load
changes land on one of them only. Running A, B, B, A, A, B, ... round by round
puts both under the same conditions, and medians drop the rounds that a
neighbour's burst of work spoiled.

Nothing here asserts: scripts report what they measured and exit 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

#: Printed after ratios (the multiplication sign).
TIMES = "\N{MULTIPLICATION SIGN}"

__all__ = [
    "TIMES",
    "Result",
    "StatementCounter",
    "driver_urls",
    "fmt_time",
    "interleave",
    "print_results",
    "scratch_database",
    "unique_suffix",
]


def unique_suffix() -> str:
    """A short suffix that no concurrent run uses (pid + random)."""
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def scratch_database(url: str | sa.URL) -> Iterator[tuple[sa.URL, str]]:
    """Create a private database next to ``url``'s and drop it afterwards.

    Yields ``(url of the scratch database, description)``. When the server does
    not let us create a database, yields ``url`` itself: the scripts give every
    table a unique suffix anyway, and drop what they create.
    """
    base = sa.make_url(url)
    name = f"chrononaut_bench_{unique_suffix()}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    created = False
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created = True
    except sa.exc.DBAPIError as exc:
        print(f"(could not create a scratch database: {exc.orig}; using {base.database})")
    try:
        if created:
            yield base.set(database=name), f"scratch database {name}"
        else:
            yield base, f"database {base.database} (unique table names)"
    finally:
        if created:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def driver_urls(url: str | sa.URL) -> dict[str, sa.URL]:
    """The same database through psycopg2 and through psycopg 3 (when installed)."""
    base = sa.make_url(url)
    out: dict[str, sa.URL] = {}
    for driver in ("psycopg2", "psycopg"):
        try:
            __import__(driver)
        except ImportError:
            print(f"(driver {driver} not installed: skipped)")
            continue
        out[driver] = base.set(drivername=f"postgresql+{driver}")
    return out


@dataclass
class Result:
    """Timings of one variant, in seconds per operation (already divided by ``per``)."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 4:
            return min(self.samples), max(self.samples)
        q = statistics.quantiles(self.samples, n=4)
        return q[0], q[2]


def interleave(
    variants: dict[str, Callable[[], float | None]],
    rounds: int,
    *,
    warmup: int = 3,
    per: int = 1,
) -> dict[str, Result]:
    """Run every variant once per round, alternating the order, and collect timings.

    A variant returns the seconds it wants counted (when only part of its work is
    the thing measured), or ``None`` to have its whole call timed. ``per`` divides
    every sample (e.g. 100 for a per-row figure of a 100-row flush).
    """
    names = list(variants)
    results = {name: Result(name) for name in names}
    for round_no in range(warmup + rounds):
        # A, B, C then C, B, A: each variant runs as often first as last, so
        # warm caches or a neighbour's burst favour nobody.
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            measured = variants[name]()
            elapsed = time.perf_counter() - start if measured is None else measured
            if round_no >= warmup:
                results[name].samples.append(elapsed / per)
    return results


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:7.3f} s "
    if seconds >= 1e-3:
        return f"{seconds * 1e3:7.2f} ms"
    return f"{seconds * 1e6:7.1f} µs"


def print_results(
    results: dict[str, Result],
    baseline: str,
    *,
    targets: dict[str, float] | None = None,
    unit: str = "per op",
) -> dict[str, float]:
    """Print median, quartiles and the ratio against ``baseline``; return the ratios.

    Two ratios are shown: of the medians, and the median of the per-round ratios
    (each round's variants ran back to back, so that one cancels slow drifts).
    """
    base = results[baseline]
    width = max(len(name) for name in results)
    ratios: dict[str, float] = {}
    print(f"    {'variant':<{width}}  median {unit:<8}  [p25 .. p75]              ratio  paired")
    for name, result in results.items():
        lo, hi = result.quartiles()
        line = (
            f"    {name:<{width}}  {fmt_time(result.median)}      "
            f"[{fmt_time(lo)} .. {fmt_time(hi)}]"
        )
        if name != baseline:
            ratio = result.median / base.median
            paired = statistics.median(
                a / b for a, b in zip(result.samples, base.samples, strict=True)
            )
            ratios[name] = ratio
            line += f"  {ratio:5.2f}{TIMES}  {paired:5.2f}{TIMES}"
            if targets and name in targets:
                verdict = "meets" if ratio <= targets[name] else "MISSES"
                line += f"  ({verdict} target ≤ {targets[name]:.2f}{TIMES})"
        print(line)
    return ratios


_VERB = re.compile(r"^\s*(\w+)", re.S)


def classify(statement: str) -> str:
    """SELECT / INSERT / UPDATE / DELETE, or UPDATE+INSERT for one statement doing both."""
    match = _VERB.match(statement)
    verb = match.group(1).upper() if match else "?"
    if verb == "WITH":
        upper = statement.upper()
        kinds = [k for k in ("INSERT", "UPDATE", "DELETE") if f"{k} " in upper]
        if kinds:
            return "+".join(sorted(kinds, key=lambda k: k != "UPDATE"))
        return "SELECT"
    return verb


class StatementCounter:
    """Counts the statements an engine sends, by kind, while active.

    ``executemany`` calls count once (one statement, many parameter sets); their
    parameter sets are counted separately, because whether they travel in one
    round trip depends on the driver (psycopg 3 pipelines them, psycopg2 sends one
    per row unless SQLAlchemy rewrites an INSERT into a multi-VALUES statement).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.kinds: Counter[str] = Counter()
        self.param_sets: Counter[str] = Counter()
        self.statements: list[tuple[str, Any]] = []

    def _listener(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        kind = classify(statement)
        self.kinds[kind] += 1
        # A single mapping is one parameter set even when SQLAlchemy flags the call
        # as executemany (insertmanyvalues renders many rows into one statement).
        many = executemany and isinstance(parameters, (list, tuple))
        self.param_sets[kind] += len(parameters) if many else 1
        self.statements.append((statement, parameters))

    def __enter__(self) -> StatementCounter:
        self.kinds.clear()
        self.param_sets.clear()
        self.statements.clear()
        event.listen(self.engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._listener)

    def summary(self) -> str:
        if not self.kinds:
            return "no statements"
        parts = []
        for kind in sorted(self.kinds, key=_kind_order):
            n, p = self.kinds[kind], self.param_sets[kind]
            parts.append(f"{n} {kind}" + (f" ({p} param sets)" if p != n else ""))
        return ", ".join(parts) + f"; total {sum(self.kinds.values())}"


def _kind_order(kind: str) -> tuple[int, str]:
    order = ["SELECT", "UPDATE+INSERT", "UPDATE", "INSERT", "DELETE"]
    return (order.index(kind) if kind in order else len(order), kind)


def count_statements(engine: sa.Engine, operation: Callable[[], Any]) -> StatementCounter:
    """Run ``operation`` once and return what it sent."""
    with StatementCounter(engine) as counter:
        operation()
    return counter


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)
