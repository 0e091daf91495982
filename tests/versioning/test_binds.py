"""SPEC §1: a Flask-SQLAlchemy ``__bind_key__`` model's history lives in its bind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import Versioned, VersionedSQLAlchemy


@pytest.fixture()
def second_url(server_url: sa.URL) -> Iterator[str]:
    """A second database on the test server, dropped afterwards."""
    name = f"chrononaut_bind_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_history_lives_in_the_models_bind(app: Flask, second_url: str) -> None:
    """History of a bound model is written to, and read from, its bind's database."""
    app.config["SQLALCHEMY_BINDS"] = {"archive": second_url}
    db = VersionedSQLAlchemy(app)

    class Record(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __bind_key__ = "archive"
        __tablename__ = "bound_record"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(40))

    db.create_all()
    try:
        record = Record(id=1, title="a")
        db.session.add(record)
        db.session.commit()
        record.title = "b"
        db.session.commit()
        records = [Record(id=i, title="a") for i in (2, 3)]
        db.session.add_all(records)
        db.session.commit()
        for other in records:
            assert other.title == "a"
            other.title = "b"
        db.session.delete(record)
        db.session.commit()
        with db.engines["archive"].connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, version FROM bound_record_history ORDER BY id, version")
            ).all()
        assert [tuple(r) for r in rows] == [(1, 0), (1, 1), (2, 0), (3, 0)]
        with db.engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        assert [v.version for v in records[0].versions()] == [0]
    finally:
        db.session.remove()
        db.drop_all()
        for engine in db.engines.values():
            engine.dispose()
