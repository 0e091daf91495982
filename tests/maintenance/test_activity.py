"""Importing the original Chrononaut 0.3/0.4 ``chrononaut_activity`` table (issue 5, item 2).

The seed below is written the way Chrononaut 0.4 wrote its activity log: one row
per insert (version 0) and per change, ``data`` the state *after* the change with
values that are not None/str/number/bool/datetime stored through ``str()``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.dialects.postgresql import JSONB, UUID

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as
from chrononaut.maintenance._activity import (
    ActivityConflictError,
    ImportSummary,
    import_activity,
)
from chrononaut.maintenance._cli import import_activity_command

UTC = dt.timezone.utc
REF = "5d1b8a0e-6c0f-4a54-9a39-7f2f4c1f7d10"

ACTIVITY_DDL = """
CREATE TABLE chrononaut_activity (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    changed timestamp with time zone NOT NULL DEFAULT now(),
    version integer NOT NULL,
    key jsonb NOT NULL,
    data jsonb,
    user_info jsonb,
    extra_info jsonb
);
CREATE INDEX ix_chrononaut_activity_table_key ON chrononaut_activity (table_name, key);
"""

# Document 1: inserted, retitled by user 7 with a rationale, then its hidden
# column changed. Document 2: inserted, edited, later deleted (no live row).
# Document 3: inserted only. "ghost": a table no model uses any more.
ACTIVITY_SEED = f"""
INSERT INTO chrononaut_activity (table_name, changed, version, key, data, user_info, extra_info)
VALUES
 ('doc', '2020-01-01 10:00:00+00', 0, '{{"id": 1}}',
  '{{"id": 1, "title": "first", "price": "1.50", "published": "2020-01-01",
     "reviewed": "2020-01-01T10:00:00+00:00", "tags": "{{''k'': [1, 2]}}",
     "ref": "{REF}", "active": true, "pages": 10}}',
  '{{"user_id": 3, "remote_addr": "10.0.0.3"}}', '{{}}'),
 ('doc', '2020-02-01 11:00:00+00', 1, '{{"id": 1}}',
  '{{"id": 1, "title": "second", "price": "2.75", "published": "2020-01-01",
     "reviewed": "2020-02-01T11:00:00+00:00", "tags": "{{''k'': [3]}}",
     "ref": "{REF}", "active": false, "pages": 12}}',
  '{{"user_id": 7, "remote_addr": "10.0.0.7"}}', '{{"rationale": "typo", "ticket": 42}}'),
 ('doc', '2020-03-01 12:00:00+00', 2, '{{"id": 1}}',
  '{{"id": 1, "title": "second", "price": "2.75", "published": "2020-01-01",
     "reviewed": "2020-02-01T11:00:00+00:00", "tags": "{{''k'': [3]}}",
     "ref": "{REF}", "active": false, "pages": 12}}',
  '{{"user_id": null, "remote_addr": null}}', '{{"hidden_cols_changed": ["secret"]}}'),
 ('doc', '2021-01-01 09:00:00+00', 0, '{{"id": 2}}',
  '{{"id": 2, "title": "gone", "price": null, "published": null, "reviewed": null,
     "tags": null, "ref": null, "active": true, "pages": 1}}',
  '{{"user_id": 3, "remote_addr": null}}', '{{}}'),
 ('doc', '2021-01-02 09:00:00+00', 1, '{{"id": 2}}',
  '{{"id": 2, "title": "gone soon", "price": null, "published": null, "reviewed": null,
     "tags": null, "ref": null, "active": true, "pages": 2}}',
  '{{"user_id": "alice", "remote_addr": null}}', '{{}}'),
 ('doc', '2022-05-05 08:00:00+00', 0, '{{"id": 3}}',
  '{{"id": 3, "title": "untouched", "price": "0.10", "published": null, "reviewed": null,
     "tags": null, "ref": null, "active": true, "pages": 3}}',
  '{{"user_id": 3, "remote_addr": null}}', '{{}}'),
 ('ghost', '2019-01-01 00:00:00+00', 0, '{{"id": 1}}', '{{"id": 1}}', '{{}}', '{{}}');
