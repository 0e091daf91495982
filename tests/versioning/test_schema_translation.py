"""SPEC §1: every statement Chrononaut sends goes through the session's Connection,
so ``schema_translate_map`` and engine events apply to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chrononaut import StaleWriteError, Versioned, versioned_session


@pytest.fixture()
def tenant(database_url: str) -> Iterator[tuple[Any, sa.Engine, Session]]:
    """``Doc`` (no schema in its MetaData) whose tables live in schema ``tenant_a``
    through the engine's ``schema_translate_map``; nothing in ``public``."""

    class Base(DeclarativeBase):
        pass

    class Doc(Base, Versioned):
        __tablename__ = "tdoc"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(40))

    plain = sa.create_engine(database_url)
    with plain.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS tenant_a CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA tenant_a"))
    engine = plain.execution_options(schema_translate_map={None: "tenant_a"})
    Base.metadata.create_all(engine)
    session = versioned_session(sessionmaker(bind=engine))()
    try:
        yield Doc, engine, session
    finally:
        session.close()
        with plain.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA tenant_a CASCADE"))
        plain.dispose()


def _history(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, version, title FROM tenant_a.tdoc_history"))
        return sorted(tuple(row) for row in rows)


def test_update_goes_to_translated_schema(tenant: tuple[Any, sa.Engine, Session]) -> None:
    """A one-record update writes history and bumps version in the translated schema."""
    Doc, engine, session = tenant
    doc = Doc(id=1, title="a")
    session.add(doc)
    session.commit()
    doc.title = "b"
    session.commit()
    assert doc.version == 1
    assert _history(engine) == [(1, 0, "a")]
    assert [v.title for v in doc.versions()] == ["a"]


def test_many_updates_go_to_translated_schema(tenant: tuple[Any, sa.Engine, Session]) -> None:
    """A many-record flush writes every history row in the translated schema."""
    Doc, engine, session = tenant
    docs = [Doc(id=i, title="a") for i in range(1, 6)]
    session.add_all(docs)
    session.commit()
    for doc in docs:
        assert doc.title == "a"
        doc.title = "b"
    session.commit()
    assert [d.version for d in docs] == [1] * 5
    assert _history(engine) == [(i, 0, "a") for i in range(1, 6)]


def test_delete_and_reinsert_in_translated_schema(
    tenant: tuple[Any, sa.Engine, Session],
) -> None:
    """Delete history and the re-used key's next version use the translated schema."""
    Doc, engine, session = tenant
    session.add(Doc(id=1, title="a"))
    session.commit()
    session.delete(session.get(Doc, 1))
    session.commit()
    again = Doc(id=1, title="c")
    session.add(again)
    session.commit()
    assert again.version == 1
    assert _history(engine) == [(1, 0, "a")]


def test_stale_write_in_translated_schema(tenant: tuple[Any, sa.Engine, Session]) -> None:
    """A stale update in the translated schema is a StaleWriteError, not a silent no-op."""
    Doc, engine, session = tenant
    doc = Doc(id=1, title="a")
    session.add(doc)
    session.commit()
    assert doc.version == 0
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tenant_a.tdoc SET version = 1"))
    doc.title = "b"
    with pytest.raises(StaleWriteError):
        session.commit()


def test_engine_events_see_every_statement(tenant: tuple[Any, sa.Engine, Session]) -> None:
    """``before_cursor_execute`` sees Chrononaut's statements, with translated names."""
    Doc, engine, session = tenant
    doc = Doc(id=1, title="a")
    session.add(doc)
    session.commit()
    assert doc.version == 0
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        doc.title = "b"
        session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    history_statements = [s for s in seen if "tdoc_history" in s]
    assert history_statements
    assert all("tenant_a.tdoc_history" in s for s in history_statements)
