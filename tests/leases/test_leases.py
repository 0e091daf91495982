"""Taking, reading, renewing and releasing edit leases (SPEC §4 "Edit leases")."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from chrononaut import (
    ChrononautException,
    Lease,
    RecordLeasedError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
)
from chrononaut._leases import LEASE_TABLE


def test_lease_table_in_metadata(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """Defining a leased model puts chrononaut_lease in its MetaData (create_all sees it)."""
    assert LEASE_TABLE in db.metadata.tables
    assert sa.inspect(db.engine).has_table(LEASE_TABLE)


def test_lease_table_has_key_index(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """ "Is this record leased" is one probe of the (table_name, record_key) key."""
    pk = sa.inspect(db.engine).get_pk_constraint(LEASE_TABLE)
    assert pk["constrained_columns"] == ["table_name", "record_key"]


def test_lease_returns_lease_with_token(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """lease() returns the holder's Lease with a token and a ttl-long expiry."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        lease = doc.lease(dt.timedelta(minutes=5), note="typing")
    assert isinstance(lease, Lease)
    assert lease.user_id == "alice" and lease.note == "typing" and lease.token
    assert (
        dt.timedelta(minutes=4)
        < lease.expires_at - lease.acquired_at
        <= dt.timedelta(minutes=5, seconds=1)
    )


