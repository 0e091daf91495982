"""SPEC §2/§5/§6: a copy left stale by an ORM bulk statement of its own transaction
(``synchronize_session=False``) fails with an explained StaleWriteError.

The failed flush rolls that transaction back, bulk statement included, so the
error is built before the rollback. Each test runs on the one-statement path
(``Note``) and on SQLAlchemy's own version-checked UPDATE (``Stamped``, which has
an ``onupdate`` column, and ``Dog``, a joined-inheritance subclass).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import StaleWriteError, Versioned, VersionedSQLAlchemy, acting_as
from chrononaut.versioning import _capture as capture

#: statements a successful flush of one changed record sends, per model (Note's
#: one-statement path; the suite also runs with it turned off: then 2)
_FLUSH_STATEMENTS = {"Note": 1, "Stamped": 2, "Dog": 3}


def _models(db: VersionedSQLAlchemy) -> dict[str, Any]:
    class Note(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "stx_note"
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(40))

    class Stamped(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "stx_stamped"
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(40))
        touched = sa.Column(sa.Integer, default=0, onupdate=sa.text("1"))

    class Animal(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "stx_animal"
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(40))
        kind = sa.Column(sa.String(20), nullable=False)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "animal"}

    class Dog(Animal):
        __tablename__ = "stx_dog"
        id = sa.Column(sa.Integer, sa.ForeignKey("stx_animal.id"), primary_key=True)
        breed = sa.Column(sa.String(40))
        __mapper_args__ = {"polymorphic_identity": "dog"}

    db.create_all()
    return {"Note": Note, "Stamped": Stamped, "Dog": Dog}


@pytest.fixture(params=sorted(_FLUSH_STATEMENTS))
def model(request: pytest.FixtureRequest, db: VersionedSQLAlchemy) -> Any:
    """One model of each write path, with row 1 (title "a", version 0) committed."""
    cls = _models(db)[request.param]
    db.session.add(cls(id=1, title="a"))
    db.session.commit()
    db.session.remove()
    return cls


@pytest.fixture(params=["Note", "Stamped"])
def described(request: pytest.FixtureRequest, db: VersionedSQLAlchemy) -> Any:
    """``model`` for the fast path and the general path of one table.

    (A bulk UPDATE of the base class writes no history row of a joined subclass's
    own table, so a ``Dog``'s history reads nothing to describe.)
    """
    cls = _models(db)[request.param]
    db.session.add(cls(id=1, title="a"))
    db.session.commit()
    db.session.remove()
    return cls


@pytest.fixture()
def statements(db: VersionedSQLAlchemy) -> Iterator[list[str]]:
    """The SQL statements ``db.engine`` sends while the test runs."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


def _bump_in_bulk(db: VersionedSQLAlchemy, model: Any) -> None:
    """An ORM bulk UPDATE of row 1 that leaves loaded copies alone (on the base
    class: an UPDATE of a joined subclass cannot set a base-table column)."""
    base = sa.inspect(model).base_mapper.class_
    db.session.execute(
        sa.update(base).where(base.id == 1).values(title="b"),
        execution_options={"synchronize_session": False},
    )


def _stale_copy(db: VersionedSQLAlchemy, model: Any) -> Any:
    """Load row 1, bump it with an unsynchronised bulk UPDATE as bob, edit the copy."""
    record = cast(Any, db.session.get(model, 1))
    with acting_as("bob"):
        _bump_in_bulk(db, model)
    record.title = "c"
    return record


def _failed_flush(db: VersionedSQLAlchemy, model: Any) -> tuple[Any, StaleWriteError]:
    record = _stale_copy(db, model)
    with pytest.raises(StaleWriteError) as caught:
        db.session.flush()
    return record, caught.value


def test_versions_of_stale_copy(db: VersionedSQLAlchemy, model: Any) -> None:
    """The error names the copy's version and the version the transaction saw."""
    record, error = _failed_flush(db, model)
    db.session.rollback()
    assert (error.expected_version, error.current_version) == (0, 1)
    assert error.record is record


def test_changes_of_stale_copy(db: VersionedSQLAlchemy, described: Any) -> None:
    """The error lists the bulk UPDATE's history row: who changed which field."""
    _, error = _failed_flush(db, described)
    db.session.rollback()
    assert [change.change_info["user_id"] for change in error.changes] == ["bob"]
    # (Stamped's onupdate column changed with it.)
    assert error.changed_fields is not None and len(error.changed_fields) == 1
    assert "title" in error.changed_fields[0]


def test_message_of_stale_copy(db: VersionedSQLAlchemy, described: Any) -> None:
    """The message says who changed what and the versions involved."""
    _, error = _failed_flush(db, described)
    db.session.rollback()
    assert "is at version 1" in str(error) and "based on version 0" in str(error)
    assert "bob changed title" in str(error)


def test_stale_copy_rolls_back_bulk_update(db: VersionedSQLAlchemy, model: Any) -> None:
    """After the failure and rollback the row is as committed: nothing of the
    transaction was written."""
    _failed_flush(db, model)
    db.session.rollback()
    db.session.expire_all()
    record = cast(Any, db.session.get(model, 1))
    assert (record.title, record.version) == ("a", 0)


def test_stale_delete_of_copy(db: VersionedSQLAlchemy, model: Any) -> None:
    """Deleting the stale copy fails with the same versions."""
    record = cast(Any, db.session.get(model, 1))
    _bump_in_bulk(db, model)
    db.session.delete(record)
    with pytest.raises(StaleWriteError) as caught:
        db.session.flush()
    db.session.rollback()
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)


