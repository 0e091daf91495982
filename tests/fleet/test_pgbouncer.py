"""Chrononaut behind a real PgBouncer in transaction pooling mode, on both drivers.

PgBouncer here has 4 server connections per database: clients really share
server sessions, so anything left on one (a session-level setting or advisory
lock) would be seen by the next client's transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.orm import Session

from chrononaut import (
    LockError,
    LockNotAvailableError,
    LockTimeoutError,
    RecordLockedError,
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    advisory_lock,
)

from .pgbouncer_support import Bouncer, connect_args, driver_url

pytestmark = pytest.mark.pgbouncer

DRIVERS = ["psycopg2", "psycopg"]


@pytest.fixture(params=DRIVERS)
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


@pytest.fixture()
def Job(bounced: VersionedSQLAlchemy) -> type[Any]:
    """A versioned job table with rows 1..6 queued."""
    db = bounced

    class Job(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "bounced_job"
        id = sa.Column(sa.Integer, primary_key=True)
        n = sa.Column(sa.Integer, nullable=False, default=0)
        state = sa.Column(sa.String(20), nullable=False, default="queued")

    db.create_all()
    db.session.add_all([Job(id=i) for i in range(1, 7)])
    db.session.commit()
    db.session.remove()
    return Job


@pytest.fixture()
def sessions(bounced: VersionedSQLAlchemy) -> Iterator[Callable[[], Session]]:
    """More sessions of the app (other clients of the same PgBouncer)."""
    made: list[Session] = []

    def make() -> Session:
        session = bounced.session.session_factory()
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


def _in_thread(app: Flask, target: Callable[[], Any]) -> Any:
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with app.app_context():
                result.append(target())
        except BaseException as error:  # handed back to the test thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0] if result else None


def _leftovers(server: sa.Engine) -> tuple[int, int]:
    """(advisory locks held, backends tagged chrononaut) in the test database, direct."""
    with server.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database()), "
                "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'chrononaut%')"
            )
        ).one()
    return int(row[0]), int(row[1])


@pytest.fixture()
def direct(database_url: str) -> Iterator[sa.Engine]:
    """An engine straight to the server (not through PgBouncer), for inspection."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def test_history_is_written(bounced: VersionedSQLAlchemy, Job: Any) -> None:
    """Writes through the pooler leave contiguous history with change_info."""
    for value in range(1, 8):  # more than psycopg 3's prepare threshold
        with acting_as("ann"):
            job = bounced.session.get(Job, 1)
            assert job is not None
            job.n = value
            bounced.session.commit()
    job = bounced.session.get(Job, 1)
    assert job is not None
    versions = job.versions()
    assert [v.version for v in versions] == list(range(7))
    assert versions[-1].change_info["user_id"] == "ann"


def test_stale_write_is_explained(
    bounced: VersionedSQLAlchemy, Job: Any, sessions: Callable[[], Session]
) -> None:
    """A stale write through the pooler is a StaleWriteError naming the other change."""
    mine = bounced.session.get(Job, 2)
    assert mine is not None
    other = sessions()
    with acting_as("bob"):
        cast(Any, other.get(Job, 2)).n = 5
        other.commit()
    mine.n = 9
    with pytest.raises(StaleWriteError) as caught:
        bounced.session.commit()
    assert [c.change_info["user_id"] for c in caught.value.changes] == ["bob"]
    bounced.session.rollback()


def test_row_lock_nowait_and_timeout_name_the_holder(
    bounced: VersionedSQLAlchemy, Job: Any, sessions: Callable[[], Session]
) -> None:
    """lock(nowait=) and lock(timeout=) fail with the holder's user through the pooler."""
    holder = sessions()
    with acting_as("carol"), cast(Any, holder.get(Job, 3)).lock(commit=False):
        mine = bounced.session.get(Job, 3)
        assert mine is not None
        with pytest.raises(RecordLockedError) as locked:
            with mine.lock(nowait=True):
                pass
        with pytest.raises(LockTimeoutError) as timed_out:
            with mine.lock(timeout=0.2):
                pass
        found = mine.lock_holder()
        holder.rollback()
    for error in (locked.value, timed_out.value):
        assert error.holder is not None and error.holder.user_id == "carol"
    assert found is not None and found.user_id == "carol"


