"""Alembic autogenerate sees history tables and the version column (issue 5, item 1).

Each test compares a model version against a real database with Alembic's own
API, applies the generated operations with ``alembic.operations.Operations``,
and checks the result — so the migration a user would generate is the one tested.
"""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa
from alembic.operations import ops
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import Versioned, VersionedSQLAlchemy, versioned_session

from .migrate import described, diff, upgrade


def _columns(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def _article_v1(prefix: str) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Article(Base, Versioned):
        __tablename__ = f"{prefix}article"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        secret: Mapped[str | None] = mapped_column(sa.Text)

    return Article


def _article_v2(prefix: str, *, hidden: bool = False, body: bool = False) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Article(Base, Versioned):
        __tablename__ = f"{prefix}article"
        __chrononaut_hidden__ = ["secret"] if hidden else []
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        secret: Mapped[str | None] = mapped_column(sa.Text)
        if body:
            body_text: Mapped[str | None] = mapped_column("body", sa.Text)

    return Article


def test_empty_database_gets_both_tables(engine: sa.Engine, prefix: str) -> None:
    """From an empty database: the table with ``version`` and its history table are created."""
    model = _article_v1(prefix)
    applied = upgrade(engine, model.metadata, prefix)
    assert described(applied) == {
        ("create_table", f"{prefix}article", None),
        ("create_table", f"{prefix}article_history", None),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_changed"),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_ended"),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_legacy"),
    }
    assert _columns(engine, f"{prefix}article") == {
        "id",
        "title",
        "secret",
        "version",
        "valid_from",
    }
    assert _columns(engine, f"{prefix}article_history") == {
        "id",
        "title",
        "secret",
        "version",
        "valid_from",
        "changed",
        "change_info",
    }
    pk = sa.inspect(engine).get_pk_constraint(f"{prefix}article_history")
    assert pk["constrained_columns"] == ["id", "version"]


def test_upgraded_database_matches_models(engine: sa.Engine, prefix: str) -> None:
    """After the generated migration, autogenerate finds nothing more to do."""
    model = _article_v1(prefix)
    upgrade(engine, model.metadata, prefix)
    assert diff(engine, model.metadata, prefix) == []


def test_added_column_goes_to_both_tables(engine: sa.Engine, prefix: str) -> None:
    """A new tracked column is added to the table and to its history table."""
    upgrade(engine, _article_v1(prefix).metadata, prefix)
    model = _article_v2(prefix, body=True)
    applied = upgrade(engine, model.metadata, prefix)
    assert described(applied) == {
        ("add_column", f"{prefix}article", "body"),
        ("add_column", f"{prefix}article_history", "body"),
    }
    assert "body" in _columns(engine, f"{prefix}article_history")
    assert diff(engine, model.metadata, prefix) == []


def test_column_made_hidden_leaves_the_history_table_only(engine: sa.Engine, prefix: str) -> None:
    """Listing a column in ``__chrononaut_hidden__`` drops it from the history table only."""
    upgrade(engine, _article_v1(prefix).metadata, prefix)
    model = _article_v2(prefix, hidden=True)
    applied = upgrade(engine, model.metadata, prefix)
    assert described(applied) == {("drop_column", f"{prefix}article_history", "secret")}
    assert "secret" in _columns(engine, f"{prefix}article")
    assert "secret" not in _columns(engine, f"{prefix}article_history")


def test_existing_table_with_rows_becomes_versioned(engine: sa.Engine, prefix: str) -> None:
    """Making a populated model Versioned: rows get version 0 and history works at once."""

    class PlainBase(DeclarativeBase):
        pass

    class Plain(PlainBase):
        __tablename__ = f"{prefix}article"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        secret: Mapped[str | None] = mapped_column(sa.Text)

    upgrade(engine, PlainBase.metadata, prefix)
    with engine.begin() as conn:
        conn.execute(
            cast(sa.Table, Plain.__table__).insert(),
            [{"id": i, "title": f"t{i}"} for i in range(1, 4)],
        )

    model = _article_v1(prefix)
    applied = upgrade(engine, model.metadata, prefix)
    assert described(applied) == {
        ("add_column", f"{prefix}article", "version"),
        ("add_column", f"{prefix}article", "valid_from"),
        ("create_table", f"{prefix}article_history", None),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_changed"),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_ended"),
        ("create_index", f"{prefix}article_history", f"ix_{prefix}article_history_legacy"),
    }
    added = next(
        op for op in applied if isinstance(op, ops.AddColumnOp) and op.column.name == "version"
    )
    assert added.column.nullable is False
    assert str(added.column.server_default.arg) == "0"  # type: ignore[union-attr]
    with engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version FROM {prefix}article")).scalars().all()
    assert versions == [0, 0, 0]

    session = versioned_session(sessionmaker(engine))()
    article = session.get(model, 2)
    assert article is not None
    article.title = "changed"
    session.commit()
    assert article.version == 1
    assert [(v.version, v.title) for v in article.versions()] == [(0, "t2")]
    session.close()


def test_flask_models_need_no_setup_step(
    db: VersionedSQLAlchemy, engine: sa.Engine, prefix: str
) -> None:
    """``db.metadata`` holds every history table as soon as the classes exist (no
    session, no mapper configuration), joined-inheritance subclasses included."""

    class Staff(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = f"{prefix}staff"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "staff"}

    class Engineer(Staff):
        __tablename__ = f"{prefix}engineer"
        id = db.Column(db.Integer, db.ForeignKey(Staff.id), primary_key=True)
        skill = db.Column(db.Text)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    applied = upgrade(engine, db.metadata, prefix)
    assert described(applied) == {
        ("create_table", f"{prefix}staff", None),
        ("create_table", f"{prefix}staff_history", None),
        ("create_index", f"{prefix}staff_history", f"ix_{prefix}staff_history_changed"),
        ("create_index", f"{prefix}staff_history", f"ix_{prefix}staff_history_ended"),
        ("create_index", f"{prefix}staff_history", f"ix_{prefix}staff_history_legacy"),
        ("create_table", f"{prefix}engineer", None),
        ("create_table", f"{prefix}engineer_history", None),
    }
    assert _columns(engine, f"{prefix}engineer_history") == {"id", "skill", "version"}
    assert diff(engine, db.metadata, prefix) == []
