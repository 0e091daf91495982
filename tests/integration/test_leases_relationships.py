"""Edit leases on records changed through relationships (SPEC §2 relationships, §4)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import (
    RecordLeasedError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    append_change_info,
    suppress_versioning,
)


def _models(db: VersionedSQLAlchemy, *, backref: bool, orphans: bool = False) -> tuple[Any, Any]:
    """Club 1..2 (not leased) and a leased Member 1 in club 1, committed."""

    class Club(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_club"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))
        members = db.relationship(
            "Member",
            back_populates="club" if backref else None,
            cascade="all, delete-orphan" if orphans else "save-update, merge",
        )

    class Member(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_member"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(20))
        club_id = sa.Column(sa.Integer, sa.ForeignKey("int_club.id"))
        if backref:
            club = db.relationship(Club, back_populates="members")

    db.create_all()
    db.session.add_all([Club(id=1, name="a"), Club(id=2, name="b")])
    db.session.add(Member(id=1, name="m", club_id=1))
    db.session.commit()
    other = db.session.session_factory()
    try:
        with acting_as("alice"):
            cast(Any, other.get(Member, 1)).lease()
    finally:
        other.close()
    return Club, Member


def _club_of(db: VersionedSQLAlchemy) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT club_id FROM int_member WHERE id = 1")).scalar()


def test_many_to_one_assignment_refused(db: VersionedSQLAlchemy) -> None:
    """Another user's ``member.club = other`` of a leased member is refused."""
    Club, Member = _models(db, backref=True)
    member = cast(Any, db.session.get(Member, 1))
    member.club = db.session.get(Club, 2)
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
    assert _club_of(db) == 1


def test_many_to_one_to_none_refused(db: VersionedSQLAlchemy) -> None:
    """Another user's ``member.club = None`` of a leased member is refused."""
    _, Member = _models(db, backref=True)
    member = cast(Any, db.session.get(Member, 1))
    member.club = None
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
    assert _club_of(db) == 1


def test_collection_move_without_backref_refused(db: VersionedSQLAlchemy) -> None:
    """Moving a leased member between collections (no backref) is refused."""
    Club, Member = _models(db, backref=False)
    member = cast(Any, db.session.get(Member, 1))
    one, two = cast(Any, db.session.get(Club, 1)), cast(Any, db.session.get(Club, 2))
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        one.members.remove(member)
        two.members.append(member)  # its lazy load autoflushes the removal
        db.session.commit()
    db.session.rollback()
    assert _club_of(db) == 1


def test_orphan_delete_refused(db: VersionedSQLAlchemy) -> None:
    """Removing a leased member from a delete-orphan collection (a delete) is refused."""
    Club, _ = _models(db, backref=True, orphans=True)
    club = cast(Any, db.session.get(Club, 1))
    club.members.clear()
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
    assert _club_of(db) == 1


def test_cascade_delete_refused(db: VersionedSQLAlchemy) -> None:
    """Deleting a club whose delete cascades to a leased member is refused."""
    Club, _ = _models(db, backref=True, orphans=True)
    db.session.delete(db.session.get(Club, 1))
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        db.session.commit()
    db.session.rollback()
    assert _club_of(db) == 1


def test_holder_collection_move_records_lease(db: VersionedSQLAlchemy) -> None:
    """The holder's move of its leased member between collections carries the lease."""
    Club, Member = _models(db, backref=False)
    member = cast(Any, db.session.get(Member, 1))
    one, two = cast(Any, db.session.get(Club, 1)), cast(Any, db.session.get(Club, 2))
    with acting_as("alice"):
        one.members.remove(member)
        two.members.append(member)
        db.session.commit()
    assert _club_of(db) == 2
    assert member.versions()[-1].change_info["lease"]["user_id"] == "alice"


def test_holder_move_under_suppress_marks_no_old_row(db: VersionedSQLAlchemy) -> None:
    """The holder's suppressed move writes no row and adds the lease to no older row."""
    Club, Member = _models(db, backref=False)
    member = cast(Any, db.session.get(Member, 1))
    with acting_as("carol"):
        member.release_lease(member.lease(force=True).token)
        member.name = "x"  # an older row, written without a lease
        db.session.commit()
        member.lease()
    with acting_as("carol"), suppress_versioning():
        one, two = cast(Any, db.session.get(Club, 1)), cast(Any, db.session.get(Club, 2))
        one.members.remove(member)
        two.members.append(member)
        db.session.commit()
    assert _club_of(db) == 2
    assert ["lease" in v.change_info for v in member.versions()] == [False]


def test_holder_orphan_delete_deletes_lease(db: VersionedSQLAlchemy) -> None:
    """The holder deleting its leased member as an orphan deletes the lease too."""
    Club, _ = _models(db, backref=True, orphans=True)
    club = cast(Any, db.session.get(Club, 1))
    with acting_as("alice"):
        club.members.clear()
        db.session.commit()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chrononaut_lease")).scalar() == 0


def test_holder_move_under_lock_with_appended_info(db: VersionedSQLAlchemy) -> None:
    """A holder's move inside lock() carries lock and lease; appended info goes once."""
    Club, Member = _models(db, backref=False)
    member = cast(Any, db.session.get(Member, 1))
    one, two = cast(Any, db.session.get(Club, 1)), cast(Any, db.session.get(Club, 2))
    with acting_as("alice"):
        append_change_info(member, why="move")
        with member.lock():
            one.members.remove(member)
            two.members.append(member)  # autoflushes the removal: two rows
    infos = [v.change_info for v in member.versions()]
    assert [("lock" in i, "lease" in i, i.get("extra")) for i in infos] == [
        (True, True, {"why": "move"}),
        (True, True, None),
    ]
