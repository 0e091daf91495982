"""SPEC §2: changes made during the flush after Chrononaut's ``before_flush`` ran —
by an application's ``before_flush`` listener registered after it, a mapper
``before_update`` listener, an ``onupdate`` column — are versioned like any other:
one history row with the old values, a version bump, stale copies refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from chrononaut import StaleWriteError, Versioned, VersionedSQLAlchemy, suppress_versioning


@pytest.fixture()
def Folder(db: VersionedSQLAlchemy) -> type[Any]:
    """A Versioned parent with a tracked ``touched_by`` and an untracked ``views``."""

    class Folder(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "late_folder"
        __chrononaut_untracked__ = ["views"]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(20))
        touched_by = db.Column(db.String(20), default="creator")
        views = db.Column(db.Integer, default=0)

    return Folder


@pytest.fixture()
def Doc(db: VersionedSQLAlchemy, Folder: type[Any]) -> type[Any]:
    """A Versioned child of ``Folder``; tables created, folder 1 with doc 1 committed."""

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "late_doc"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(20))
        folder_id = db.Column(db.ForeignKey("late_folder.id"))
        folder = db.relationship(Folder)

    db.create_all()
    db.session.add(Doc(id=1, title="d", folder=Folder(id=1, name="f")))
    db.session.commit()
    return Doc


@pytest.fixture()
def touch_parent(db: VersionedSQLAlchemy, Doc: type[Any]) -> Iterator[None]:
    """An application ``before_flush`` listener, registered after Chrononaut's, that
    marks the folder of every changed doc as touched by the listener."""

    def touch(session: Session, flush_context: Any, instances: Any) -> None:
        for obj in list(session.dirty):
            if isinstance(obj, Doc):
                obj.folder.touched_by = "listener"

    event.listen(db.session, "before_flush", touch)
    yield
    event.remove(db.session, "before_flush", touch)


@pytest.mark.usefixtures("touch_parent")
def test_record_changed_by_later_before_flush_listener_is_versioned(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """A record a later before_flush listener changes gets its history row and bump."""
    doc = cast(Any, db.session.get(Doc, 1))
    doc.title = "d2"
    db.session.commit()
    folder = cast(Any, db.session.get(Folder, 1))
    assert (folder.touched_by, folder.version) == ("listener", 1)
    assert [(v.version, v.touched_by) for v in folder.versions()] == [(0, "creator")]
    assert folder.valid_from == folder.versions()[-1].changed


@pytest.mark.usefixtures("touch_parent")
def test_stale_copy_refused_after_a_listener_change(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """A copy loaded before the listener's change can't overwrite it."""
    other = db.session.session_factory()
    try:
        stale = cast(Any, other.get(Folder, 1))
        assert stale.version == 0
        cast(Any, db.session.get(Doc, 1)).title = "d2"
        db.session.commit()
        stale.name = "stale"
        with pytest.raises(StaleWriteError):
            other.commit()
    finally:
        other.close()


def test_listener_change_on_expired_record_keeps_old_value(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """A listener that sets a tracked column of an expired record without reading it,
    on a flush that changed only an untracked column, records the old value."""

    def stamp(session: Session, flush_context: Any, instances: Any) -> None:
        for obj in list(session.dirty):
            if isinstance(obj, Folder):
                obj.touched_by = "listener"

    event.listen(db.session, "before_flush", stamp)
    try:
        folder = cast(Any, db.session.get(Folder, 1))
        db.session.commit()  # expires it
        folder.views = 5  # set without loading anything
        db.session.commit()
    finally:
        event.remove(db.session, "before_flush", stamp)
    assert [(v.version, v.touched_by, v.name) for v in folder.versions()] == [(0, "creator", "f")]
    assert (folder.version, folder.touched_by, folder.views) == (1, "listener", 5)


def test_listener_change_of_a_changed_record_is_one_version(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """A listener's change to a record the flush changes anyway joins that version."""

    def stamp(session: Session, flush_context: Any, instances: Any) -> None:
        for obj in list(session.dirty):
            if isinstance(obj, Folder):
                obj.touched_by = "listener"

    event.listen(db.session, "before_flush", stamp)
    try:
        folder = cast(Any, db.session.get(Folder, 1))
        folder.name = "f2"
        db.session.commit()
    finally:
        event.remove(db.session, "before_flush", stamp)
    assert folder.version == 1
    assert [(v.name, v.touched_by) for v in folder.versions()] == [("f", "creator")]


def test_mapper_before_update_listener_change_is_versioned(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """A mapper before_update listener that sets a tracked column on a flush that
    changed only an untracked one: history row of the old value, version bumped."""

    def stamp(mapper: Any, connection: Any, target: Any) -> None:
        target.touched_by = "before_update"

    event.listen(Folder, "before_update", stamp)
    try:
        folder = cast(Any, db.session.get(Folder, 1))
        folder.views = 3
        db.session.commit()
    finally:
        event.remove(Folder, "before_update", stamp)
    assert (folder.version, folder.touched_by) == (1, "before_update")
    assert [v.touched_by for v in folder.versions()] == ["creator"]


def test_onupdate_tracked_column_versions_untracked_only_changes(
    db: VersionedSQLAlchemy,
) -> None:
    """A tracked column with ``onupdate`` changes on every UPDATE: a flush changing
    only an untracked column is then a tracked change, written before it."""

    class Stamped(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "late_stamped"
        __chrononaut_untracked__ = ["views"]
        id = db.Column(db.Integer, primary_key=True)
        views = db.Column(db.Integer, default=0)
        edits = db.Column(db.Integer, default=0, onupdate=sa.text("edits + 1"))

    db.create_all()
    record = cast(Any, Stamped(id=1))
    db.session.add(record)
    db.session.commit()
    before = dt.datetime.now(dt.timezone.utc)
    record.views = 1
    db.session.commit()
    assert (record.version, record.edits) == (1, 1)
    assert [(v.version, v.edits) for v in record.versions()] == [(0, 0)]
    assert record.version_at(before).edits == 0


@pytest.mark.usefixtures("touch_parent")
def test_listener_changes_under_suppress_versioning_write_nothing(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """suppress_versioning() covers the whole flush, listeners' changes included."""
    with suppress_versioning():
        cast(Any, db.session.get(Doc, 1)).title = "d2"
        db.session.commit()
    folder = cast(Any, db.session.get(Folder, 1))
    assert (folder.touched_by, folder.version, folder.versions()) == ("listener", 0, [])


def test_untracked_only_flush_sends_no_version_statement(
    db: VersionedSQLAlchemy, Doc: Any, Folder: Any
) -> None:
    """Without listeners, a flush changing only an untracked column sends just the
    UPDATE (the after-update report costs no statement)."""
    folder = cast(Any, db.session.get(Folder, 1))
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        folder.views = 9
        db.session.flush()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert len(sent) == 1 and sent[0].startswith("UPDATE late_folder SET views")
    db.session.commit()
    assert folder.version == 0
