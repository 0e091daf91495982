"""Issue 4 §6: two clients' read-modify-write cycles, interleaved by hypothesis.

Each client reads a tally in a session of its own and later writes ``n + 1`` based
on what it read, in one of three ways:

- ``same``: in the session it read in (SQLAlchemy's version check alone);
- ``form``: in a new session, after ``expect_version(<version it read>)`` — the
  hidden-form-field / ``If-Match`` pattern across two requests;
- ``refresh``: in the session it read in, after ``expect_version`` and a
  ``session.refresh`` that loads the other client's newer version.

A simple model predicts each outcome. Properties: no lost update ever commits
(the final ``n`` is the number of successful writes), every conflict is reported
with the exact intervening versions and who made them, and history stays
contiguous (versions ``0..n-1`` in history, the live row at ``n``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from chrononaut import StaleWriteError, Versioned, VersionedSQLAlchemy, acting_as

MODES = ("same", "form", "refresh")


@dataclass
class _Client:
    """One client's cycle in progress: its session and what it read."""

    name: str
    session: Session | None = None
    record: Any = None  # held: a session's identity map keeps records only weakly
    seen_version: int | None = None
    seen_n: int | None = None
    mode: str = "same"


@dataclass
class _Model:
    """What must be committed: the live value and one history row per write."""

    version: int = 0
    n: int = 0
    writers: list[str] = field(default_factory=list)  # writers[v]: who wrote version v+1


@pytest.fixture()
def Tally(db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned counter, its tables created."""

    class Tally(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "tally"
        id = db.Column(db.Integer, primary_key=True)
        n = db.Column(db.Integer, nullable=False)

    db.create_all()
    return Tally


# One action: which client acts next, and how it writes if it starts a cycle now.
actions = st.lists(
    st.tuples(st.sampled_from(("alice", "bob")), st.sampled_from(MODES)), max_size=14
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=actions)
def test_interleaved_read_modify_write(
    db: VersionedSQLAlchemy, Tally: type[Any], steps: list[tuple[str, str]]
) -> None:
    """No lost update commits, conflicts name the exact versions, history is contiguous."""
    factory = db.session.session_factory
    with factory() as setup:
        tally = Tally(n=0)
        setup.add(tally)
        setup.commit()
        tally_id = tally.id
    clients = {name: _Client(name) for name in ("alice", "bob")}
    model = _Model()
    try:
        for name, mode in steps:
            client = clients[name]
            if client.seen_version is None:
                _read(factory, Tally, tally_id, client, mode)
            else:
                _write(factory, Tally, tally_id, client, model)
        for client in clients.values():  # finish every started cycle
            if client.seen_version is not None:
                _write(factory, Tally, tally_id, client, model)
    finally:
        for client in clients.values():
            if client.session is not None:
                client.session.close()
    _check_committed(db, tally_id, model)


def _read(factory: Any, Tally: Any, tally_id: int, client: _Client, mode: str) -> None:
    """Start a cycle: load the tally and remember its version and value."""
    session = factory()
    record = session.get(Tally, tally_id)
    client.seen_version, client.seen_n, client.mode = record.version, record.n, mode
    if mode == "form":
        session.close()  # the request that rendered the form is over
    else:
        client.session, client.record = session, record
        if mode == "refresh":
            record.expect_version(client.seen_version)


def _write(factory: Any, Tally: Any, tally_id: int, client: _Client, model: _Model) -> None:
    """Finish a cycle: write ``seen_n + 1`` and compare the outcome with the model."""
    assert client.seen_version is not None and client.seen_n is not None
    seen_version, seen_n = client.seen_version, client.seen_n
    session = client.session if client.session is not None else factory()
    held = client.record
    client.session = client.record = None
    client.seen_version = client.seen_n = None
    try:
        with acting_as(client.name):
            try:
                record = held if held is not None else session.get(Tally, tally_id)
                assert record is not None
                if client.mode == "form":
                    record.expect_version(seen_version)
                elif client.mode == "refresh":
                    session.refresh(record)
                record.n = seen_n + 1
                session.commit()
            except StaleWriteError as error:
                _check_conflict(error, seen_version, model)
                session.rollback()
                return
        assert seen_version == model.version, "a write based on a stale version committed"
        model.writers.append(client.name)
        model.version += 1
        model.n = seen_n + 1
    finally:
        session.close()


def _check_conflict(error: StaleWriteError, seen_version: int, model: _Model) -> None:
    """The conflict was expected and names exactly the versions written since."""
    assert seen_version != model.version, "a write based on the current version was refused"
    assert error.expected_version == seen_version
    assert error.current_version == model.version
    expected = list(range(seen_version, model.version))
    assert [change.version for change in error.changes] == expected
    assert [change.n for change in error.changes] == expected
    assert [change.change_info["user_id"] for change in error.changes] == [
        model.writers[v] for v in expected
    ]


def _check_committed(db: VersionedSQLAlchemy, tally_id: int, model: _Model) -> None:
    """The live row holds every successful write; history is 0..n-1 without gaps."""
    with db.engine.connect() as connection:
        live = connection.execute(
            sa.text("SELECT n, version FROM tally WHERE id = :id"), {"id": tally_id}
        ).one()
        history = connection.execute(
            sa.text(
                "SELECT version, n, change_info ->> 'user_id' AS who FROM tally_history "
                "WHERE id = :id ORDER BY version"
            ),
            {"id": tally_id},
        ).all()
    assert (live.n, live.version) == (model.n, model.version) == (len(model.writers),) * 2
    assert [tuple(row) for row in history] == list(
        zip(itertools.count(), itertools.count(), model.writers)
    )
