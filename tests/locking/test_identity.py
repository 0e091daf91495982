"""Lock identity: the physical table and the whole primary key, without ambiguity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import LockNotAvailableError, VersionedSQLAlchemy, acting_as
from chrononaut.locking import LockableMixin, record_key
from chrononaut.locking._keys import row_marker


@pytest.fixture()
def Pair(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A model keyed by two strings, with the rows ("a/b", "c") and ("a", "b/c")."""

    class Pair(db.Model, LockableMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_pair"
        a = sa.Column(sa.String(20), primary_key=True)
        b = sa.Column(sa.String(20), primary_key=True)

    db.create_all()
    db.session.add_all([Pair(a="a/b", b="c"), Pair(a="a", b="b/c")])
    db.session.commit()
    yield Pair


@pytest.fixture()
def Big(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A BigInteger-keyed model with two keys that shared a 29-bit marker hash."""

    class Big(db.Model, LockableMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_big"
        id = sa.Column(sa.BigInteger, primary_key=True, autoincrement=False)

    db.create_all()
    db.session.add_all([Big(id=268439189), Big(id=268450027)])
    db.session.commit()
    yield Big


def test_slash_in_string_keys_gives_different_advisory_keys(
    db: VersionedSQLAlchemy, Pair: Any, new_session: Callable[[], Session]
) -> None:
    """Pair("a/b", "c") and Pair("a", "b/c") have different record advisory locks."""
    one = db.session.get(Pair, ("a/b", "c"))
    assert one is not None
    other = new_session().get(Pair, ("a", "b/c"))
    assert other is not None
    assert record_key(one) != record_key(other)
    with one.advisory_lock(commit=False):
        with other.advisory_lock(nowait=True):
            pass
    db.session.rollback()


def test_slash_in_string_keys_gives_different_holders(
    db: VersionedSQLAlchemy, Pair: Any, new_session: Callable[[], Session]
) -> None:
    """A lock on Pair("a/b", "c") is not reported as the holder of Pair("a", "b/c")."""
    one = db.session.get(Pair, ("a/b", "c"))
    assert one is not None
    other = new_session().get(Pair, ("a", "b/c"))
    assert other is not None
    with acting_as("alice"), one.lock(commit=False):
        assert other.lock_holder() is None
        assert cast(Any, new_session().get(Pair, ("a/b", "c"))).lock_holder() is not None
    db.session.rollback()


def test_big_integer_keys_do_not_share_a_marker(
    db: VersionedSQLAlchemy, Big: Any, new_session: Callable[[], Session]
) -> None:
    """BigInteger keys whose 29-bit hashes collided have distinct 64-bit markers."""
    assert row_marker(None, "lock_big", (268439189,), "update") != row_marker(
        None, "lock_big", (268450027,), "update"
    )
    one = db.session.get(Big, 268439189)
    assert one is not None
    other = new_session().get(Big, 268450027)
    assert other is not None
    with acting_as("alice"), one.lock(commit=False):
        assert other.lock_holder() is None
        holder = cast(Any, new_session().get(Big, 268439189)).lock_holder()
        assert holder is not None and holder.user_id == "alice"
    db.session.rollback()


def test_record_key_uses_the_schema_translated_table(
    database_url: str, db: VersionedSQLAlchemy, Pair: Any
) -> None:
    """With a schema_translate_map the key names the physical schema."""
    with db.engine.connect() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS tenant_a"))
        conn.commit()
    engine = sa.create_engine(
        database_url,
        poolclass=sa.pool.NullPool,
        execution_options={"schema_translate_map": {None: "tenant_a"}},
    )
    try:
        Pair.__table__.create(engine)
        with Session(engine) as plain:
            plain.add(Pair(a="x", b="y"))
            plain.commit()
        with Session(engine) as session:
            rec = session.get(Pair, ("x", "y"))
            assert rec is not None
            assert record_key(rec) == '["chrononaut.record","tenant_a","lock_pair",["x","y"]]'
            with acting_as("tess"), rec.lock(commit=False):
                holder = rec.lock_holder()
                assert holder is not None and holder.user_id == "tess"
            session.rollback()
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text("DROP SCHEMA tenant_a CASCADE"))
            conn.commit()
        engine.dispose()


def test_tenants_by_session_translate_map_get_different_advisory_locks(
    database_url: str, db: VersionedSQLAlchemy, Pair: Any
) -> None:
    """A schema_translate_map set on the session's connection (per tenant) gives each
    tenant's row its own advisory lock: one tenant's lock never blocks another's."""
    with db.engine.connect() as conn:
        for schema in ("tenant_p", "tenant_q"):
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            conn.execute(
                sa.text(f"CREATE TABLE IF NOT EXISTS {schema}.lock_pair (LIKE public.lock_pair)")
            )
            conn.execute(sa.text(f"INSERT INTO {schema}.lock_pair VALUES ('x', 'y')"))
        conn.commit()
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)

    def tenant_session(schema: str) -> Session:
        session = Session(engine)
        session.connection(execution_options={"schema_translate_map": {None: schema}})
        return session

    try:
        with tenant_session("tenant_p") as p_session, tenant_session("tenant_q") as q_session:
            p_rec, q_rec = p_session.get(Pair, ("x", "y")), q_session.get(Pair, ("x", "y"))
            assert p_rec is not None and q_rec is not None
            assert record_key(p_rec) == '["chrononaut.record","tenant_p","lock_pair",["x","y"]]'
            assert record_key(q_rec) == '["chrononaut.record","tenant_q","lock_pair",["x","y"]]'
            with p_rec.advisory_lock(commit=False), q_rec.advisory_lock(nowait=True, commit=False):
                pass
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text("DROP SCHEMA tenant_p, tenant_q CASCADE"))
            conn.commit()
        engine.dispose()


def test_advisory_lock_of_record_key_is_the_record_lock(
    db: VersionedSQLAlchemy, Pair: Any, new_session: Callable[[], Session]
) -> None:
    """advisory_lock(record_key(r)) and r.advisory_lock() are one lock."""
    from chrononaut import advisory_lock

    one = db.session.get(Pair, ("a/b", "c"))
    assert one is not None
    with one.advisory_lock(commit=False):
        with pytest.raises(LockNotAvailableError):
            with advisory_lock(record_key(one), nowait=True, session=new_session()):
                pass
    db.session.rollback()
