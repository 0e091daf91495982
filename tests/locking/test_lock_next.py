"""``Model.lock_next()``: a work queue on FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker

from chrononaut import VersionedSQLAlchemy, acting_as
from chrononaut.locking import LockableMixin


@pytest.fixture()
def Job(db: VersionedSQLAlchemy) -> Iterator[type[Any]]:
    """A queue table with 20 queued jobs."""

    class Job(db.Model, LockableMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "lock_job"
        id = sa.Column(sa.Integer, primary_key=True)
        state = sa.Column(sa.String(10), nullable=False, default="queued")
        worker = sa.Column(sa.String(20))

    db.create_all()
    db.session.add_all([Job(id=i) for i in range(1, 21)])
    db.session.commit()
    yield Job


def test_claims_the_first_matching_row(db: Any, Job: Any) -> None:
    """The first free matching row (by primary key) is yielded, locked and committed."""
    with Job.lock_next(Job.state == "queued") as job:
        assert job.id == 1
        job.state = "done"
    assert db.session.get(Job, 1).state == "done"


def test_skips_rows_locked_by_others(db: Any, Job: Any, new_session: Any) -> None:
    """Rows another transaction holds are skipped, not waited for."""
    other = new_session()
    with other.get(Job, 1).lock(), other.get(Job, 2).lock(commit=False):
        with Job.lock_next(Job.state == "queued") as job:
            assert job.id == 3


def test_yields_none_when_nothing_is_free(db: Any, Job: Any) -> None:
    """No free matching row: the block gets None."""
    with Job.lock_next(Job.state == "running") as job:
        assert job is None


def test_order_by_and_explicit_session(db: Any, Job: Any, new_session: Any) -> None:
    """order_by picks which free row comes first; session= is honoured."""
    session = new_session()
    with Job.lock_next(Job.state == "queued", order_by=Job.id.desc(), session=session) as job:
        assert job.id == 20
        assert sa.inspect(job).session is session


def test_claimed_row_shows_its_holder(db: Any, Job: Any, new_session: Any) -> None:
    """A claimed row names the claiming user to other sessions."""
    watcher = new_session()
    with acting_as("worker-7"), Job.lock_next() as job:
        holder = watcher.get(Job, job.id).lock_holder()
    assert holder is not None and holder.user_id == "worker-7"


def test_concurrent_workers_never_claim_the_same_row(
    app: Any, db: Any, Job: Any, new_session: Any
) -> None:
    """Four threads drain the queue; every job is claimed exactly once."""
    claimed: list[int] = []
    guard = threading.Lock()

    def work(name: str) -> None:
        session = new_session()
        while True:
            with Job.lock_next(Job.state == "queued", session=session) as job:
                if job is None:
                    return
                job.state = "done"
                job.worker = name
                with guard:
                    claimed.append(job.id)

    workers = [Worker(app, functools.partial(work, f"w{i}")) for i in range(4)]
    for worker in workers:
        worker.join(60)
    assert sorted(claimed) == list(range(1, 21))
    states = db.session.execute(sa.select(Job.state)).scalars().all()
    assert set(states) == {"done"}
