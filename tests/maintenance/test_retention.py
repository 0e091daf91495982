"""Pruning history tables: ``prune()`` and ``flask chrononaut prune`` (issue 5, item 3)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import Versioned, VersionedSQLAlchemy
from chrononaut.maintenance._cli import prune_command
from chrononaut.maintenance._models import parse_duration
from chrononaut.maintenance._retention import prune

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture()
def models(db: VersionedSQLAlchemy) -> dict[str, Any]:
    """Two models with history of known ages.

    Note 1 has history versions 0-4 changed 50, 40, 30, 20 and 10 days ago; note 2
    versions 0-1 changed 100 days and 1 hour ago; note 3 never changed; tag 1 has
    one version 60 days old.
    """

    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "note"
        id = db.Column(db.Integer, primary_key=True)
        body = db.Column(db.Text)

    class Tag(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "tag"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.Text)

    db.create_all()
    notes = [Note(id=i, body="v0") for i in (1, 2, 3)]
    tag = Tag(id=1, name="t0")
    db.session.add_all([*notes, tag])
    db.session.commit()
    for version in range(1, 6):
        notes[0].body = f"v{version}"
        db.session.commit()
    for version in range(1, 3):
        notes[1].body = f"v{version}"
        db.session.commit()
    tag.name = "t1"
    db.session.commit()
    ages = {(1, v): dt.timedelta(days=50 - 10 * v) for v in range(5)}
    ages[(2, 0)] = dt.timedelta(days=100)
    ages[(2, 1)] = dt.timedelta(hours=1)
    with db.engine.begin() as conn:
        # valid_from NULL: each made-up version begins where the previous one ended.
        conn.execute(sa.text("UPDATE note_history SET valid_from = NULL"))
        for (key, version), age in ages.items():
            conn.execute(
                sa.text("UPDATE note_history SET changed = :c WHERE id = :i AND version = :v"),
                {"c": NOW - age, "i": key, "v": version},
            )
        conn.execute(sa.text("UPDATE tag_history SET changed = :c"), {"c": NOW - dt.timedelta(60)})
    db.session.expire_all()
    return {"Note": Note, "Tag": Tag}


def _left(db: VersionedSQLAlchemy, table: str = "note_history") -> list[tuple[int, int]]:
    with db.engine.connect() as conn:
        sql = sa.text(f"SELECT id, version FROM {table} ORDER BY id, version")
        return [(row[0], row[1]) for row in conn.execute(sql)]


def _live(db: VersionedSQLAlchemy) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM note ORDER BY id"))]


def test_older_than_deletes_rows_changed_before_the_cutoff(
    db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """``older_than`` deletes every history row whose ``changed`` is older; live rows stay."""
    live = _live(db)
    summary = prune(db.engine, [models["Note"]], older_than=dt.timedelta(days=25), now=NOW)
    assert _left(db) == [(1, 3), (1, 4), (2, 1)]
    assert summary.deleted == {"note_history": 4}
    assert _live(db) == live


def test_keep_last_keeps_the_newest_rows_of_each_record(
    db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """``keep_last`` keeps that many newest history rows per record."""
    prune(db.engine, [models["Note"]], keep_last=2)
    assert _left(db) == [(1, 3), (1, 4), (2, 0), (2, 1)]


def test_both_rules_must_hold(db: VersionedSQLAlchemy, models: dict[str, Any]) -> None:
    """With both rules a row goes only when it is old *and* not among the newest."""
    prune(db.engine, [models["Note"]], older_than=dt.timedelta(days=35), keep_last=2, now=NOW)
    assert _left(db) == [(1, 2), (1, 3), (1, 4), (2, 0), (2, 1)]


def test_dry_run_deletes_nothing(db: VersionedSQLAlchemy, models: dict[str, Any]) -> None:
    """``dry_run`` counts the rows that would go and leaves them."""
    before = _left(db)
    summary = prune(db.engine, [models["Note"]], keep_last=1, dry_run=True)
    assert summary.total == 5 and summary.scanned == {"note_history": 7}
    assert _left(db) == before


def test_small_batches_give_the_same_result(
    db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """Batches of two rows delete the same rows and report progress for every row."""
    steps: list[int] = []
    prune(db.engine, [models["Note"]], keep_last=1, batch_size=2, progress=steps.append)
    assert _left(db) == [(1, 4), (2, 1)]
    assert sum(steps) == 7 and max(steps) == 2


def test_only_the_given_models_are_pruned(db: VersionedSQLAlchemy, models: dict[str, Any]) -> None:
    """Models not named keep their history; the registry means all models."""
    prune(db.engine, [models["Note"]], older_than=dt.timedelta(days=1), now=NOW)
    assert _left(db, "tag_history") == [(1, 0)]
    prune(db.engine, cast(Any, db.Model).registry, older_than=dt.timedelta(days=1), now=NOW)
    assert _left(db, "tag_history") == []


def test_version_at_before_the_cutoff_returns_the_oldest_kept_version(
    db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """After pruning, version_at() of an older moment answers with the oldest version kept."""
    prune(db.engine, [models["Note"]], older_than=dt.timedelta(days=25), now=NOW)
    note = db.session.get(models["Note"], 1)
    assert note is not None
    assert note.version_at(NOW - dt.timedelta(days=45)).version == 3
    assert note.versions()[0].version == 3
    assert note.version == 5


def test_joined_inheritance_child_history_goes_too(db: VersionedSQLAlchemy) -> None:
    """Pruning a joined-inheritance hierarchy deletes the subclass's history rows as well."""

    class Staff(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "staff"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(20))
        name = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "staff"}

    class Engineer(Staff):
        __tablename__ = "engineer"
        id = db.Column(db.Integer, db.ForeignKey("staff.id"), primary_key=True)
        skill = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    db.create_all()
    engineer = Engineer(id=1, name="e", skill="s0")
    db.session.add(engineer)
    db.session.commit()
    for n in range(1, 4):
        engineer.skill = f"s{n}"
        db.session.commit()
    summary = prune(db.engine, cast(Any, db.Model).registry, keep_last=1)
    assert summary.deleted == {"staff_history": 2}
    assert _left(db, "staff_history") == [(1, 2)]
    assert _left(db, "engineer_history") == [(1, 2)]
    db.session.expire_all()
    assert [v.skill for v in cast(Any, db.session.get(Engineer, 1)).versions()] == ["s2"]


