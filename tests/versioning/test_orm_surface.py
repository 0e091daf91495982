"""SPEC §2 across more of the ORM surface: key types, mutable JSON, deferred and
expired columns, merge(), savepoints, autoflush and expire_on_commit settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapper, deferred

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy
from tests.versioning.conftest import HistoryReader


def _selects(engine: sa.Engine) -> tuple[list[str], Any]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: event.remove(engine, "before_cursor_execute", record)


def test_composite_primary_key(db: VersionedSQLAlchemy, history_rows: HistoryReader) -> None:
    """A composite primary key keys the history rows; updates and deletes are captured."""

    class Cell(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "cell"
        row = db.Column(db.Integer, primary_key=True)
        col = db.Column(db.String(2), primary_key=True)
        value = db.Column(db.Integer)

    db.create_all()
    cells = [Cell(row=1, col="a", value=0), Cell(row=1, col="b", value=0)]
    db.session.add_all(cells)
    db.session.commit()
    for cell in cells:
        cell.value = 1
    db.session.commit()
    db.session.delete(cells[0])
    db.session.commit()
    rows = history_rows("cell_history", order_by="row, col, version")
    assert [(r["col"], r["version"], r["value"]) for r in rows] == [
        ("a", 0, 0),
        ("a", 1, 1),
        ("b", 0, 0),
    ]
    assert [v.value for v in cells[1].versions()] == [0]


def test_uuid_primary_key(db: VersionedSQLAlchemy) -> None:
    """A UUID primary key works for one and many records."""

    class Token(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "token"
        id = db.Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
        label = db.Column(db.String(10))

    db.create_all()
    tokens = [Token(label="a") for _ in range(3)]
    db.session.add_all(tokens)
    db.session.commit()
    tokens[0].label = "b"
    db.session.commit()
    for token in tokens:
        token.label = "c"
    db.session.commit()
    assert [t.version for t in tokens] == [2, 1, 1]
    assert [v.label for v in tokens[0].versions()] == ["a", "b"]


@pytest.fixture()
def mapper_listeners_restored() -> Iterator[None]:
    """Remove the global ``mapper_configured`` listeners the test adds: importing
    ``sqlalchemy.ext.mutable`` and ``MutableDict.as_mutable`` register them on
    ``Mapper`` (SQLAlchemy itself, not Chrononaut)."""
    dispatch = cast(Any, Mapper).dispatch.mapper_configured
    before = list(dispatch._clslevel.get(Mapper, ()))
    yield
    registered = dispatch._clslevel.get(Mapper)
    for listener in list(registered or ()):
        if listener not in before:
            registered.remove(listener)


@pytest.mark.usefixtures("mapper_listeners_restored")
def test_mutable_dict_in_place_change(db: VersionedSQLAlchemy) -> None:
    """An in-place change of a MutableDict JSON column writes the old document."""
    # Imported here: importing it registers a global Mapper listener (SQLAlchemy's).
    from sqlalchemy.ext.mutable import MutableDict

    class Setting(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "setting"
        id = db.Column(db.Integer, primary_key=True)
        data = db.Column(MutableDict.as_mutable(JSONB))

    db.create_all()
    setting = Setting(id=1, data={"a": 1})
    db.session.add(setting)
    db.session.commit()
    setting.data["a"] = 2
    db.session.commit()
    assert setting.version == 1
    assert [v.data for v in setting.versions()] == [{"a": 1}]


@pytest.mark.usefixtures("mapper_listeners_restored")
def test_mutable_value_of_history_record_is_read_only(db: VersionedSQLAlchemy) -> None:
    """Changing a MutableDict value of a history record in place raises at once and
    leaves nothing pending; restore() gives the live record a copy of its own."""
    from sqlalchemy.ext.mutable import MutableDict

    class Prefs(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "ro_prefs"
        id = db.Column(db.Integer, primary_key=True)
        data = db.Column(MutableDict.as_mutable(JSONB))

    db.create_all()
    record = Prefs(id=1, data={"k": 1})
    db.session.add(record)
    db.session.commit()
    record.data["k"] = 2
    db.session.commit()
    (old,) = cast(Any, record).versions()
    with pytest.raises(ChrononautException, match="read-only"):
        old.data["k"] = 99
    assert not db.session.dirty
    assert old.data == {"k": 1}  # read from the history row again
    cast(Any, record).restore(old)
    assert record.data is not old.data
    record.data["extra"] = True  # in place, on the live record's own copy
    db.session.commit()
    assert record.data == {"k": 1, "extra": True}
    assert [v.data for v in cast(Any, record).versions()] == [{"k": 1}, {"k": 2}]


@pytest.fixture()
def Article(db: VersionedSQLAlchemy) -> Any:
    """A model with a deferred tracked column ``body``."""

    class Article(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "article"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(20))
        body = deferred(db.Column(db.Text))

    db.create_all()
    return Article


def test_deferred_column_one_select_for_many(
    db: VersionedSQLAlchemy, Article: Any, history_rows: HistoryReader
) -> None:
    """Deferred tracked columns of ten changed records cost one SELECT, not ten."""
    db.session.add_all([Article(id=i, title="t", body=f"b{i}") for i in range(10)])
    db.session.commit()
    db.session.expunge_all()
    articles = db.session.scalars(sa.select(Article).order_by(Article.id)).all()
    seen, stop = _selects(db.engine)
    try:
        for article in articles:
            article.title = "u"
        db.session.flush()
    finally:
        stop()
    assert seen.count("SELECT") <= 1
    db.session.commit()
    rows = history_rows("article_history")
    assert [(r["title"], r["body"]) for r in rows] == [("t", f"b{i}") for i in range(10)]


def test_deferred_column_change(
    db: VersionedSQLAlchemy, Article: Any, history_rows: HistoryReader
) -> None:
    """Setting a deferred column that was never loaded records its old value."""
    db.session.add(Article(id=1, title="t", body="old"))
    db.session.commit()
    db.session.expunge_all()
    article = db.session.get(Article, 1)
    assert article is not None
    article.body = "new"
    db.session.commit()
    assert article.version == 1
    assert [r["body"] for r in history_rows("article_history")] == ["old"]


def test_expired_deletes_one_select(
    db: VersionedSQLAlchemy, Article: Any, history_rows: HistoryReader
) -> None:
    """Deleting ten expired records loads their final values with one SELECT."""
    articles = [Article(id=i, title="t", body="b") for i in range(10)]
    db.session.add_all(articles)
    db.session.commit()
    seen, stop = _selects(db.engine)
    try:
        for article in articles:
            db.session.delete(article)
        db.session.flush()
    finally:
        stop()
    assert seen.count("SELECT") == 1
    db.session.commit()
    assert len(history_rows("article_history")) == 10


def test_merge_of_detached_copy(db: VersionedSQLAlchemy, history_rows: HistoryReader) -> None:
    """``merge()`` of a changed detached copy writes history like a direct change."""

    class Memo(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "memo"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(20))

    db.create_all()
    memo = Memo(id=1, text="a")
    db.session.add(memo)
    db.session.commit()
    assert memo.text == "a"
    db.session.expunge(memo)
    memo.text = "b"
    merged = db.session.merge(memo)
    db.session.commit()
    assert merged.version == 1
    assert [(r["version"], r["text"]) for r in history_rows("memo_history")] == [(0, "a")]


def test_savepoint_rolled_back_leaves_nothing(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: HistoryReader
) -> None:
    """A change flushed in a rolled-back savepoint leaves no history and no bump."""
    user = make_user(name="alice")
    nested = db.session.begin_nested()
    user.name = "bob"
    db.session.flush()
    nested.rollback()
    db.session.commit()
    assert (user.name, user.version) == ("alice", 0)
    assert history_rows("appuser_history") == []


@pytest.fixture(params=[{"autoflush": False}, {"expire_on_commit": False}])
def tuned_db(request: pytest.FixtureRequest, app: Flask) -> Iterator[VersionedSQLAlchemy]:
    """A db whose sessions use a non-default ``autoflush`` / ``expire_on_commit``."""
    db = VersionedSQLAlchemy(app, session_options=request.param)
    try:
        yield db
    finally:
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def test_session_options(tuned_db: VersionedSQLAlchemy) -> None:
    """History and versions are the same with autoflush or expire_on_commit off."""
    db = tuned_db

    class Entry(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "entry"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(20))

    db.create_all()
    entry = Entry(id=1, text="a")
    db.session.add(entry)
    db.session.commit()
    for text in ("b", "c"):
        entry.text = text
        db.session.commit()
    assert entry.version == 2
    assert [v.text for v in entry.versions()] == ["a", "b"]


def test_declarative_with_imperative_table(db: VersionedSQLAlchemy) -> None:
    """A model given its ``Table`` (``__table__``) gets ``version`` and
    ``valid_from`` appended to it, and is versioned like any other."""
    table = sa.Table(
        "imperative_rec",
        db.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20)),
    )

    class Rec(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __table__ = table

    assert {"version", "valid_from"} <= set(table.c.keys())
    db.create_all()
    record = Rec(id=1, name="a")
    db.session.add(record)
    db.session.commit()
    record.name = "b"
    db.session.commit()
    assert record.version == 1
    assert [(h.version, h.name) for h in record.versions()] == [(0, "a")]


def test_restore_skips_generated_columns(db: VersionedSQLAlchemy) -> None:
    """restore() leaves Computed columns to the database: the restored version's
    stored values come back, the generated one recomputed."""

    class Priced(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "restore_priced"
        id = db.Column(db.Integer, primary_key=True)
        price = db.Column(db.Integer)
        doubled = db.Column(db.Integer, sa.Computed("price * 2", persisted=True))

    db.create_all()
    record = cast(Any, Priced(id=1, price=1))
    db.session.add(record)
    db.session.commit()
    record.price = 2
    db.session.commit()
    record.restore(0)
    db.session.commit()
    assert (record.price, record.doubled, record.version) == (1, 2, 2)
    assert [(v.price, v.doubled) for v in record.versions()] == [(1, 2), (2, 4)]