def test_lock_next_gives_workers_different_rows(bounced: VersionedSQLAlchemy, Job: Any) -> None:
    """Three workers claiming at once through the pooler get three different jobs."""
    barrier = threading.Barrier(3, timeout=10)
    claimed: list[int] = []
    lock = threading.Lock()
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def worker() -> None:
        session = bounced.session.session_factory()
        try:
            with Job.lock_next(Job.state == "queued", session=session) as job:
                assert job is not None
                with lock:
                    claimed.append(job.id)
                barrier.wait()  # all three hold their row at once
                job.state = "done"
        finally:
            session.close()

    threads = [threading.Thread(target=lambda: _in_thread(app, worker)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 3


def test_transaction_advisory_lock(
    bounced: VersionedSQLAlchemy, sessions: Callable[[], Session], direct: sa.Engine
) -> None:
    """Transaction-scope advisory locks exclude each other and leave nothing behind."""
    holder = sessions()
    with acting_as("dan"), advisory_lock("bounced-xact", session=holder, commit=False):
        with pytest.raises(LockNotAvailableError) as caught:
            with advisory_lock("bounced-xact", nowait=True, session=sessions()):
                pass
        holder.rollback()
    assert caught.value.holder is not None and caught.value.holder.user_id == "dan"
    assert _leftovers(direct) == (0, 0)


def test_session_advisory_lock_is_never_granted_twice(
    bounced: VersionedSQLAlchemy, sessions: Callable[[], Session], direct: sa.Engine
) -> None:
    """A session-scope lock held by one thread is refused to another, then released."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def attempt() -> None:
        with advisory_lock("nightly", scope="session", nowait=True, session=sessions()):
            pass

    for _ in range(3):
        with acting_as("carol"), advisory_lock("nightly", scope="session"):
            with pytest.raises(LockNotAvailableError):
                _in_thread(app, attempt)
            # Other clients' transactions run meanwhile on the shared server sessions.
            for _ in range(6):
                other = sessions()
                name = other.execute(sa.text("SELECT current_setting('application_name')"))
                assert not str(name.scalar()).startswith("chrononaut")
                other.close()
        _in_thread(app, attempt)
    assert _leftovers(direct) == (0, 0)


def test_session_advisory_lock_refused_by_a_statement_pooler(pgbouncer: Bouncer) -> None:
    """Behind statement pooling a session-scope lock fails at entry with LockError."""
    for driver in DRIVERS:
        url = driver_url(pgbouncer.statement_url, driver)
        # Autocommit, so that the dialect's own first queries pass the pooler.
        engine = sa.create_engine(
            url,
            poolclass=sa.pool.NullPool,
            isolation_level="AUTOCOMMIT",
            use_native_hstore=False,
            connect_args=connect_args(driver, pgbouncer.version),
        )
        try:
            with Session(engine) as session:
                with pytest.raises(LockError, match="refused"):
                    with advisory_lock("stmt", scope="session", session=session):
                        pass
        finally:
            engine.dispose()


def test_session_advisory_lock_lost_with_its_server_connection(
    bounced: VersionedSQLAlchemy, direct: sa.Engine
) -> None:
    """Killing the server session under a session-scope lock makes the exit raise LockError."""
    with pytest.raises(LockError, match="lost"):
        with advisory_lock("fragile-bounced", scope="session"):
            with direct.connect() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                        "JOIN pg_database d ON d.oid = l.database "
                        "WHERE l.locktype = 'advisory' AND l.pid <> pg_backend_pid() "
                        "AND d.datname = current_database()"
                    )
                )
                conn.commit()
            time.sleep(0.2)
    deadline = time.monotonic() + 5
    while _leftovers(direct) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(direct) == (0, 0)