def test_successful_flush_sends_no_extra_statement(
    db: VersionedSQLAlchemy, model: Any, statements: list[str]
) -> None:
    """A successful flush sends only its write statements (nothing read for errors)."""
    record = cast(Any, db.session.get(model, 1))
    statements.clear()
    record.title = "d"
    db.session.flush()
    expected = _FLUSH_STATEMENTS[model.__name__]
    if model.__name__ == "Note" and not capture.fast_path_enabled:
        expected = 2
    assert len(statements) == expected
    db.session.rollback()


def test_stale_flush_reads_before_rollback(
    db: VersionedSQLAlchemy, model: Any, statements: list[str]
) -> None:
    """The explanation's reads are sent before the transaction's ROLLBACK."""
    rolled_back: list[int] = []

    def record_rollback(conn: Any) -> None:
        rolled_back.append(len(statements))

    _stale_copy(db, model)
    statements.clear()
    sa.event.listen(db.engine, "rollback", record_rollback)
    try:
        with pytest.raises(StaleWriteError):
            db.session.flush()
    finally:
        sa.event.remove(db.engine, "rollback", record_rollback)
    after = statements[rolled_back[0] :]
    assert rolled_back and all(not s.lstrip().upper().startswith("SELECT") for s in after)
    assert any(s.lstrip().upper().startswith("SELECT") for s in statements[: rolled_back[0]])
    db.session.rollback()


def test_other_flush_failure_reads_nothing(
    db: VersionedSQLAlchemy, model: Any, statements: list[str]
) -> None:
    """A flush failing for another reason (a duplicate key) sends no explaining read."""
    db.session.add(model(id=1, title="again"))
    with pytest.raises(sa.exc.IntegrityError):
        db.session.flush()
    db.session.rollback()
    assert not any(s.lstrip().upper().startswith("SELECT") for s in statements)


def test_stale_copy_in_savepoint(db: VersionedSQLAlchemy, model: Any) -> None:
    """A flush in a SAVEPOINT after the bulk UPDATE is explained the same way."""
    record = cast(Any, db.session.get(model, 1))
    with acting_as("bob"):
        _bump_in_bulk(db, model)
    db.session.begin_nested()
    record.title = "c"
    with pytest.raises(StaleWriteError) as caught:
        db.session.flush()
    db.session.rollback()
    assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
    assert caught.value.record is record


def test_connection_lost_while_explaining(db: VersionedSQLAlchemy, model: Any) -> None:
    """A backend terminated before the explaining read fails the flush with the
    driver's error (a fault to retry), not with a session left needing rollback."""
    victim = db.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    _stale_copy(db, model)
    seen: list[str] = []

    def terminate(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The first SELECT after the stale UPDATE is the explanation's.
        word = statement.lstrip().split(None, 1)[0].upper()
        seen.append(word)
        if word != "SELECT" or "UPDATE" not in seen or seen.count("SELECT") > 1:
            return
        with db.engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
            for _ in range(200):
                gone = admin.execute(
                    sa.text("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid)"),
                    {"pid": victim},
                ).scalar_one()
                if gone:
                    break
                time.sleep(0.01)

    sa.event.listen(db.engine, "before_cursor_execute", terminate)
    try:
        with pytest.raises(sa.exc.OperationalError):
            db.session.flush()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", terminate)
    db.session.rollback()
    assert cast(Any, db.session.get(model, 1)).version == 0
