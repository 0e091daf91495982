"""Every public function and CLI command refuses bad input with its documented error.

Table-driven: wrong types, out-of-range numbers, NaN and infinity, huge and
unicode strings, NUL bytes and SQL-looking strings. Each case asserts the
documented ``TypeError`` / ``ValueError`` / ``ChrononautException`` (or
``StaleWriteError``, a mismatch) raised before any statement is sent, and that
nothing was written; CLI commands print ``Error: …`` and exit with 1 or 2.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import chrononaut
from chrononaut import (
    ChrononautException,
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    advisory_lock,
    append_change_info,
    extra_change_info,
    lock_all,
    rationale,
)
from chrononaut.locking import advisory_key, record_key, string_key
from chrononaut.maintenance._retention import prune
from chrononaut.retry import retry_on_conflict, retrying

NAN = float("nan")
INF = float("inf")
HUGE = "x" * 200_000
SQLISH = "1; DROP TABLE bad_thing; --"
NUL = "a\x00b"
SURROGATE = "a\ud800b"


class Env:
    """What a case needs: the db, a persistent record, the model."""

    def __init__(self, db: VersionedSQLAlchemy, thing: Any, model: type[Any]) -> None:
        self.db = db
        self.thing = thing
        self.model = model


Case = tuple[str, Callable[[Env], Any], tuple[type[BaseException], ...]]

TYPE = (TypeError,)
VALUE = (ValueError,)
EITHER = (TypeError, ValueError)
CHRONO = (ChrononautException,)
STALE = (StaleWriteError,)


def _enter(manager: Any) -> None:
    with manager:
        pass


def _iterate(source: Any) -> None:
    next(iter(source))


CASES: list[Case] = [
    # advisory_lock keys and options
    *[
        (f"advisory_lock key {label}", lambda e, k=key: _enter(advisory_lock(k)), error)
        for label, key, error in [
            ("None", None, TYPE),
            ("float", 1.5, TYPE),
            ("nan", NAN, TYPE),
            ("bool", True, TYPE),
            ("bytes", b"k", TYPE),
            ("list", [1, 2], TYPE),
            ("int64+1", 2**63, VALUE),
            ("int64-1", -(2**63) - 1, VALUE),
            ("pair out of range", (2**31, 0), VALUE),
            ("pair of str", ("a", "b"), TYPE),
            ("triple", (1, 2, 3), TYPE),
            ("lone surrogate", SURROGATE, VALUE),
        ]
    ],
    *[
        (f"advisory_lock {label}", lambda e, kw=kw: _enter(advisory_lock("k", **kw)), error)
        for label, kw, error in [
            ("timeout nan", {"timeout": NAN}, VALUE),
            ("timeout inf", {"timeout": INF}, VALUE),
            ("timeout str", {"timeout": "1"}, VALUE),
            ("timeout 0", {"timeout": 0}, VALUE),
            ("scope sql", {"scope": SQLISH}, VALUE),
            ("scope None", {"scope": None}, VALUE),
            ("shared str", {"shared": "yes"}, TYPE),
            ("nowait int", {"nowait": 1}, TYPE),
            ("commit None", {"commit": None}, TYPE),
            ("session str", {"session": "db.session"}, TYPE),
        ]
    ],
    ("string_key None", lambda e: string_key(None), TYPE),  # type: ignore[arg-type]
    ("string_key int", lambda e: string_key(5), TYPE),  # type: ignore[arg-type]
    ("string_key surrogate", lambda e: string_key(SURROGATE), VALUE),
    ("advisory_key dict", lambda e: advisory_key({}), TYPE),
    ("record_key non-record", lambda e: record_key(object()), TYPE),
    # row locks
    *[
        (f"lock {label}", lambda e, kw=kw: _enter(e.thing.lock(**kw)), error)
        for label, kw, error in [
            ("mode sql", {"mode": SQLISH}, VALUE),
            ("mode unicode", {"mode": "ü"}, VALUE),
            ("mode NUL", {"mode": NUL}, VALUE),
            ("timeout nan", {"timeout": NAN}, VALUE),
            ("timeout -inf", {"timeout": -INF}, VALUE),
            ("timeout Decimal inf", {"timeout": decimal.Decimal("Infinity")}, VALUE),
            ("timeout list", {"timeout": [1]}, VALUE),
            ("nowait and timeout", {"nowait": True, "timeout": 1}, VALUE),
            ("nowait None", {"nowait": None}, TYPE),
        ]
    ],
    ("lock transient", lambda e: _enter(e.model(id=99).lock()), CHRONO),
    ("lock_all str", lambda e: _enter(lock_all("abc")), TYPE),
    ("lock_all int", lambda e: _enter(lock_all(5)), TYPE),  # type: ignore[arg-type]
    ("lock_all non-records", lambda e: _enter(lock_all([object()])), TYPE),
    ("lock_all mode", lambda e: _enter(lock_all([e.thing], mode="x")), VALUE),
    ("lock_next non-class", lambda e: _enter(chrononaut.locking._rows.lock_next(5)), TYPE),  # type: ignore[arg-type]
    ("lock_next mode", lambda e: _enter(e.model.lock_next(mode=SQLISH)), VALUE),
    ("lock_holder non-record", lambda e: chrononaut.locking._rows.record_holder(1), TYPE),
    ("record advisory_lock scope", lambda e: _enter(e.thing.advisory_lock(scope="x")), VALUE),
    # optimistic concurrency
    *[
        (f"expect_version {label}", lambda e, v=v: e.thing.expect_version(v), error)
        for label, v, error in [
            ("None", None, TYPE),
            ("float", 0.0, TYPE),
            ("nan", NAN, TYPE),
            ("bool", False, TYPE),
            ("bytes", b"0", TYPE),
            ("superscript", "\u00b2", STALE),
            ("5000 digits", "9" * 5000, STALE),
            ("sql", SQLISH, STALE),
            ("NUL", "0\x00", STALE),
            ("huge str", HUGE, STALE),
            ("negative", -1, STALE),
            ("int32+1", 2**31, STALE),
        ]
    ],
    # change_info
    *[
        (f"append_change_info {label}", lambda e, v=v: append_change_info(e.thing, v=v), error)
        for label, v, error in [
            ("set", {"a"}, TYPE),
            ("bytes", b"x", TYPE),
            ("datetime", dt.datetime(2024, 1, 1), TYPE),
            ("Decimal", decimal.Decimal("1.5"), TYPE),
            ("int key", {1: 2}, TYPE),
            ("nan", NAN, VALUE),
            ("inf", INF, VALUE),
            ("NUL", NUL, VALUE),
            ("surrogate", SURROGATE, VALUE),
            ("nested nan", {"a": [NAN]}, VALUE),
        ]
    ],
    ("append_change_info non-record", lambda e: append_change_info(object(), a=1), TYPE),
    ("extra_change_info set", lambda e: extra_change_info(v={1}), TYPE),
    ("extra_change_info nan", lambda e: extra_change_info(v=NAN), VALUE),
    ("extra_change_info NUL key", lambda e: extra_change_info(**{NUL: 1}), VALUE),
    ("rationale object", lambda e: rationale(object()), TYPE),  # type: ignore[arg-type]
    ("rationale NUL", lambda e: rationale(NUL), VALUE),
    ("rationale surrogate", lambda e: rationale(SURROGATE), VALUE),
    # reading history: time arguments are datetimes
    *[
        (f"{name} {label}", lambda e, n=name, v=v: _read(e, n, v), TYPE)
        for name in ("versions", "version_at", "has_changed_since")
        for label, v in [("str", "2024-01-01"), ("int", 0), ("nan", NAN), ("sql", SQLISH)]
    ],
    ("history_class non-model", lambda e: chrononaut.history_class(int), EITHER + CHRONO),
    # retries
    *[
        (f"retrying {label}", lambda e, kw=kw: _iterate(retrying(e.db.session, **kw)), error)
        for label, kw, error in [
            ("attempts 0", {"attempts": 0}, VALUE),
            ("attempts float", {"attempts": 1.5}, VALUE),
            ("backoff nan", {"backoff": NAN}, VALUE),
            ("backoff inf", {"backoff": INF}, VALUE),
            ("max_backoff -1", {"max_backoff": -1}, VALUE),
            ("commit str", {"commit": "no"}, TYPE),
            ("on_retry str", {"on_retry": "print"}, TYPE),
        ]
    ],
    ("retrying non-session", lambda e: _iterate(retrying(5)), TYPE),  # type: ignore[arg-type]
    ("retry_on_conflict non-session", lambda e: retry_on_conflict(5), TYPE),  # type: ignore[call-overload]
    ("retry_on_conflict attempts", lambda e: retry_on_conflict(e.db.session, attempts=-1), VALUE),
    # pruning
    *[
        (f"prune {label}", lambda e, kw=kw: prune(e.db.engine, [e.model], **kw), error)
        for label, kw, error in [
            ("nothing", {}, VALUE),
            ("keep_last True", {"keep_last": True}, TYPE),
            ("keep_last 1.5", {"keep_last": 1.5}, TYPE),
            ("keep_last -1", {"keep_last": -1}, VALUE),
            ("keep_last 2**31", {"keep_last": 2**31}, VALUE),
            ("older_than int", {"older_than": 30}, TYPE),
            ("older_than str", {"older_than": "30d"}, TYPE),
            ("older_than negative", {"older_than": dt.timedelta(days=-1)}, VALUE),
            ("older_than max", {"older_than": dt.timedelta.max}, VALUE),
            ("batch_size 0", {"keep_last": 1, "batch_size": 0}, VALUE),
            ("batch_size huge", {"keep_last": 1, "batch_size": 10**20}, VALUE),
            ("batch_size float", {"keep_last": 1, "batch_size": 10.0}, TYPE),
            ("dry_run str", {"keep_last": 1, "dry_run": "yes"}, TYPE),
            ("now str", {"keep_last": 1, "now": "now"}, TYPE),
        ]
    ],
    ("prune engine str", lambda e: prune("postgresql://", [e.model], keep_last=1), TYPE),  # type: ignore[arg-type]
]


def _read(env: Env, name: str, value: Any) -> Any:
    return getattr(env.thing, name)(value)


@pytest.fixture()
def env(db: VersionedSQLAlchemy) -> Iterator[Env]:
    """A versioned model with one committed row (version 1, one history row), loaded."""

    class BadThing(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "bad_thing"
        __chrononaut_hidden__ = ["secret"]
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(50), nullable=False)
        secret = sa.Column(sa.String(50))

    db.create_all()
    with acting_as("setup"):
        thing: Any = BadThing(id=1, name="a", secret="s")
        db.session.add(thing)
        db.session.commit()
        thing.name = "b"
        db.session.commit()
    _ = thing.name, thing.version, thing.secret  # loaded: no lazy load in a case
    yield Env(db, thing, BadThing)


def _state(db: VersionedSQLAlchemy) -> list[Any]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT (SELECT json_agg(t ORDER BY id) FROM bad_thing t), "
                    "(SELECT json_agg(h ORDER BY version) FROM bad_thing_history h)"
                )
            ).one()
        )


@pytest.mark.parametrize(("name", "call", "errors"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_statement(
    env: Env, name: str, call: Callable[[Env], Any], errors: tuple[type[BaseException], ...]
) -> None:
    """The documented error, no statement sent, nothing written."""
    before = _state(env.db)
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sa.event.listen(env.db.engine, "before_cursor_execute", record)
    try:
        with pytest.raises(errors):
            call(env)
    finally:
        sa.event.remove(env.db.engine, "before_cursor_execute", record)
    assert sent == [], f"{name}: statements were sent: {sent}"
    env.db.session.rollback()
    assert _state(env.db) == before


# -- the CLI --------------------------------------------------------------------

CLI_CASES: list[tuple[str, list[str]]] = [
    ("prune huge duration", ["prune", "--older-than", "1000000000d"]),
    ("prune duration overflow", ["prune", "--older-than", "99999999999999999999d"]),
    ("prune bad duration", ["prune", "--older-than", "soon"]),
    ("prune sql duration", ["prune", "--older-than", SQLISH]),
    ("prune huge batch", ["prune", "--keep-last", "1", "--batch-size", "99999999999999999999"]),
    ("prune batch 0", ["prune", "--keep-last", "1", "--batch-size", "0"]),
    ("prune keep-last -1", ["prune", "--keep-last", "-1"]),
    ("prune keep-last float", ["prune", "--keep-last", "1.5"]),
    ("prune keep-last huge", ["prune", "--keep-last", "99999999999999999999"]),
    ("prune unknown model", ["prune", "--keep-last", "1", "NoSuchModel"]),
    ("prune unknown bind", ["prune", "--keep-last", "1", "--bind", "nope"]),
    ("prune nothing", ["prune"]),
    ("history NUL", ["history", "BadThing", "1\x00"]),
    ("history sql", ["history", "BadThing", SQLISH]),
    ("history unicode", ["history", "BadThing", "\u00b2"]),
    ("history unknown model", ["history", "Nope", "1"]),
    ("history too many keys", ["history", "BadThing", "1", "2"]),
    ("locks unknown bind", ["locks", "--bind", "nope"]),
    ("locks sql bind", ["locks", "--bind", SQLISH]),
]


@pytest.mark.parametrize(("name", "args"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_an_error_line(app: Flask, env: Env, name: str, args: list[str]) -> None:
    """`flask chrononaut …` prints `Error: …` and exits 1 or 2: no traceback, nothing written."""
    before = _state(env.db)
    env.db.session.remove()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["chrononaut", *args])
    assert result.exit_code in (1, 2), (name, result.exit_code, result.output, result.exception)
    assert "Error:" in result.output, (name, result.output)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), (name, repr(result.exception))
    assert _state(env.db) == before


@pytest.mark.parametrize("key", ["2147483648", "9223372036854775808", "1" * 400])
def test_cli_history_of_an_impossible_key_has_no_traceback(app: Flask, env: Env, key: str) -> None:
    """A key beyond the column's range never ends in a traceback (on psycopg 3 the
    server refuses it: `Error: …`; psycopg2 finds no such record)."""
    env.db.session.remove()
    result = app.test_cli_runner().invoke(args=["chrononaut", "history", "BadThing", key])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 1)
