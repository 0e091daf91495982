"""History tables of the original Chrononaut 0.1/0.2 are read as they are (issue 5, item 2).

0.1/0.2 wrote ``<table>_history`` tables of the same shape and meaning as this
library's: copied columns, ``version`` (in the primary key with the model's key),
``changed`` and JSONB ``change_info``, one row per *prior* state. Differences:
the live table's ``version`` was nullable (rows older than the mixin hold NULL)
and ``changed`` was nullable. The documented migration: set NULL versions to 0,
then apply what Alembic autogenerates.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import Versioned, acting_as, versioned_session

from .migrate import described, diff, upgrade

UTC = dt.timezone.utc

# The shape 0.2 created (compare the original project's v0.1 test seed), and rows
# the way it wrote them: todo 1 changed twice, todo 2 older than the mixin.
LEGACY = """
CREATE TABLE {p}todos (
    id SERIAL PRIMARY KEY,
    title VARCHAR(60) NOT NULL,
    text TEXT,
    done BOOLEAN,
    secret TEXT,
    version INTEGER
);
CREATE TABLE {p}todos_history (
    id INTEGER NOT NULL,
    title VARCHAR(60),
    text TEXT,
    done BOOLEAN,
    version INTEGER,
    changed TIMESTAMP WITH TIME ZONE,
    change_info JSONB,
    PRIMARY KEY (id, version)
);
INSERT INTO {p}todos_history (id, title, text, done, version, changed, change_info) VALUES
 (1, 'Todo #1', 'Tpyo', false, 0, '2016-06-22 20:44:52.134125+00',
  '{{"user_id": 42, "remote_addr": null}}'),
 (1, 'Todo #1', 'Typo fixed', false, 1, '2016-06-22 22:55:00.134125+00',
  '{{"user_id": 42, "remote_addr": "10.1.1.1", "extra": {{"rationale": "done at last"}},
    "hidden_cols_changed": ["secret"]}}');
INSERT INTO {p}todos (id, title, text, done, secret, version) VALUES
 (1, 'Todo #1', 'Typo fixed', true, 's', 2),
 (2, 'Todo #2', 'older than the mixin', false, NULL, NULL);
SELECT setval('{p}todos_id_seq', 2);
"""


def _model(prefix: str) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Todo(Base, Versioned):
        __tablename__ = f"{prefix}todos"
        __chrononaut_hidden__ = ["secret"]
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(60))
        text: Mapped[str | None] = mapped_column(sa.Text)
        done: Mapped[bool | None] = mapped_column(sa.Boolean)
        secret: Mapped[str | None] = mapped_column(sa.Text)

    return Todo


def _adopt(engine: sa.Engine, prefix: str) -> tuple[type[Any], Any]:
    with engine.begin() as conn:
        conn.exec_driver_sql(LEGACY.format(p=prefix))
    model = _model(prefix)
    with engine.begin() as conn:
        # The one hand-written step: 0.2 left NULL versions on rows older than the mixin.
        conn.execute(sa.text(f"UPDATE {prefix}todos SET version = 0 WHERE version IS NULL"))
    upgrade(engine, model.metadata, prefix)
    return model, versioned_session(sessionmaker(engine))()


def test_autogenerate_only_tightens_nullability(engine: sa.Engine, prefix: str) -> None:
    """Against 0.2's tables Alembic proposes NOT NULL on two columns, the (key, changed)
    index and table comments only."""
    with engine.begin() as conn:
        conn.exec_driver_sql(LEGACY.format(p=prefix))
    model = _model(prefix)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {prefix}todos SET version = 0 WHERE version IS NULL"))
    applied = upgrade(engine, model.metadata, prefix)
    assert described(applied) == {
        ("alter_column", f"{prefix}todos", "version"),
        ("alter_column", f"{prefix}todos_history", "changed"),
        ("CreateTableCommentOp", f"{prefix}todos_history", None),
        ("create_index", f"{prefix}todos_history", f"ix_{prefix}todos_history_changed"),
        # valid_from (0.5): nullable, so 0.2's rows keep NULL; and its indexes.
        ("add_column", f"{prefix}todos", "valid_from"),
        ("add_column", f"{prefix}todos_history", "valid_from"),
        ("create_index", f"{prefix}todos_history", f"ix_{prefix}todos_history_ended"),
        ("create_index", f"{prefix}todos_history", f"ix_{prefix}todos_history_legacy"),
    }
    assert diff(engine, model.metadata, prefix) == []


def test_legacy_history_reads_as_it_is(engine: sa.Engine, prefix: str) -> None:
    """versions(), version_at() and diff() read the rows 0.2 wrote."""
    model, session = _adopt(engine, prefix)
    todo = session.get(model, 1)
    assert [(v.version, v.text) for v in todo.versions()] == [(0, "Tpyo"), (1, "Typo fixed")]
    assert todo.version_at(dt.datetime(2016, 6, 22, 21, tzinfo=UTC)).text == "Typo fixed"
    assert todo.version_at(dt.datetime(2016, 6, 22, 20, tzinfo=UTC)).text == "Tpyo"
    assert todo.diff(todo.versions()[0], include_hidden=True) == {
        "text": ("Tpyo", "Typo fixed"),
        "done": (False, True),
        "secret": (None, None),
    }
    assert todo.versions()[1].change_info["extra"] == {"rationale": "done at last"}
    session.close()


def test_new_changes_continue_the_legacy_sequence(engine: sa.Engine, prefix: str) -> None:
    """The next change writes version 2 after 0.2's rows; old rows start at version 0."""
    model, session = _adopt(engine, prefix)
    todo, older = session.get(model, 1), session.get(model, 2)
    with acting_as("7"):
        todo.title = "Todo #1 renamed"
        older.done = True
        session.commit()
    assert [v.version for v in todo.versions()] == [0, 1, 2]
    assert todo.versions()[2].title == "Todo #1" and todo.version == 3
    assert [(v.version, v.done) for v in older.versions()] == [(0, False)]
    assert older.version == 1
    session.close()