"""

LIVE_SEED = f"""
INSERT INTO doc (id, title, price, published, reviewed, tags, ref, active, pages, secret)
VALUES
 (1, 'second', 2.75, '2020-01-01', '2020-02-01 11:00:00+00', '{{"k": [3]}}', '{REF}',
  false, 12, 's2'),
 (3, 'untouched', 0.10, NULL, NULL, NULL, NULL, true, 3, 's3');
"""


@pytest.fixture()
def Doc(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A model adopted from Chrononaut 0.4, with its live rows and the 0.4 activity log."""

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "doc"
        __chrononaut_hidden__ = ["secret"]
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(100), nullable=False)
        price = db.Column(db.Numeric(10, 2))
        published = db.Column(db.Date)
        reviewed = db.Column(db.DateTime(timezone=True))
        tags = db.Column(JSONB)
        ref = db.Column(UUID(as_uuid=True))
        active = db.Column(db.Boolean)
        pages = db.Column(db.Integer)
        secret = db.Column(db.Text)

    db.create_all()
    with db.engine.begin() as conn:
        conn.exec_driver_sql(ACTIVITY_DDL)
        conn.exec_driver_sql(ACTIVITY_SEED.replace("%", "%%"))
        conn.exec_driver_sql(LIVE_SEED)
    yield Doc
    db.session.remove()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS chrononaut_activity")


def _history(db: VersionedSQLAlchemy) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        sql = sa.text("SELECT * FROM doc_history ORDER BY id, version")
        return [dict(row) for row in conn.execute(sql).mappings()]


def _run(db: VersionedSQLAlchemy, **options: Any) -> ImportSummary:
    return import_activity(db.engine, cast(Any, db.Model).registry, **options)


def test_history_rows_hold_prior_states_cast_to_column_types(
    db: VersionedSQLAlchemy, Doc: type[Any]
) -> None:
    """History row N is activity version N's state, its values typed like the columns."""
    _run(db)
    rows = [r for r in _history(db) if r["id"] == 1]
    assert [r["version"] for r in rows] == [0, 1]
    first = rows[0]
    assert first["title"] == "first"
    assert first["price"] == decimal.Decimal("1.50")
    assert first["published"] == dt.date(2020, 1, 1)
    assert first["reviewed"] == dt.datetime(2020, 1, 1, 10, tzinfo=UTC)
    assert first["tags"] == {"k": [1, 2]}
    assert first["ref"] == uuid.UUID(REF)
    assert first["active"] is True and first["pages"] == 10
    assert "secret" not in first
    assert rows[1]["title"] == "second" and rows[1]["tags"] == {"k": [3]}


def test_changed_and_change_info_come_from_the_superseding_change(
    db: VersionedSQLAlchemy, Doc: type[Any]
) -> None:
    """Row N carries the time, user and extra info of activity version N + 1."""
    _run(db)
    rows = [r for r in _history(db) if r["id"] == 1]
    assert rows[0]["changed"] == dt.datetime(2020, 2, 1, 11, tzinfo=UTC)
    info = dict(rows[0]["change_info"])
    assert info.pop("imported")["from"] == "chrononaut_activity"
    assert info == {
        "user_id": "7",
        "remote_addr": "10.0.0.7",
        "extra": {"rationale": "typo", "ticket": 42},
    }
    assert rows[1]["changed"] == dt.datetime(2020, 3, 1, 12, tzinfo=UTC)
    assert rows[1]["change_info"]["hidden_cols_changed"] == ["secret"]
    assert rows[1]["change_info"]["user_id"] is None


