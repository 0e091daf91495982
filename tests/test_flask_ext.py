"""VersionedSQLAlchemy through Flask-SQLAlchemy's public surface: its session class,
``app.extensions["chrononaut"]``, config read at each flush, and database URL rules.

CI runs this file on the newest Flask-SQLAlchemy (the main virtualenv) and on the
oldest one pyproject.toml allows (the oldest-stack step of .ci/run), so a change
upstream that breaks the integration is caught on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy.session import Session as FlaskSession

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy, _urls, history_class


def _model(db: VersionedSQLAlchemy) -> type[Any]:
    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "ext_note"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(80))

    db.create_all()
    return Note


@pytest.fixture()
def second_app(database_url: str) -> Iterator[Flask]:
    """Another app on the test database, with an app context pushed."""
    app = Flask("second")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    with app.app_context():
        yield app


def test_registered_in_app_extensions(app: Flask, db: VersionedSQLAlchemy) -> None:
    """``init_app`` stores the extension as ``app.extensions["chrononaut"]``."""
    assert app.extensions["chrononaut"] is db
    assert app.extensions["sqlalchemy"] is db


def test_init_app_later(second_app: Flask) -> None:
    """``VersionedSQLAlchemy()`` then ``init_app(app)`` registers it too."""
    db = VersionedSQLAlchemy()
    db.init_app(second_app)
    try:
        assert second_app.extensions["chrononaut"] is db
    finally:
        db.engine.dispose()


def test_sessions_are_flask_sqlalchemy_sessions(db: VersionedSQLAlchemy) -> None:
    """Sessions keep Flask-SQLAlchemy's session class (bind selection) as a base."""
    assert isinstance(db.session(), FlaskSession)
    assert isinstance(db.session.session_factory(), FlaskSession)


def test_own_session_class_is_kept(second_app: Flask) -> None:
    """A ``session_options["class_"]`` is the base of the extension's sessions."""

    class MySession(FlaskSession):
        pass

    db = VersionedSQLAlchemy(second_app, session_options={"class_": MySession})
    try:
        session = db.session()
        assert isinstance(session, MySession)
        assert type(session) is not MySession
        assert not getattr(MySession, "__chrononaut_versioned__", False)
    finally:
        db.session.remove()
        db.engine.dispose()


def test_own_session_class_captures(second_app: Flask) -> None:
    """Sessions of a given ``class_`` write history."""

    class MySession(FlaskSession):
        pass

    db = VersionedSQLAlchemy(second_app, session_options={"class_": MySession})
    try:
        note_cls = _model(db)
        note = note_cls(text="a")
        db.session.add(note)
        db.session.commit()
        note.text = "b"
        db.session.commit()
        history: Any = history_class(note_cls)  # its columns are made at run time
        assert db.session.scalars(sa.select(history.text)).all() == ["a"]
    finally:
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def test_config_read_at_each_flush(app: Flask, db: VersionedSQLAlchemy) -> None:
    """Changing ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO`` at run time applies from the next flush."""
    note_cls = _model(db)
    note = note_cls(text="a")
    db.session.add(note)
    db.session.commit()
    app.config["CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO"] = True
    note.text = "b"
    with pytest.raises(ChrononautException):
        db.session.flush()
    db.session.rollback()
    app.config["CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO"] = False
    note.text = "c"
    db.session.commit()
    assert note.version == 1


def test_plain_url_gets_installed_driver(database_url: str) -> None:
    """A plain ``postgresql://`` URL gets an installed driver written into the config."""
    app = Flask("plain")
    app.config["SQLALCHEMY_DATABASE_URI"] = (
        sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    db = VersionedSQLAlchemy(app)
    with app.app_context():
        try:
            assert db.engine.url.drivername in {"postgresql+psycopg2", "postgresql+psycopg"}
            assert app.config["SQLALCHEMY_DATABASE_URI"].startswith(db.engine.url.drivername)
        finally:
            db.engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_explicit_driver_kept(database_url: str, driver: str) -> None:
    """A URL naming its driver is used with that driver, in the URI and in binds."""
    url = sa.make_url(database_url).set(drivername=f"postgresql+{driver}")
    rendered = url.render_as_string(hide_password=False)
    app = Flask("explicit")
    app.config["SQLALCHEMY_DATABASE_URI"] = rendered
    app.config["SQLALCHEMY_BINDS"] = {"other": {"url": rendered}}
    db = VersionedSQLAlchemy(app)
    with app.app_context():
        try:
            assert db.engine.url.get_driver_name() == driver
            assert db.engines["other"].url.get_driver_name() == driver
            with db.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        finally:
            for engine in db.engines.values():
                engine.dispose()


def test_missing_explicit_driver_fails_clearly(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit driver that does not import is an error naming the fix, not a switch."""
    monkeypatch.setattr(_urls, "_driver_installed", lambda driver: driver != "psycopg")
    url = sa.make_url(database_url).set(drivername="postgresql+psycopg")
    app = Flask("missing")
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    with pytest.raises(ChrononautException, match=r"pip install 'psycopg\[binary\]'"):
        VersionedSQLAlchemy(app)