def test_lease_commits_and_is_visible(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """A lease taken with commit=True is visible to another session at once."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease()
    other = new_session()
    holder = cast(Any, other.get(Doc, 1)).lease_holder()
    assert holder is not None and holder.user_id == "alice"


def test_holder_has_no_token(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """lease_holder() never reveals the token."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        doc.lease()
    holder = doc.lease_holder()
    assert holder is not None and holder.token is None


def test_no_lease_holder_is_none(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """A record nobody leases has no holder."""
    assert cast(Any, db.session.get(Doc, 1)).lease_holder() is None


def test_same_user_renews_same_token(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """Taking a lease you hold renews it and keeps its token and acquired_at."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        first = doc.lease(dt.timedelta(minutes=1))
        second = doc.lease(dt.timedelta(minutes=10))
    assert second.token == first.token and second.acquired_at == first.acquired_at
    assert second.expires_at > first.expires_at


def test_user_ids_compared_as_strings(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """User 7 and user "7" are the same holder."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as(7):
        first = doc.lease()
    with acting_as("7"):
        assert doc.lease().token == first.token


def test_other_user_refused_with_holder(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """Someone else's live lease: RecordLeasedError with the holder's lease, no token."""
    with acting_as("alice"):
        mine = cast(Any, db.session.get(Doc, 1)).lease(note="n")
    other = new_session()
    with acting_as("bob"), pytest.raises(RecordLeasedError) as info:
        cast(Any, other.get(Doc, 1)).lease()
    assert info.value.lease is not None
    assert (info.value.lease.user_id, info.value.lease.note) == ("alice", "n")
    assert info.value.lease.token is None
    assert mine.token is not None and mine.token not in str(info.value)


def test_refusal_leaves_transaction_usable(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """After a refused lease() the session's transaction still works and keeps its work."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease()
    other = new_session()
    doc2 = other.get(Doc, 2)
    assert doc2 is not None
    doc2.views = 5
    other.flush()
    with acting_as("bob"), pytest.raises(RecordLeasedError):
        cast(Any, other.get(Doc, 1)).lease(commit=False)
    other.commit()
    assert db.session.execute(sa.text("SELECT views FROM lease_doc WHERE id = 2")).scalar() == 5


def test_force_takes_over(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """force=True takes the lease over with a new token; the old token stops working."""
    with acting_as("alice"):
        old = cast(Any, db.session.get(Doc, 1)).lease()
    other = new_session()
    with acting_as("bob"):
        new = cast(Any, other.get(Doc, 1)).lease(force=True)
    assert new.user_id == "bob" and new.token != old.token
    with pytest.raises(ChrononautException):
        cast(Any, db.session.get(Doc, 1)).renew_lease(old.token)


def test_expired_lease_is_free(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """An expired lease (by the database clock) is free without any cleanup."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease()
    db.session.execute(sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = now() - interval '1s'"))
    db.session.commit()
    other = new_session()
    assert cast(Any, other.get(Doc, 1)).lease_holder() is None
    with acting_as("bob"):
        assert cast(Any, other.get(Doc, 1)).lease().user_id == "bob"


def test_renew_extends(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """renew_lease() extends by the original ttl by default, or by the ttl given."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        lease = doc.lease(dt.timedelta(minutes=3))
    renewed = doc.renew_lease(lease.token)
    assert renewed.token == lease.token and renewed.expires_at >= lease.expires_at
    longer = doc.renew_lease(lease.token, dt.timedelta(hours=1))
    assert longer.expires_at - longer.acquired_at > dt.timedelta(minutes=50)


def test_release_frees(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """release_lease() frees the record; releasing twice is an error."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        lease = doc.lease()
    doc.release_lease(lease.token)
    assert cast(Any, new_session().get(Doc, 1)).lease_holder() is None
    with pytest.raises(ChrononautException):
        doc.release_lease(lease.token)


def test_commit_false_joins_transaction(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """commit=False: the lease is seen by others only when the transaction commits."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease(commit=False)
    other = new_session()
    assert cast(Any, other.get(Doc, 1)).lease_holder() is None
    other.rollback()
    db.session.commit()
    assert cast(Any, other.get(Doc, 1)).lease_holder() is not None


def test_inside_lock_block_joins(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """Inside record.lock() the lease commits with the block, not before."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"), doc.lock():
        doc.lease()
        assert cast(Any, new_session().get(Doc, 1)).lease_holder() is None
    assert cast(Any, new_session().get(Doc, 1)).lease_holder() is not None


def test_lease_key_is_base_table_and_pk(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """The lease row names the physical base table and the primary key as JSON."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 2)).lease()
    row = db.session.execute(sa.text(f"SELECT table_name, record_key FROM {LEASE_TABLE}")).one()
    assert tuple(row) == ("lease_doc", "[2]")


def test_lease_waits_on_row_lock(
    app: Flask, db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """lease() waits for another transaction's row lock like any writer."""
    import threading

    holder = new_session()
    holder.execute(sa.text("SELECT 1 FROM lease_doc WHERE id = 1 FOR UPDATE"))
    done = threading.Event()

    def take() -> None:
        with app.app_context(), acting_as("alice"):
            session = db.session.session_factory()
            try:
                cast(Any, session.get(Doc, 1)).lease()
            finally:
                session.close()
        done.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not done.wait(0.5)
    holder.commit()
    thread.join(10)
    assert done.is_set()


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (dt.timedelta(0), ValueError),
        (dt.timedelta(seconds=-1), ValueError),
        (dt.timedelta(hours=24, seconds=1), ValueError),
        (60, TypeError),
        ("15m", TypeError),
    ],
)
def test_bad_ttl_before_any_statement(
    db: VersionedSQLAlchemy, Doc: Any, statements: list[str], ttl: Any, error: type[Exception]
) -> None:
    """A ttl that is zero, negative, over 24 h or not a timedelta fails before any SQL."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    statements.clear()
    with acting_as("alice"), pytest.raises(error):
        doc.lease(ttl)
    assert statements == []


def test_bad_renew_ttl(db: VersionedSQLAlchemy, Doc: Any, statements: list[str]) -> None:
    """renew_lease() checks its ttl like lease()."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    statements.clear()
    with pytest.raises(ValueError):
        doc.renew_lease("0" * 32, dt.timedelta(0))
    assert statements == []


def test_no_actor_refused(db: VersionedSQLAlchemy, Doc: Any, statements: list[str]) -> None:
    """Without an acting user lease() fails before any statement."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    statements.clear()
    with pytest.raises(ChrononautException, match="acting user"):
        doc.lease()
    assert statements == []


def test_transient_refused(db: VersionedSQLAlchemy, Doc: Any, statements: list[str]) -> None:
    """A transient record can't be leased."""
    with acting_as("alice"), pytest.raises(ChrononautException, match="transient"):
        Doc(id=9).lease()
    assert statements == []


def test_pending_refused(db: VersionedSQLAlchemy, Doc: Any, statements: list[str]) -> None:
    """A pending record can't be leased."""
    doc = Doc(id=9)
    db.session.add(doc)
    with acting_as("alice"), pytest.raises(ChrononautException, match="pending"):
        doc.lease()
    assert statements == []


def test_deleted_refused(db: VersionedSQLAlchemy, Doc: Any, statements: list[str]) -> None:
    """A record marked for deletion can't be leased."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    db.session.delete(doc)
    statements.clear()
    with acting_as("alice"), pytest.raises(ChrononautException, match="delet"):
        doc.lease()
    assert statements == []


def test_non_leased_model_refused(
    db: VersionedSQLAlchemy, Plain: Any, statements: list[str]
) -> None:
    """A model without __chrononaut_leases__ has no leases."""
    plain = db.session.get(Plain, 1)
    assert plain is not None
    statements.clear()
    with acting_as("alice"), pytest.raises(ChrononautException, match="__chrononaut_leases__"):
        plain.lease()
    assert statements == []


@pytest.mark.parametrize("token", ["nope", "", "A" * 32])
def test_malformed_token_refused(
    db: VersionedSQLAlchemy, Doc: Any, statements: list[str], token: str
) -> None:
    """A token that is not one of ours fails before any statement."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    statements.clear()
    with pytest.raises(ChrononautException, match="token"):
        doc.renew_lease(token)
    with pytest.raises(ChrononautException, match="token"):
        doc.release_lease(token)
    assert statements == []


def test_token_of_other_record_refused(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """A token of another record's lease does not renew this one."""
    with acting_as("alice"):
        lease = cast(Any, db.session.get(Doc, 1)).lease()
    with pytest.raises(ChrononautException, match="token"):
        cast(Any, db.session.get(Doc, 2)).renew_lease(lease.token)


@pytest.mark.parametrize("method", ["renew_lease", "release_lease"])
def test_token_of_another_user_refused(db: VersionedSQLAlchemy, Doc: Any, method: str) -> None:
    """Another acting user can't renew or release a lease with its holder's token."""
    doc = cast(Any, db.session.get(Doc, 1))
    with acting_as("alice"):
        lease = doc.lease()
    with acting_as("bob"), pytest.raises(ChrononautException, match="another user"):
        getattr(doc, method)(lease.token)
    db.session.rollback()
    holder = doc.lease_holder()
    assert holder is not None and (holder.user_id, holder.expires_at) == (
        "alice",
        lease.expires_at,
    )


def test_expired_token_refused(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """An expired lease can't be renewed or released by its token."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        lease = doc.lease()
    db.session.execute(sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = now() - interval '1s'"))
    db.session.commit()
    with pytest.raises(ChrononautException, match="expired"):
        doc.renew_lease(lease.token)


def test_non_bool_force(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """force must be a bool."""
    with acting_as("alice"), pytest.raises(TypeError):
        cast(Any, db.session.get(Doc, 1)).lease(force="yes")


def test_lease_late_in_transaction_lasts_its_ttl(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """A lease taken in a transaction begun earlier lasts its ttl from the moment it
    is taken (the statement's clock, not the transaction's start)."""
    doc = cast(Any, db.session.get(Doc, 1))  # begins the transaction
    db.session.execute(sa.text("SELECT pg_sleep(1.2)"))
    with acting_as("alice"):
        lease = doc.lease(dt.timedelta(seconds=1))
    assert lease.expires_at > dt.datetime.now(dt.timezone.utc)
    other = new_session()
    with acting_as("bob"):
        cast(Any, other.get(Doc, 1)).title = "bob"
        with pytest.raises(RecordLeasedError):
            other.flush()


def test_expiry_judged_at_the_check_not_transaction_start(
    db: VersionedSQLAlchemy, Doc: Any, new_session: Callable[[], Session]
) -> None:
    """A writer whose transaction began before a lease expired may write once it has."""
    with acting_as("alice"):
        cast(Any, db.session.get(Doc, 1)).lease(dt.timedelta(seconds=1))
    other = new_session()
    doc = cast(Any, other.get(Doc, 1))  # bob's transaction begins while the lease lives
    other.execute(sa.text("SELECT pg_sleep(1.2)"))
    with acting_as("bob"):
        doc.title = "bob"
        other.commit()
    assert db.session.execute(sa.text("SELECT title FROM lease_doc WHERE id = 1")).scalar() == "bob"


def test_lease_leaves_onupdate_columns_alone(db: VersionedSQLAlchemy) -> None:
    """Taking a lease changes no column of the record, ``onupdate`` ones included: no
    version, no history row."""

    class Stamped(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lease_stamped"
        __chrononaut_leases__ = True
        id = sa.Column(sa.Integer, primary_key=True)
        title = sa.Column(sa.String(20))
        edits = sa.Column(sa.Integer, default=0, onupdate=sa.text("edits + 1000"))

    db.create_all()
    db.session.add(Stamped(id=1, title="t"))
    db.session.commit()
    record = cast(Any, db.session.get(Stamped, 1))
    with acting_as("alice"):
        record.lease()
    row = db.session.execute(sa.text("SELECT edits, version FROM lease_stamped")).one()
    assert tuple(row) == (0, 0)
    assert record.versions() == []