def test_rules_are_checked(db: VersionedSQLAlchemy, models: dict[str, Any]) -> None:
    """No rule, a negative age or a negative count is refused."""
    with pytest.raises(ValueError):
        prune(db.engine, [models["Note"]])
    with pytest.raises(ValueError):
        prune(db.engine, [models["Note"]], older_than=dt.timedelta(days=-1))
    with pytest.raises(ValueError):
        prune(db.engine, [models["Note"]], keep_last=-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", dt.timedelta(days=30)),
        ("12h", dt.timedelta(hours=12)),
        ("90m", dt.timedelta(minutes=90)),
        ("2w", dt.timedelta(weeks=2)),
        ("45s", dt.timedelta(seconds=45)),
        ("1d12h", dt.timedelta(days=1, hours=12)),
    ],
)
def test_durations(text: str, expected: dt.timedelta) -> None:
    """Durations are a number and a unit, optionally several."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "30d garbage"])
def test_bad_durations(text: str) -> None:
    """Anything else is a ValueError."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_cli_prunes_with_a_summary(
    app: Flask, db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """``flask chrononaut prune Note --older-than 25d`` deletes and reports per table."""
    result = app.test_cli_runner().invoke(prune_command, ["note", "--older-than", "25d"])
    assert result.exit_code == 0, result.output
    assert "note_history: 4 of 7 history rows deleted" in result.stdout
    assert "tag_history" not in result.stdout
    assert _left(db) == [(1, 3), (1, 4), (2, 1)]


def test_cli_dry_run_over_all_models(
    app: Flask, db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """Without model names every model is examined; ``--dry-run`` deletes nothing."""
    result = app.test_cli_runner().invoke(prune_command, ["--keep-last", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "total: 8 rows would be deleted (dry run)" in result.stdout
    assert len(_left(db)) == 7


def test_cli_refuses_bad_arguments(
    app: Flask, db: VersionedSQLAlchemy, models: dict[str, Any]
) -> None:
    """No rule, a bad duration or an unknown model is an error, and nothing is deleted."""
    runner = app.test_cli_runner()
    assert runner.invoke(prune_command, []).exit_code == 2
    bad = runner.invoke(prune_command, ["--older-than", "soon"])
    assert bad.exit_code == 2 and "duration" in bad.output
    unknown = runner.invoke(prune_command, ["Nope", "--keep-last", "1"])
    assert unknown.exit_code == 1 and "Nope" in unknown.output
    assert len(_left(db)) == 7
