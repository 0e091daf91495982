"""SPEC §1: which sessions capture history — VersionedSQLAlchemy's sessions,
``versioned_session`` for plain SQLAlchemy — and which do not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chrononaut import (
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    extra_change_info,
    history_class,
    versioned_session,
)


def _count(db: Any, table: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_subclasses_flask_sqlalchemy() -> None:
    """``VersionedSQLAlchemy`` is a ``flask_sqlalchemy.SQLAlchemy``."""
    assert issubclass(VersionedSQLAlchemy, SQLAlchemy)


def test_db_session_captures(db: VersionedSQLAlchemy, make_user: Any, history_rows: Any) -> None:
    """``db.session`` writes history for ``Versioned`` models."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    assert len(history_rows("appuser_history")) == 1


def test_session_factory_session_captures(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, history_rows: Any
) -> None:
    """A session from ``db.session.session_factory()`` writes history too."""
    user_id = make_user(name="alice").id
    session = db.session.session_factory()
    try:
        cast(Any, session.get(User, user_id)).name = "bob"
        session.commit()
    finally:
        session.close()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice")]


def test_session_factory_session_bumps_version(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A session from ``db.session.session_factory()`` bumps ``version``."""
    user_id = make_user(name="alice").id
    session = db.session.session_factory()
    try:
        user = session.get(User, user_id)
        assert user is not None
        user.name = "bob"
        session.commit()
        assert user.version == 1
    finally:
        session.close()


def test_init_app_pattern(database_url: str) -> None:
    """``VersionedSQLAlchemy()`` + ``init_app(app)`` captures history like the constructor form."""
    db = VersionedSQLAlchemy()

    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = f"note_{uuid.uuid4().hex[:8]}"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String(80))

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)
    with app.app_context():
        db.create_all()
        try:
            note = Note(text="a")
            db.session.add(note)
            db.session.commit()
            note.text = "b"
            db.session.commit()
            assert [h.text for h in note.versions()] == ["a"]
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.fixture()
def second_app(database_url: str) -> Flask:
    """Another Flask app on the same database (no context pushed)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    return app


def test_plain_flask_sqlalchemy_does_not_capture(
    second_app: Flask, db: VersionedSQLAlchemy
) -> None:
    """A plain ``flask_sqlalchemy.SQLAlchemy`` in the same process writes no history."""
    plain = SQLAlchemy(second_app)

    class Memo(plain.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "memo_plain"
        id = plain.Column(plain.Integer, primary_key=True)
        text = plain.Column(plain.String(80))

    with second_app.app_context():
        plain.create_all()
        try:
            memo = Memo(text="a")
            plain.session.add(memo)
            plain.session.commit()
            memo.text = "b"
            plain.session.commit()
            assert _count(plain, "memo_plain_history") == 0
        finally:
            plain.session.remove()
            plain.drop_all()
            plain.engine.dispose()


def test_two_versioned_dbs_independent_config(
    second_app: Flask, db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Config of one ``VersionedSQLAlchemy`` app does not leak into another one's sessions."""
    second_app.config["CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO"] = True
    second_app.config["CHRONONAUT_EXTRA_CHANGE_INFO_FUNC"] = lambda: {"app": "second"}
    other = VersionedSQLAlchemy(second_app)
    try:
        user = make_user()
        user.name = "bob"
        db.session.commit()
        assert user.previous_version().change_info == {"user_id": None, "remote_addr": None}
    finally:
        with second_app.app_context():
            other.session.remove()
            other.engine.dispose()


def test_two_versioned_dbs_both_capture(
    second_app: Flask, db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Two ``VersionedSQLAlchemy`` instances each capture their own models' history."""
    other = VersionedSQLAlchemy(second_app)

    class Memo(other.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "memo_other"
        id = other.Column(other.Integer, primary_key=True)
        text = other.Column(other.String(80))

    user = make_user()
    user.name = "bob"
    db.session.commit()
    with second_app.app_context():
        other.create_all()
        try:
            memo = Memo(text="a")
            other.session.add(memo)
            other.session.commit()
            memo.text = "b"
            other.session.commit()
            assert [h.text for h in memo.versions()] == ["a"]
        finally:
            other.session.remove()
            other.drop_all()
            other.engine.dispose()
    assert [h.name for h in user.versions()] == ["alice"]


def test_history_class_separate_per_db(
    second_app: Flask, db: VersionedSQLAlchemy, User: Any
) -> None:
    """A model of the same name on another db gets its own history class and table."""
    other = VersionedSQLAlchemy(second_app)

    class User2(other.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "appuser"
        id = other.Column(other.Integer, primary_key=True)

    assert history_class(User2) is not history_class(User)
    assert cast(Any, history_class(User2)).__table__.metadata is other.metadata
    assert cast(Any, history_class(User)).__table__.metadata is db.metadata


# plain SQLAlchemy


@pytest.fixture()
def plain(database_url: str) -> Iterator[tuple[Any, sa.Engine]]:
    """A ``Versioned`` model on a plain declarative base and an engine with its tables."""

    class Base(DeclarativeBase):
        pass

    class PlainDoc(Base, Versioned):
        __tablename__ = "plain_doc"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(80))

    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    try:
        yield PlainDoc, engine
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def _history_count(model: Any, engine: sa.Engine) -> int:
    table = cast(Any, history_class(model)).__table__
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _edit(model: Any, session: Session) -> Any:
    doc = model(title="a")
    session.add(doc)
    session.commit()
    doc.title = "b"
    session.commit()
    return doc


def test_versioned_session_sessionmaker(plain: tuple[Any, sa.Engine]) -> None:
    """``versioned_session(sessionmaker)`` makes its sessions capture history without Flask."""
    model, engine = plain
    factory = sessionmaker(bind=engine)
    versioned_session(factory)
    with factory() as session:
        doc = _edit(model, session)
        assert [(h.version, h.title) for h in doc.versions()] == [(0, "a")]
        assert doc.version == 1


def test_versioned_session_session_subclass(plain: tuple[Any, sa.Engine]) -> None:
    """``versioned_session(MySession)`` enables capture on ``MySession`` itself."""
    model, engine = plain

    class MySession(Session):
        pass

    versioned_session(MySession)
    with MySession(bind=engine) as session:
        doc = _edit(model, session)
        assert [h.title for h in doc.versions()] == ["a"]


def test_versioned_session_returns_usable_factory(plain: tuple[Any, sa.Engine]) -> None:
    """The factory ``versioned_session`` returns makes capturing sessions."""
    model, engine = plain

    class MySession(Session):
        pass

    factory = versioned_session(MySession)
    with factory(bind=engine) as session:
        doc = _edit(model, session)
        assert [h.title for h in doc.versions()] == ["a"]


def test_versioned_session_stale_write(plain: tuple[Any, sa.Engine]) -> None:
    """Sessions of a ``versioned_session`` factory raise ``StaleWriteError`` on a stale update."""
    model, engine = plain
    factory = versioned_session(sessionmaker(bind=engine))
    with factory() as first, factory() as second:
        doc = model(title="a")
        first.add(doc)
        first.commit()
        _ = doc.title
        cast(Any, second.get(model, doc.id)).title = "b"
        second.commit()
        doc.title = "c"
        with pytest.raises(StaleWriteError) as caught:
            first.commit()
        assert (caught.value.expected_version, caught.value.current_version) == (0, 1)


def test_plain_sessionmaker_does_not_capture(plain: tuple[Any, sa.Engine]) -> None:
    """A sessionmaker not passed to ``versioned_session`` writes no history."""
    model, engine = plain
    versioned_session(sessionmaker(bind=engine))
    with sessionmaker(bind=engine)() as session:
        _edit(model, session)
    assert _history_count(model, engine) == 0


def test_versioned_session_change_info_without_app(plain: tuple[Any, sa.Engine]) -> None:
    """Without any Flask app context, change_info and ``extra_change_info`` work."""
    model, engine = plain
    factory = sessionmaker(bind=engine)
    versioned_session(factory)
    with factory() as session:
        doc = model(title="a")
        session.add(doc)
        session.commit()
        doc.title = "b"
        with extra_change_info(job="nightly"):
            session.commit()
        assert doc.previous_version().change_info == {
            "user_id": None,
            "remote_addr": None,
            "extra": {"job": "nightly"},
        }


def test_plain_session_class_does_not_capture(
    plain: tuple[Any, sa.Engine], db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """With versioned factories in use, a bare ``sqlalchemy.orm.Session`` writes no history."""
    model, engine = plain
    versioned_session(sessionmaker(bind=engine))
    make_user().name = "bob"
    db.session.commit()
    with Session(bind=engine) as session:
        _edit(model, session)
    assert _history_count(model, engine) == 0


def _class_listeners(target: type[Any]) -> list[str]:
    """Names of events with a listener registered on the class ``target`` itself."""
    found: list[str] = []
    for name in target.dispatch._event_names:
        per_class = getattr(getattr(target.dispatch, name), "_clslevel", {})
        found.extend(name for _ in per_class.get(target, ()))
    return found


def test_no_global_listeners(
    plain: tuple[Any, sa.Engine], db: VersionedSQLAlchemy, make_user: Any
) -> None:
    """Nothing is registered on the global ``Session``, ``Mapper`` or ``Engine`` classes."""
    versioned_session(sessionmaker(bind=plain[1]))
    make_user().name = "bob"
    db.session.commit()
    for target in (Session, sa.orm.Mapper, sa.engine.Engine, sa.engine.Connection):
        assert _class_listeners(target) == [], target