def test_live_row_gets_the_newest_activity_version(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """The live row's version becomes the newest activity version; new edits continue it."""
    summary = _run(db)
    doc = db.session.get(Doc, 1)
    assert doc is not None
    assert doc.version == 2
    assert cast(Any, db.session.get(Doc, 3)).version == 0
    assert summary.live_versions == 1
    with acting_as("bob"):
        doc.title = "third"
        db.session.commit()
    assert [v.version for v in doc.versions()] == [0, 1, 2]
    assert doc.versions()[0].title == "first"
    assert doc.versions()[2].title == "second"
    assert doc.version_at(dt.datetime(2020, 1, 15, tzinfo=UTC)).title == "first"
    assert doc.version_at(dt.datetime(2020, 2, 15, tzinfo=UTC)).title == "second"


def test_key_without_live_row_gets_a_final_deleted_row(
    db: VersionedSQLAlchemy, Doc: type[Any]
) -> None:
    """A key whose live row is gone ends with a ``deleted`` row holding its last state."""
    summary = _run(db)
    rows = [r for r in _history(db) if r["id"] == 2]
    assert [(r["version"], r["title"]) for r in rows] == [(0, "gone"), (1, "gone soon")]
    assert rows[0]["change_info"]["user_id"] == "alice"
    assert rows[1]["change_info"]["deleted"] is True
    assert rows[1]["changed"] == dt.datetime(2021, 1, 2, 9, tzinfo=UTC)
    assert summary.deleted == 1


def test_summary_counts_everything(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """The summary tells rows read, keys, rows written and tables without a model."""
    summary = _run(db)
    assert summary.activity_rows == 7
    assert summary.keys == 2 and summary.unchanged == 1
    assert summary.history_rows == 4
    assert summary.per_table == {"doc_history": 2}
    assert summary.unknown_tables == {"ghost": 1}
    assert any("ghost" in line for line in summary.lines())


def test_second_run_changes_nothing(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """Running the import again skips every imported key and writes nothing."""
    _run(db)
    before = _history(db)
    again = _run(db)
    assert _history(db) == before
    assert again.keys == 0 and again.history_rows == 0
    assert again.already_imported == 2
    assert cast(Any, db.session.get(Doc, 1)).version == 2


def test_interrupted_run_is_completed_by_the_next(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """Chunks commit one by one; a run stopped after the first chunk is finished by rerunning."""

    def stop(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(db, chunk_size=1, progress=stop)
    assert {r["id"] for r in _history(db)} == {1}
    rest = _run(db, chunk_size=1)
    assert rest.keys == 1 and rest.already_imported == 1
    assert [(r["id"], r["version"]) for r in _history(db)] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert cast(Any, db.session.get(Doc, 1)).version == 2


def test_dry_run_writes_nothing(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """``dry_run`` reports what it would do and leaves every table as it was."""
    summary = _run(db, dry_run=True)
    assert summary.keys == 2 and summary.history_rows == 4
    assert _history(db) == []
    assert cast(Any, db.session.get(Doc, 1)).version == 0


def test_refuses_keys_with_existing_history(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """History written by this library for an activity key stops the import before any write."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    doc.title = "edited after adoption"
    db.session.commit()
    with pytest.raises(ActivityConflictError) as caught:
        _run(db)
    assert caught.value.conflicts == {"doc_history": 1}
    assert [r["version"] for r in _history(db)] == [0]
    assert cast(Any, db.session.get(Doc, 1)).version == 1


def test_merge_puts_imported_versions_first(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """With ``merge`` the imported versions come first and existing ones move after them."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    doc.title = "edited after adoption"
    db.session.commit()
    summary = _run(db, merge=True)
    assert summary.merged == 1
    rows = [r for r in _history(db) if r["id"] == 1]
    assert [(r["version"], r["title"]) for r in rows] == [
        (0, "first"),
        (1, "second"),
        (2, "second"),
    ]
    assert "imported" not in rows[2]["change_info"]
    db.session.expire_all()
    assert cast(Any, db.session.get(Doc, 1)).version == 3
    assert _run(db, merge=True).keys == 0


def test_cli_imports_and_prints_a_summary(
    app: Flask, db: VersionedSQLAlchemy, Doc: type[Any]
) -> None:
    """``flask chrononaut import-activity`` converts and summarises; ``--dry-run`` says so."""
    runner = app.test_cli_runner()
    dry = runner.invoke(import_activity_command, ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.stdout and _history(db) == []
    result = runner.invoke(import_activity_command, [])
    assert result.exit_code == 0, result.output
    assert "2 keys converted" in result.stdout
    assert "4 history rows were written" in result.stdout
    assert len(_history(db)) == 4


def test_cli_refuses_without_merge(app: Flask, db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """The command exits with an error naming ``--merge`` when history already exists."""
    doc = db.session.get(Doc, 3)
    assert doc is not None
    doc.title = "edited"
    db.session.commit()
    result = app.test_cli_runner().invoke(import_activity_command, [])
    assert result.exit_code == 1
    assert "--merge" in result.output
    merged = app.test_cli_runner().invoke(import_activity_command, ["--merge"])
    assert merged.exit_code == 0, merged.output


def test_cli_names_a_missing_activity_table(
    app: Flask, db: VersionedSQLAlchemy, Doc: type[Any]
) -> None:
    """A wrong ``--table`` is reported by name, not as a database traceback."""
    result = app.test_cli_runner().invoke(import_activity_command, ["--table", "activity"])
    assert result.exit_code == 1
    assert "no table 'activity' to import" in result.output


def test_joined_inheritance_rows_go_to_every_history_table(db: VersionedSQLAlchemy) -> None:
    """A joined-inheritance subclass's activity fills the base and the subclass history."""

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
    with db.engine.begin() as conn:
        conn.exec_driver_sql(ACTIVITY_DDL)
        conn.exec_driver_sql(
            """
            INSERT INTO chrononaut_activity (table_name, changed, version, key, data,
                                             user_info, extra_info)
            VALUES
             ('engineer', '2020-01-01 00:00:00+00', 0, '{"id": 5}',
              '{"id": 5, "kind": "engineer", "name": "e", "skill": "sql"}', '{}', '{}'),
             ('engineer', '2020-06-01 00:00:00+00', 1, '{"id": 5}',
              '{"id": 5, "kind": "engineer", "name": "e", "skill": "python"}',
              '{"user_id": 1, "remote_addr": null}', '{}');
            INSERT INTO staff (id, kind, name) VALUES (5, 'engineer', 'e');
            INSERT INTO engineer (id, skill) VALUES (5, 'python');
            """
        )
    try:
        summary = _run(db)
        assert summary.keys == 1 and summary.history_rows == 1
        engineer = db.session.get(Engineer, 5)
        assert engineer is not None
        assert engineer.version == 1
        assert [(v.version, v.name, v.skill) for v in engineer.versions()] == [(0, "e", "sql")]
    finally:
        db.session.remove()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE chrononaut_activity")


def test_imported_rows_get_valid_from(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """Each imported version begins at its own activity row's time; the live row at the
    newest one's, so the imported history reads correctly as of any instant."""
    _run(db)
    rows = [r for r in _history(db) if r["id"] in (1, 2)]
    assert [(r["id"], r["version"], r["valid_from"]) for r in rows] == [
        (1, 0, dt.datetime(2020, 1, 1, 10, tzinfo=UTC)),
        (1, 1, dt.datetime(2020, 2, 1, 11, tzinfo=UTC)),
        (2, 0, dt.datetime(2021, 1, 1, 9, tzinfo=UTC)),
        (2, 1, dt.datetime(2021, 1, 2, 9, tzinfo=UTC)),
    ]
    doc = db.session.get(Doc, 1)
    assert doc is not None
    assert doc.valid_from == dt.datetime(2020, 3, 1, 12, tzinfo=UTC)
    assert doc.version_at(dt.datetime(2019, 12, 31, tzinfo=UTC)) is None
    assert doc.version_at(dt.datetime(2020, 3, 2, tzinfo=UTC)) is doc


def test_imported_history_as_of(db: VersionedSQLAlchemy, Doc: type[Any]) -> None:
    """``as_of`` over imported history shows the table as 0.4 recorded it."""
    from chrononaut import as_of

    _run(db)
    Past = as_of(Doc, dt.datetime(2020, 2, 15, tzinfo=UTC))
    assert [(r.id, r.title) for r in db.session.scalars(sa.select(Past))] == [(1, "second")]
