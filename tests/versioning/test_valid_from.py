"""SPEC §2 ``valid_from``: when each version began, on the model's table and in history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy, suppress_versioning

HOUR = dt.timedelta(hours=1)


@contextmanager
def statements(db: VersionedSQLAlchemy) -> Iterator[list[str]]:
    """Collect the SQL statements sent on ``db.engine`` inside the block."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


def _live_valid_from(db: VersionedSQLAlchemy, key: int) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT valid_from FROM appuser WHERE id = :i"), {"i": key}
        ).scalar()


def test_insert_sets_valid_from(db: VersionedSQLAlchemy, make_user: Any, utcnow: Any) -> None:
    """An inserted row's ``valid_from`` is the flush's instant, stored and on the record."""
    before = utcnow()
    user = make_user()
    after = utcnow()
    stored = _live_valid_from(db, user.id)
    assert before <= stored <= after
    assert user.valid_from == stored


def test_insert_sends_one_statement(db: VersionedSQLAlchemy, User: Any) -> None:
    """``valid_from`` travels in the INSERT itself: no extra round trip."""
    db.session.add(User(name="a", email="a@x"))
    with statements(db) as sent:
        db.session.flush()
    assert len(sent) == 1 and sent[0].startswith("INSERT")


@pytest.mark.fast_path
def test_update_continues_ranges(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A change ends the old version at the new one's ``valid_from`` (one-statement path)."""
    user = make_user()
    first = user.valid_from
    user.name = "bob"
    with statements(db) as sent:
        db.session.flush()
    assert len(sent) == 1
    db.session.commit()
    (row,) = history_rows("appuser_history")
    assert row["valid_from"] == first
    assert row["changed"] == user.valid_from == _live_valid_from(db, user.id)
    assert row["changed"] > first


def test_update_in_general_path(db: VersionedSQLAlchemy, make_user: Any, history_rows: Any) -> None:
    """The same holds when a flush also inserts (SQLAlchemy's own UPDATE)."""
    User = type(make_user())
    user = make_user(name="carl")
    first = user.valid_from
    user.name = "dora"
    db.session.add(User(name="eve", email="eve@x"))
    db.session.commit()
    (row,) = history_rows("appuser_history")
    assert row["valid_from"] == first
    assert row["changed"] == user.valid_from == _live_valid_from(db, user.id)


def test_delete_ends_the_range(db: VersionedSQLAlchemy, make_user: Any, history_rows: Any) -> None:
    """A delete's history row covers ``[valid_from, changed)`` of the final version."""
    user = make_user()
    first = user.valid_from
    db.session.delete(user)
    db.session.commit()
    (row,) = history_rows("appuser_history")
    assert row["valid_from"] == first and row["changed"] >= first


def test_untracked_change_keeps_valid_from(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """An untracked-only change leaves ``valid_from`` alone."""
    user = make_user()
    first = user.valid_from
    user.login_count = 5
    db.session.commit()
    assert _live_valid_from(db, user.id) == first


def test_suppressed_change_keeps_valid_from(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Under ``suppress_versioning()`` ``valid_from`` stays as it is."""
    user = make_user()
    first = user.valid_from
    with suppress_versioning():
        user.name = "quiet"
        db.session.commit()
    assert _live_valid_from(db, user.id) == first


@pytest.mark.parametrize("general", [False, True])
def test_ranges_never_run_backwards(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any, general: bool
) -> None:
    """A version that began after the writer's clock ends empty, never negative."""
    user = make_user()
    future = user.valid_from + HOUR
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE appuser SET valid_from = :f"), {"f": future})
    db.session.expire(user)
    user.name = "later"
    if general:
        db.session.add(type(user)(name="x", email="x@x"))
    db.session.commit()
    (row,) = history_rows("appuser_history")
    assert row["valid_from"] == row["changed"] == future
    assert _live_valid_from(db, user.id) == future == user.valid_from


def test_assigning_valid_from_refused(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """An application's own ``valid_from`` raises before any statement."""
    user = make_user()
    user.name = "bob"
    user.valid_from = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    with statements(db) as sent, pytest.raises(ChrononautException, match="valid_from"):
        db.session.flush()
    assert sent == []
    db.session.rollback()
    assert history_rows("appuser_history") == []


def test_assigning_valid_from_on_insert_refused(db: VersionedSQLAlchemy, User: Any) -> None:
    """A new record carrying its own ``valid_from`` is refused too."""
    db.session.add(User(name="a", email="a@x", valid_from=dt.datetime(2020, 1, 1)))
    with statements(db) as sent, pytest.raises(ChrononautException, match="valid_from"):
        db.session.flush()
    assert sent == []


def test_server_default_for_rows_inserted_outside_the_orm(
    db: VersionedSQLAlchemy, User: Any
) -> None:
    """Rows inserted by Core (or other programs) get ``now()``."""
    with db.engine.begin() as conn:
        conn.execute(User.__table__.insert().values(id=7, name="core", email="c@x"))
        now = conn.execute(sa.text("SELECT now()")).scalar()
    assert _live_valid_from(db, 7) <= now


@pytest.mark.parametrize("column", ["valid_from", "version"])
def test_own_column_refused(db: VersionedSQLAlchemy, column: str) -> None:
    """A model declaring ``valid_from`` or ``version`` itself is refused at definition."""
    with pytest.raises(ChrononautException, match=column):

        class Own(db.Model, Versioned):  # type: ignore[name-defined,misc,unused-ignore]
            __tablename__ = f"own_{column}"
            id = db.Column(db.Integer, primary_key=True)
            locals()[column] = db.Column(db.DateTime(timezone=True))


def test_history_record_has_valid_from(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """History records expose ``valid_from`` next to ``changed``."""
    user = make_user()
    first = user.valid_from
    user.name = "bob"
    db.session.commit()
    (old,) = user.versions()
    assert old.valid_from == first and old.changed == user.valid_from


def test_times_read_back_in_utc_whatever_the_session_time_zone(database_url: str) -> None:
    """With a connection TimeZone other than UTC, ``changed`` and ``valid_from`` of
    history records, live records and as_of() records still come back in UTC."""
    from sqlalchemy.orm import DeclarativeBase, sessionmaker

    from chrononaut import as_of, versioned_session

    class Base(DeclarativeBase):
        pass

    class Memo(Base, Versioned):
        __tablename__ = "tz_memo"
        id = sa.Column(sa.Integer, primary_key=True)
        text = sa.Column(sa.String(10))

    engine = sa.create_engine(
        database_url,
        poolclass=sa.pool.NullPool,
        connect_args={"options": "-c timezone=America/New_York"},
    )
    Base.metadata.create_all(engine)
    try:
        maker = versioned_session(sessionmaker(engine))
        with maker() as session:
            memo: Any = Memo(id=1, text="a")
            session.add(memo)
            session.commit()
            memo.text = "b"
            session.commit()
            assert session.execute(sa.text("SHOW TimeZone")).scalar() == "America/New_York"
            (old,) = memo.versions()
            past = session.scalars(sa.select(as_of(Memo, old.changed))).one()
            for value in (memo.valid_from, old.changed, old.valid_from, past.valid_from):
                assert value.tzinfo is dt.timezone.utc
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_reinsert_by_flush_begins_after_a_later_clock_ended_the_key(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A key deleted by a writer whose clock runs ahead, inserted again by a flush
    on a slower clock: the new version begins when the deleted one ended, so
    as_of() and version_at() never see two versions of the key."""
    from chrononaut import as_of

    user = make_user(name="a")
    user_id = user.id
    db.session.delete(user)
    db.session.commit()
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    db.session.execute(
        sa.text("UPDATE appuser_history SET changed = :t WHERE id = :id"),
        {"t": ahead, "id": user_id},
    )
    db.session.commit()
    again = User(id=user_id, name="again", email="again@example.com")
    db.session.add(again)
    db.session.commit()
    assert cast(Any, again).valid_from == ahead
    between = ahead - dt.timedelta(seconds=1)
    past = as_of(User, between)
    assert [r.name for r in db.session.scalars(sa.select(past))] == ["a"]
    assert cast(Any, again).version_at(between).name == "a"
    assert cast(Any, again).version_at(ahead) is again
