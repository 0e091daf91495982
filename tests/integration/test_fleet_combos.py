"""Leases, bulk statements and time travel on a pool of one connection and behind
PgBouncer in transaction pooling mode (SPEC §4 "Connection poolers and fleets")."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import sessionmaker

from chrononaut import (
    RecordLeasedError,
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    as_of,
    versioned_session,
)
from tests.fleet.pgbouncer_support import Bouncer, connect_args, driver_url


def _model(db: VersionedSQLAlchemy) -> Any:
    class Card(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_card"
        __chrononaut_leases__ = True
        __chrononaut_hidden__ = ["secret"]
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False, default=0)
        secret = sa.Column(sa.String(20))

    db.create_all()
    db.session.add_all([Card(id=i, n=0, secret="s") for i in (1, 2)])
    db.session.commit()
    db.session.remove()
    return Card


def test_stale_copy_after_unsynchronised_bulk_update_is_explained(
    small_db: VersionedSQLAlchemy,
) -> None:
    """A copy left stale by a committed bulk UPDATE (synchronize_session=False) fails
    with an explained StaleWriteError on the pool of one."""
    Card = _model(small_db)
    session = small_db.session.session_factory(expire_on_commit=False)
    try:
        card = cast(Any, session.get(Card, 1))
        with acting_as("bob"):
            session.execute(
                sa.update(Card).where(Card.id == 1).values(n=5),
                execution_options={"synchronize_session": False},
            )
            session.commit()
        card.n = 9
        with pytest.raises(StaleWriteError) as caught:
            session.flush()
        assert (caught.value.expected_version, caught.value.current_version) == (0, 1)
        assert [c.change_info["user_id"] for c in caught.value.changes] == ["bob"]
    finally:
        session.close()


def test_stale_copy_in_same_transaction_carries_versions(small_db: VersionedSQLAlchemy) -> None:
    """A stale copy's flush after this transaction's bulk UPDATE names its version."""
    Card = _model(small_db)
    card = cast(Any, small_db.session.get(Card, 1))
    small_db.session.execute(
        sa.update(Card).where(Card.id == 1).values(n=5),
        execution_options={"synchronize_session": False},
    )
    card.n = 9
    with pytest.raises(StaleWriteError) as caught:
        small_db.session.flush()
    small_db.session.rollback()
    assert caught.value.expected_version == 0 and caught.value.record is card


def test_lease_refusal_on_pool_of_one(
    small_db: VersionedSQLAlchemy, other_engine: sa.Engine
) -> None:
    """A lease taken elsewhere refuses this app's bulk UPDATE, on its pool of one."""
    Card = _model(small_db)
    other = versioned_session(sessionmaker(other_engine))()
    try:
        with acting_as("alice"):
            cast(Any, other.get(Card, 1)).lease()
    finally:
        other.close()
    with acting_as("bob"), pytest.raises(RecordLeasedError) as caught:
        small_db.session.execute(sa.update(Card).values(n=3))
    assert caught.value.lease is not None and caught.value.lease.user_id == "alice"
    small_db.session.rollback()
    with acting_as("bob"):
        holder = cast(Any, small_db.session.get(Card, 1)).lease_holder()
    assert holder is not None and holder.user_id == "alice"


def test_lease_and_as_of_on_pool_of_one(small_db: VersionedSQLAlchemy) -> None:
    """lease(), a holder's change, renew and as_of all run on one connection."""
    Card = _model(small_db)
    at = dt.datetime.now(dt.timezone.utc)
    with acting_as("alice"):
        card = cast(Any, small_db.session.get(Card, 1))
        lease = card.lease()
        card.n = 4
        small_db.session.commit()
        card.renew_lease(lease.token)
        card.release_lease(lease.token)
    Past = as_of(Card, at)
    assert list(small_db.session.scalars(sa.select(Past.n).order_by(Past.id))) == [0, 0]


@pytest.fixture(params=["psycopg2", "psycopg"])
def bounced(request: pytest.FixtureRequest, pgbouncer: Bouncer) -> Iterator[VersionedSQLAlchemy]:
    """A ``VersionedSQLAlchemy`` whose engine connects through PgBouncer."""
    driver: str = request.param
    url = driver_url(pgbouncer.transaction_url, driver)
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=url.render_as_string(hide_password=False),
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": connect_args(driver, pgbouncer.version)},
    )
    with app.app_context():
        db = VersionedSQLAlchemy(app)
        try:
            yield db
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.mark.pgbouncer
def test_leases_behind_pgbouncer(bounced: VersionedSQLAlchemy) -> None:
    """Behind PgBouncer: a lease refuses others' flushes and upserts, as_of reads."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    Card = _model(bounced)
    at = dt.datetime.now(dt.timezone.utc)
    alice = bounced.session.session_factory()
    try:
        with acting_as("alice"):
            cast(Any, alice.get(Card, 1)).lease()
            cast(Any, alice.get(Card, 1)).n = 1
            alice.commit()
    finally:
        alice.close()
    for _ in range(3):  # other server sessions of the pool
        cast(Any, bounced.session.get(Card, 1)).n = 7
        with acting_as("bob"), pytest.raises(RecordLeasedError):
            bounced.session.commit()
        bounced.session.rollback()
        stmt = pg_insert(Card).values(id=1, n=8)
        stmt = stmt.on_conflict_do_update(index_elements=[Card.id], set_={"n": stmt.excluded.n})
        with acting_as("bob"), pytest.raises(RecordLeasedError):
            bounced.session.execute(stmt)
        bounced.session.rollback()
    Past = as_of(Card, at)
    assert list(bounced.session.scalars(sa.select(Past.n).order_by(Past.id))) == [0, 0]
    card = cast(Any, bounced.session.get(Card, 1))
    assert card.n == 1 and card.versions()[-1].change_info["lease"]["user_id"] == "alice"
