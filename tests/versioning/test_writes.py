"""SPEC §2 "What is written, and when": history rows written by flushes of
``Versioned`` records (ORM bulk statements are in test_bulk_statements.py)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy, history_class

PLAIN = {"user_id": None, "remote_addr": None}


def test_insert_writes_no_history(make_user: Any, history_rows: Any) -> None:
    """Inserting a record writes no history row."""
    make_user()
    assert history_rows("appuser_history") == []


def test_pending_record_changes_write_nothing(
    db: VersionedSQLAlchemy, User: Any, history_rows: Any
) -> None:
    """Changing a new record before its first flush writes no history; it starts at version 0."""
    user = User(name="alice", email="a@example.com")
    db.session.add(user)
    user.name = "bob"
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert (user.name, user.version) == ("bob", 0)


def test_change_after_insert_flush(db: VersionedSQLAlchemy, User: Any, history_rows: Any) -> None:
    """A change flushed after the insert's flush, in the same transaction, writes history."""
    user = User(name="alice", email="a@example.com")
    db.session.add(user)
    db.session.flush()
    user.name = "bob"
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice")]
    assert user.version == 1


def test_tracked_change_writes_one_row(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Changing tracked columns in one flush writes exactly one history row."""
    user = make_user(name="alice", email="a@example.com")
    user.name = "bob"
    user.email = "b@example.com"
    db.session.commit()
    assert len(history_rows("appuser_history")) == 1


def test_history_row_holds_values_before_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """The history row holds the tracked values the row had before the change."""
    user = make_user(name="alice", email="a@example.com")
    user.name = "bob"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["id"], row["name"], row["email"]) == (user.id, "alice", "a@example.com")


def test_history_row_version_is_version_before(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """The history row's ``version`` is the record's version before the change."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    user.name = "carol"
    db.session.commit()
    assert [r["version"] for r in history_rows("appuser_history")] == [0, 1]


def test_tracked_change_bumps_version(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """A tracked change increments the record's ``version`` by one."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    assert user.version == 1


def test_version_bumped_in_database(db: VersionedSQLAlchemy, make_user: Any, User: Any) -> None:
    """The bumped ``version`` is what the table holds."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(User.__table__.c.version)).scalar_one()
    assert stored == 1


def test_each_flush_writes_a_row(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Two flushes with changes in one transaction write two history rows."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.flush()
    user.name = "carol"
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice"), (1, "bob")]
    assert user.version == 2


def test_changed_is_time_of_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any, utcnow: Any
) -> None:
    """``changed`` is the time of the change, as an aware datetime."""
    user = make_user()
    before = utcnow()
    user.name = "bob"
    db.session.commit()
    after = utcnow()
    [row] = history_rows("appuser_history")
    assert before <= row["changed"] <= after


def test_changed_read_back_in_utc(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """A history record's ``changed`` is an aware datetime in UTC."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    changed = user.versions()[0].changed
    assert changed.utcoffset() == dt.timedelta(0)


def test_changed_has_microseconds(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Quick successive changes get distinct, increasing ``changed`` values (µs precision)."""
    user = make_user()
    for name in ("b", "c", "d", "e"):
        user.name = name
        db.session.commit()
    changed = [h.changed for h in user.versions()]
    assert changed == sorted(changed)
    assert len(set(changed)) == 4


def test_plain_change_info(db: VersionedSQLAlchemy, make_user: Any, history_rows: Any) -> None:
    """Outside requests and context blocks, change_info is exactly user_id/remote_addr null."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"] == PLAIN


def test_untracked_change_writes_nothing(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A change to untracked columns only writes no history."""
    user = make_user(login_count=0)
    user.login_count = 5
    db.session.commit()
    assert history_rows("appuser_history") == []


def test_untracked_change_keeps_version(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """A change to untracked columns only leaves ``version`` as it is."""
    user = make_user(login_count=0)
    user.login_count = 5
    db.session.commit()
    assert (user.version, user.login_count) == (0, 5)


def test_untracked_and_tracked_change_one_row(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A flush changing tracked and untracked columns writes one row and bumps once."""
    user = make_user(name="alice", login_count=0)
    user.name = "bob"
    user.login_count = 1
    db.session.commit()
    assert [r["name"] for r in history_rows("appuser_history")] == ["alice"]
    assert user.version == 1


def test_hidden_change_writes_row(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A change to a hidden column writes a history row with the tracked values."""
    user = make_user(name="alice", password="old-secret")
    user.password = "new-secret"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["name"], row["version"]) == ("alice", 0)
    assert "password" not in row


def test_hidden_change_bumps_version(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """A change to a hidden column bumps ``version``."""
    user = make_user(password="old-secret")
    user.password = "new-secret"
    db.session.commit()
    assert user.version == 1


def test_hidden_change_listed_in_change_info(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A hidden change lists the column in ``change_info["hidden_cols_changed"]``."""
    user = make_user(password="old-secret")
    user.password = "new-secret"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"] == {**PLAIN, "hidden_cols_changed": ["password"]}


def test_tracked_change_has_no_hidden_cols_key(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """``hidden_cols_changed`` is absent when no hidden column changed."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert "hidden_cols_changed" not in row["change_info"]


def test_hidden_and_tracked_change_together(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A flush changing tracked and hidden columns writes one row listing the hidden column."""
    user = make_user(name="alice", password="old-secret")
    user.name = "bob"
    user.password = "new-secret"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["name"] == "alice"
    assert row["change_info"] == {**PLAIN, "hidden_cols_changed": ["password"]}


def test_two_hidden_columns_listed(db: VersionedSQLAlchemy, history_rows: Any) -> None:
    """Every changed hidden column is listed in ``hidden_cols_changed``."""
    from chrononaut import Versioned

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "account"
        __chrononaut_hidden__ = ["pin", "token"]
        id = db.Column(db.Integer, primary_key=True)
        pin = db.Column(db.String(10))
        token = db.Column(db.String(40))
        owner = db.Column(db.String(40))

    db.create_all()
    account = Account(pin="1234", token="t-1", owner="o")
    db.session.add(account)
    db.session.commit()
    account.pin = "9999"
    account.token = "t-2"
    db.session.commit()
    [row] = history_rows("account_history")
    assert sorted(row["change_info"]["hidden_cols_changed"]) == ["pin", "token"]


def test_hidden_value_never_stored(
    db: VersionedSQLAlchemy, make_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the old nor the new hidden value appears in history or Chrononaut's logs."""
    caplog.set_level(logging.DEBUG)
    user = make_user(password="s3cr3t-old")
    user.password = "s3cr3t-new"
    user.name = "bob"
    db.session.commit()
    db.session.delete(user)
    db.session.commit()
    with db.engine.connect() as conn:
        dumped = conn.execute(
            sa.text("SELECT string_agg(row_to_json(h)::text, ' ') FROM appuser_history h")
        ).scalar_one()
    assert "s3cr3t" not in dumped
    chrononaut_logs = [r.getMessage() for r in caplog.records if r.name.startswith("chrononaut")]
    assert not [m for m in chrononaut_logs if "s3cr3t" in m]


def test_same_value_is_no_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Setting attributes to their current values writes no history and keeps ``version``."""
    user = make_user(name="alice", password="pw")
    user.name = "alice"
    user.password = "pw"
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert user.version == 0


def test_same_value_on_expired_record_is_no_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Setting an expired (not loaded) attribute to its stored value writes no history."""
    user = make_user(name="alice")
    db.session.expire(user)
    user.name = "alice"
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert user.version == 0


def test_expired_same_value_with_real_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """An expired attribute set to its stored value beside a real change keeps its old value."""
    user = make_user(name="alice", email="a@example.com")
    db.session.expire(user)
    user.name = "bob"
    user.email = "a@example.com"
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["name"], row["email"], row["version"]) == ("alice", "a@example.com", 0)
    assert user.diff(user.versions()[0]) == {"name": ("alice", "bob")}


def test_change_and_revert_before_flush_is_no_change(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Changing a value and setting it back before the flush writes no history."""
    user = make_user(name="alice")
    user.name = "bob"
    user.name = "alice"
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert user.version == 0


def test_delete_writes_final_values(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Deleting a record writes a history row with its final tracked values and version."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.commit()
    db.session.delete(user)
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice"), (1, "bob")]


def test_delete_marks_change_info(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """The row written by a delete has exactly ``change_info["deleted"] = True`` added."""
    user = make_user()
    db.session.delete(user)
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"] == {**PLAIN, "deleted": True}


def test_delete_of_expired_record(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, history_rows: Any
) -> None:
    """Deleting a freshly loaded (expired) record still writes its final tracked values."""
    user_id = make_user(name="alice", email="a@example.com").id
    db.session.expire_all()
    db.session.delete(db.session.get(User, user_id))
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert (row["id"], row["name"], row["email"], row["version"]) == (
        user_id,
        "alice",
        "a@example.com",
        0,
    )


def test_reinserted_key_history_continues(
    db: VersionedSQLAlchemy, make_user: Any, User: Any, history_rows: Any
) -> None:
    """A re-inserted primary key continues its history version sequence without collision."""
    user = make_user(id=7, name="alice")
    user.name = "bob"
    db.session.commit()
    db.session.delete(user)
    db.session.commit()
    again = User(id=7, name="carol", email="c@example.com")
    db.session.add(again)
    db.session.commit()
    again.name = "dave"
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [(r["version"], r["name"]) for r in rows] == [(0, "alice"), (1, "bob"), (2, "carol")]


def test_reinserted_key_version_continues(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A re-inserted primary key's record starts at the version after the deleted one's."""
    user = make_user(id=7, name="alice")
    user.name = "bob"
    db.session.commit()
    db.session.delete(user)
    db.session.commit()
    again = User(id=7, name="carol", email="c@example.com")
    db.session.add(again)
    db.session.commit()
    assert again.version == 2


def test_history_in_same_transaction(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """After a flush the history row is visible in the transaction but not outside it."""
    user = make_user()
    user.name = "bob"
    db.session.flush()
    assert len(history_rows("appuser_history", committed=False)) == 1
    assert history_rows("appuser_history") == []
    db.session.commit()


def test_rollback_leaves_no_history(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A rollback after a flushed change leaves neither the change nor a history row."""
    user = make_user(name="alice")
    user.name = "bob"
    db.session.flush()
    db.session.rollback()
    assert history_rows("appuser_history") == []
    assert (user.name, user.version) == ("alice", 0)


def test_each_record_gets_its_own_row(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A flush changing two records writes one history row for each."""
    alice = make_user(name="alice")
    bob = make_user(name="bob")
    alice.name = "alice2"
    bob.name = "bob2"
    db.session.commit()
    rows = history_rows("appuser_history")
    assert [(r["id"], r["name"]) for r in rows] == [(alice.id, "alice"), (bob.id, "bob")]


def test_history_records_are_history_class(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """``versions()`` returns instances of ``history_class(User)``."""
    user = make_user()
    user.name = "bob"
    db.session.commit()
    assert isinstance(user.versions()[0], history_class(User))


@pytest.mark.parametrize("records", [1, 3])
def test_columns_named_like_our_parameters(db: VersionedSQLAlchemy, records: int) -> None:
    """Columns named ``v``, ``ci``, ``k0``, ``s0`` or ``changed`` (untracked) do not
    clash with the parameters of Chrononaut's statements."""

    class Gauge(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "gauge"
        __chrononaut_untracked__ = ["changed"]
        id = db.Column(db.Integer, primary_key=True)
        v = db.Column(db.Float, default=0.0)
        ci = db.Column(db.String(10), default="x")
        k0 = db.Column(db.Integer, default=0)
        s0 = db.Column(db.Integer, default=0)
        changed = db.Column(db.Boolean, default=False)
        name = db.Column(db.String(20))

    db.create_all()
    gauges = [Gauge(id=i, name="a") for i in range(records)]
    db.session.add_all(gauges)
    db.session.commit()
    for gauge in gauges:
        gauge.name = "b"
        gauge.v = 1.5
    db.session.commit()
    db.session.expire_all()
    assert [(g.name, g.v, g.version) for g in gauges] == [("b", 1.5, 1)] * records
    assert [(h.name, h.v) for g in gauges for h in g.versions()] == [("a", 0.0)] * records


def test_reinserted_key_from_relationships_continues(db: VersionedSQLAlchemy) -> None:
    """A key made of foreign keys set through relationships (known only during the
    flush), deleted and inserted again, continues its version sequence."""

    class Left(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "rk_left"
        id = db.Column(db.Integer, primary_key=True)

    class Link(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "rk_link"
        left_id = db.Column(db.ForeignKey("rk_left.id"), primary_key=True)
        slot = db.Column(db.Integer, primary_key=True)
        extra = db.Column(db.String(10))
        left = db.relationship(Left)

    db.create_all()
    left = Left(id=1)
    db.session.add_all([left, Link(left=left, slot=1, extra="a")])
    db.session.commit()
    db.session.delete(db.session.get(Link, (1, 1)))
    db.session.commit()
    again = Link(left=left, slot=1, extra="b")
    db.session.add(again)
    db.session.commit()
    assert again.version == 1
    again.extra = "c"
    db.session.commit()
    assert [(h.version, h.extra) for h in again.versions()] == [(0, "a"), (1, "b")]


def test_reinserted_key_from_python_default_continues(db: VersionedSQLAlchemy) -> None:
    """A key filled in by a constant column default, deleted and inserted again,
    continues its version sequence (a callable default, like ``uuid4``, makes new
    keys: those rows start at version 0, batched like generated keys)."""

    class Setting(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "rk_setting"
        name = db.Column(db.String(20), primary_key=True, default="theme")
        value = db.Column(db.String(20))

    db.create_all()
    db.session.add(Setting(value="light"))
    db.session.commit()
    db.session.delete(db.session.get(Setting, "theme"))
    db.session.commit()
    again = Setting(value="dark")
    db.session.add(again)
    db.session.commit()
    assert (again.name, again.version) == ("theme", 1)
    again.value = "blue"
    db.session.commit()
    assert [(h.version, h.value) for h in again.versions()] == [(0, "light"), (1, "dark")]


def test_delete_and_add_same_key_in_one_flush(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A record deleted and a new one with its key added in one flush (SQLAlchemy's
    row switch) is a new version after the deleted one; the next change records it."""
    old = make_user(id=1, name="old")
    db.session.delete(old)
    new = User(id=1, name="new", email="new@example.com")
    db.session.add(new)
    db.session.commit()
    assert new.version == 1
    new.name = "newer"
    db.session.commit()
    history = [(h.version, h.name, h.change_info.get("deleted")) for h in new.versions()]
    assert history == [(0, "old", True), (1, "new", None)]


def test_generated_keys_are_inserted_in_one_batch(db: VersionedSQLAlchemy) -> None:
    """New records whose keys come from a callable default (``uuid4``) or from a
    pending parent are new keys: their INSERTs stay one batch, with version 0."""
    import uuid

    class Parent(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "gk_parent"
        id = db.Column(db.Integer, primary_key=True)

    class Child(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "gk_child"
        id = db.Column(db.ForeignKey("gk_parent.id"), primary_key=True)
        parent = db.relationship(Parent)

    class Token(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "gk_token"
        id = db.Column(db.Uuid, primary_key=True, default=uuid.uuid4)

    db.create_all()
    inserts: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT"):
            inserts.append(statement.split("(")[0])

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        db.session.add_all([Token() for _ in range(20)])
        db.session.add_all([Child(parent=Parent()) for _ in range(20)])
        db.session.commit()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert sorted(inserts) == sorted(
        ["INSERT INTO gk_token ", "INSERT INTO gk_parent ", "INSERT INTO gk_child "]
    )
    assert {t.version for t in db.session.scalars(sa.select(Token))} == {0}


def test_make_transient_copy_is_a_new_row(
    db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """The row-copy idiom (``make_transient()``, a new key, ``add()``) inserts a new
    row: Chrononaut sets its version and valid_from (the copied values were the
    loaded row's, not the application's)."""
    user = make_user(id=1, name="alice")
    user.name = "ann"
    db.session.commit()
    _ = user.name
    db.session.expunge(user)
    sa.orm.make_transient(user)
    user.id = 2
    user.email = "copy@example.com"
    db.session.add(user)
    db.session.commit()
    original = db.session.get(User, 1)
    assert original is not None
    assert (user.version, original.version) == (0, 1)
    assert user.valid_from is not None and user.valid_from > original.valid_from
    assert user.versions() == []


def test_many_records_with_big_integer_keys_in_one_flush(db: VersionedSQLAlchemy) -> None:
    """Records keyed by BigInteger and SmallInteger columns beyond 32 bits (and
    negative) change together in one flush: each gets its history row and bump."""

    class Wide(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "wide_keyed"
        big = db.Column(db.BigInteger, primary_key=True, autoincrement=False)
        small = db.Column(db.SmallInteger, primary_key=True, autoincrement=False)
        title = db.Column(db.String(10))

    db.create_all()
    keys = [(2**40, 1), (-(2**62), -3), (7, 32000)]
    db.session.add_all([Wide(big=b, small=s, title="a") for b, s in keys])
    db.session.commit()
    for record in db.session.scalars(sa.select(Wide)).all():
        record.title = "b"
    db.session.commit()
    for big, small in keys:
        record = cast(Any, db.session.get(Wide, (big, small)))
        assert (record.version, [v.title for v in record.versions()]) == (1, ["a"])


def test_nan_replaced_by_nan_is_no_change(db: VersionedSQLAlchemy) -> None:
    """A float NaN assigned over NaN is no change (PostgreSQL holds NaN = NaN, as
    bulk statements compare): no history row, same version; a real change is one."""

    class Reading(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "nan_reading"
        id = db.Column(db.Integer, primary_key=True)
        value = db.Column(db.Float)

    db.create_all()
    record = cast(Any, Reading(id=1, value=float("nan")))
    db.session.add(record)
    db.session.commit()
    record.value = float("nan")
    db.session.commit()
    assert (record.version, record.versions()) == (0, [])
    record.value = 1.0
    db.session.commit()
    assert record.version == 1
