"""change_info values are JSON values JSONB can hold, checked at the call (SPEC §3)."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import VersionedSQLAlchemy, append_change_info, extra_change_info, rationale

BAD_TYPES: list[Any] = [
    {"a"},
    frozenset(),
    b"bytes",
    dt.date(2024, 1, 1),
    decimal.Decimal("1.5"),
    object(),
    {1: "int key"},
    [{"nested": {"a"}}],
]
BAD_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    "nul\x00byte",
    "lone \ud800 surrogate",
    {"k\x00": 1},
    [[float("nan")]],
]


def _history_count(db: VersionedSQLAlchemy) -> int:
    count = db.session.execute(sa.text("SELECT count(*) FROM appuser_history")).scalar()
    assert isinstance(count, int)
    return count


@pytest.mark.parametrize("value", BAD_TYPES, ids=repr)
def test_append_refuses_other_types(db: VersionedSQLAlchemy, make_user: Any, value: Any) -> None:
    """A set, bytes, date, Decimal, object or non-str key: TypeError, later commits work."""
    user = make_user()
    with pytest.raises(TypeError):
        append_change_info(user, tags=value)
    user.name = "renamed"
    db.session.commit()
    assert "extra" not in user.previous_version().change_info


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_append_refuses_values_jsonb_cannot_hold(
    db: VersionedSQLAlchemy, make_user: Any, value: Any
) -> None:
    """NaN, infinity, NUL characters, lone surrogates: ValueError at the call."""
    user = make_user()
    with pytest.raises(ValueError):
        append_change_info(user, v=value)
    user.name = "renamed"
    db.session.commit()
    assert "extra" not in user.previous_version().change_info


@pytest.mark.parametrize("value", BAD_TYPES[:3] + BAD_VALUES[:4], ids=repr)
def test_extra_change_info_and_rationale_check_at_the_call(value: Any) -> None:
    """extra_change_info() and rationale() raise at the call, before the block."""
    with pytest.raises((TypeError, ValueError)):
        extra_change_info(v=value)
    with pytest.raises((TypeError, ValueError)):
        rationale(value)


def test_cycles_are_refused() -> None:
    """A self-containing list is a ValueError, not a RecursionError."""
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError):
        extra_change_info(v=cycle)


def test_cycle_through_a_dict_is_refused() -> None:
    """A dict holding a list that holds the dict is a ValueError naming the cycle."""
    outer: dict[str, Any] = {}
    outer["inner"] = [outer]
    with pytest.raises(ValueError, match="cycle"):
        extra_change_info(v=outer)


def test_deep_nesting_jsonb_holds_is_stored(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Nesting deeper than 64 levels (JSONB holds it) is stored; the same object twice
    side by side is not a cycle."""
    deep: Any = "leaf"
    for _ in range(100):
        deep = [deep]
    shared = {"a": 1}
    user = make_user()
    with extra_change_info(v=deep, twice=[shared, shared]):
        user.name = "renamed"
        db.session.commit()
    stored = user.previous_version().change_info["extra"]
    assert stored["v"] == deep
    assert stored["twice"] == [{"a": 1}, {"a": 1}]


def test_good_values_are_stored(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Nested dicts, lists, tuples, unicode, big ints, finite floats and None are kept."""
    user = make_user()
    value = {"list": [1, 2.5, None, True], "tuple": (1, "ü ✓"), "big": 2**70}
    append_change_info(user, v=value)
    user.name = "renamed"
    db.session.commit()
    stored = user.previous_version().change_info["extra"]["v"]
    assert stored == {"list": [1, 2.5, None, True], "tuple": [1, "ü ✓"], "big": 2**70}


def test_appended_info_is_dropped_on_rollback(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Info appended in a transaction that rolls back is not written later."""
    user = make_user()
    user.name = "x"
    append_change_info(user, source="lost")
    db.session.rollback()
    user.name = "renamed"
    db.session.commit()
    assert "extra" not in user.previous_version().change_info


def test_appended_info_is_dropped_on_savepoint_rollback(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Info appended inside a savepoint that rolls back is dropped; outer info stays."""
    user = make_user()
    _ = user.name
    append_change_info(user, outer="kept")
    savepoint = db.session.begin_nested()
    append_change_info(user, inner="lost")
    savepoint.rollback()
    user.name = "renamed"
    db.session.commit()
    assert user.previous_version().change_info["extra"] == {"outer": "kept"}


def test_appended_info_survives_a_released_savepoint(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Info appended in a savepoint that is released is written."""
    user = make_user()
    _ = user.name
    with db.session.begin_nested():
        append_change_info(user, inner="kept")
    user.name = "renamed"
    db.session.commit()
    assert user.previous_version().change_info["extra"] == {"inner": "kept"}


def _bad_config() -> dict[str, Any]:
    return {"when": dt.datetime(2024, 1, 1)}


def _nan_config() -> dict[str, Any]:
    return {"score": float("nan")}


@pytest.mark.parametrize(("func", "error"), [(_bad_config, TypeError), (_nan_config, ValueError)])
def test_config_function_is_checked_before_any_statement(
    app: Flask, func: Any, error: type[Exception], make_user: Any, db: VersionedSQLAlchemy
) -> None:
    """A config function returning a non-JSON value fails the flush; nothing is written."""
    user = make_user()
    app.config["CHRONONAUT_EXTRA_CHANGE_INFO_FUNC"] = func
    before = _history_count(db)
    user.name = "renamed"
    with pytest.raises(error):
        db.session.commit()
    db.session.rollback()
    app.config["CHRONONAUT_EXTRA_CHANGE_INFO_FUNC"] = None
    assert _history_count(db) == before
    assert cast(Any, db.session.get(type(user), user.id)).name != "renamed"


def test_info_waiting_past_a_commit_goes_with_the_next_rollback(
    db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Info that outlived an untracked-only commit belongs to the next transaction."""
    user = make_user()
    _ = user.name  # inside a transaction now
    append_change_info(user, source="waiting")
    user.login_count = 5
    db.session.commit()
    db.session.execute(sa.text("SELECT 1"))
    db.session.rollback()
    user.name = "renamed"
    db.session.commit()
    assert "extra" not in user.previous_version().change_info
