"""Advisory locks: keys, scopes, shared/exclusive, nowait, timeouts and holders (SPEC §4)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import LockError, LockNotAvailableError, LockTimeoutError, acting_as, advisory_lock
from chrononaut.locking import advisory_key, record_key, string_key


def _held_keys(admin: Any) -> list[tuple[int, int, int, str, int]]:
    return [
        tuple(row)
        for row in admin.execute(
            sa.text(
                "SELECT classid::bigint, objid::bigint, objsubid, mode, pid FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    ]


def test_string_key_is_the_documented_sha256_prefix() -> None:
    """A str key is the first 8 bytes of SHA-256 (UTF-8) as a signed big-endian int."""
    import hashlib

    expected = int.from_bytes(hashlib.sha256("ünïcode".encode()).digest()[:8], "big", signed=True)
    assert string_key("ünïcode") == expected
    assert advisory_key("ünïcode") == expected
    assert string_key("") == int.from_bytes(hashlib.sha256(b"").digest()[:8], "big", signed=True)


def test_string_key_is_stable_across_processes() -> None:
    """Other interpreters (different hash seeds) compute the same key for a string."""
    keys = ["job:nightly-report", "ünïcode ✓", "accounts/42"]
    script = (
        "import sys; from chrononaut.locking import string_key; "
        "print(*[string_key(k) for k in sys.argv[1:]])"
    )
    results = set()
    for seed in ("1", "2", "random"):
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", script, *keys],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.add(out.strip())
    assert results == {" ".join(str(string_key(k)) for k in keys)}


def test_string_key_matches_the_documented_sql(db: Any) -> None:
    """The documented SQL expression computes the same key in PostgreSQL."""
    for text in ("job:nightly-report", "ünïcode ✓", ""):
        in_sql = db.session.execute(
            sa.text(
                "SELECT ('x' || left(encode(sha256(convert_to(:t, 'UTF8')), 'hex'), 16))"
                "::bit(64)::bigint"
            ),
            {"t": text},
        ).scalar()
        assert in_sql == string_key(text)


def test_known_key_vectors() -> None:
    """Fixed examples, so a change of the algorithm can't go unnoticed."""
    assert string_key("chrononaut") == -5538605941504837958
    assert string_key("accounts/42") == -9056888881870414037


@pytest.mark.parametrize(
    ("key", "ids"),
    [
        (5, (0, 5, 1)),
        (-1, (0xFFFFFFFF, 0xFFFFFFFF, 1)),
        (2**40 + 7, (2**8, 7, 1)),
        ((3, -4), (3, 2**32 - 4, 2)),
    ],
)
def test_keys_reach_pg_locks_as_documented(
    db: Any, admin: Any, key: Any, ids: tuple[int, int, int]
) -> None:
    """int keys use the bigint form, pairs the two-int form (pg_locks objsubid 1 / 2)."""
    pid = backend_pid(db.session())
    with advisory_lock(key):
        held = [(c, o, s) for c, o, s, _, p in _held_keys(admin) if p == pid]
        assert held == [ids]


def test_transaction_scope_holds_until_the_block_commits(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """Transaction scope: others can't take the key until the block's commit."""
    other = new_session()
    rec = db.session.get(Counter, 1)
    with advisory_lock("report"):
        rec.n = 8
        with (
            pytest.raises(LockNotAvailableError),
            advisory_lock("report", nowait=True, session=other),
        ):
            pass
    assert not db.session().in_transaction()
    with advisory_lock("report", nowait=True, session=other):
        pass
    assert new_session().get(Counter, 1).n == 8


def test_transaction_scope_exception_rolls_back(db: Any, Counter: Any, new_session: Any) -> None:
    """Transaction scope: an exception rolls back the block's changes and frees the key."""
    rec = db.session.get(Counter, 1)
    with pytest.raises(RuntimeError), advisory_lock(7):
        rec.n = 9
        db.session.flush()
        raise RuntimeError
    assert new_session().get(Counter, 1).n == 0
    with advisory_lock(7, nowait=True, session=new_session()):
        pass


def test_nowait_error_names_the_holder(db: Any, new_session: Any) -> None:
    """LockNotAvailableError.holder has the holder's acting user and pid."""
    holder = new_session()
    holder_pid = backend_pid(holder)
    with acting_as("carol"), advisory_lock((1, 2), session=holder):
        with pytest.raises(LockNotAvailableError) as caught:
            with advisory_lock((1, 2), nowait=True):
                pass
    found = caught.value.holder
    assert found is not None
    assert (found.user_id, found.pid) == ("carol", holder_pid)
    assert found.since is not None


def test_shared_locks_coexist_and_exclude_exclusive(db: Any, new_session: Any) -> None:
    """shared=True: many shared holders; an exclusive request conflicts."""
    first, second, third = new_session(), new_session(), new_session()
    with advisory_lock(11, shared=True, session=first):
        with advisory_lock(11, shared=True, nowait=True, session=second):
            with (
                pytest.raises(LockNotAvailableError),
                advisory_lock(11, nowait=True, session=third),
            ):
                pass


def test_timeout_raises_and_keeps_transaction_usable(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """timeout: LockTimeoutError (server-side); the transaction goes on; lock_timeout restored."""
    holder = new_session()
    rec = db.session.get(Counter, 1)
    rec.n = 3
    db.session.flush()
    with acting_as("dave"), advisory_lock("k", session=holder):
        started = time.monotonic()
        with (
            pytest.raises(LockTimeoutError) as caught,
            advisory_lock("k", timeout=0.1, commit=False),
        ):
            pass
        assert time.monotonic() - started < 2
    assert caught.value.holder is not None and caught.value.holder.user_id == "dave"
    assert db.session.execute(sa.text("SHOW lock_timeout")).scalar() == "0"
    db.session.commit()
    assert new_session().get(Counter, 1).n == 3


def test_timeout_is_granted_when_freed_in_time(
    app: Any, db: Any, new_session: Any, admin: Any
) -> None:
    """A key freed within the timeout is granted, and lock_timeout is back afterwards."""
    holder, waiter = new_session(), new_session()
    pid = backend_pid(waiter)

    def wait() -> str:
        with advisory_lock("soon", timeout=5, session=waiter, commit=False):
            return str(waiter.execute(sa.text("SHOW lock_timeout")).scalar())

    with advisory_lock("soon", session=holder):
        worker = Worker(app, wait)
        wait_until_waiting(admin, pid)
    assert worker.join() == "0"
    waiter.rollback()


def test_session_scope_survives_commits_inside_the_block(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """Session scope: the key stays held while the block commits the ORM session."""
    other = new_session()
    rec = db.session.get(Counter, 1)
    with advisory_lock("batch", scope="session"):
        rec.n = 1
        db.session.commit()
        with (
            pytest.raises(LockNotAvailableError),
            advisory_lock("batch", nowait=True, session=other),
        ):
            pass
    with advisory_lock("batch", nowait=True, session=other):
        pass


def test_session_scope_does_not_use_the_orm_connection(db: Any, admin: Any) -> None:
    """Session scope: the lock is held by a backend other than the ORM session's."""
    orm_pid = backend_pid(db.session())
    with advisory_lock(77, scope="session"):
        pids = {p for _, o, _, _, p in _held_keys(admin) if o == 77}
    assert pids and orm_pid not in pids
    db.session.rollback()


def test_session_scope_is_released_on_exception(db: Any, new_session: Any) -> None:
    """Session scope: an exception in the block releases the key."""
    with pytest.raises(ZeroDivisionError), advisory_lock("div", scope="session"):
        1 / 0  # noqa: B018
    with advisory_lock("div", nowait=True, session=new_session()):
        pass


def test_session_scope_is_reentrant_in_its_thread(db: Any, new_session: Any) -> None:
    """Session scope: the same key again in the same thread does not wait for itself."""
    other = new_session()
    with advisory_lock("again", scope="session"):
        with advisory_lock("again", scope="session", timeout=1):
            pass
        # Still held after the inner block released its level.
        with (
            pytest.raises(LockNotAvailableError),
            advisory_lock("again", nowait=True, session=other),
        ):
            pass
    with advisory_lock("again", nowait=True, session=other):
        pass


def test_session_scope_excludes_other_threads(app: Any, db: Any, new_session: Any) -> None:
    """Session scope: another thread can't take the key while it is held."""
    other = new_session()

    def attempt() -> None:
        with advisory_lock("thread-key", scope="session", nowait=True, session=other):
            pass

    with advisory_lock("thread-key", scope="session"):
        with pytest.raises(LockNotAvailableError):
            Worker(app, attempt).join()
    Worker(app, attempt).join()


def test_session_scope_freed_when_its_connection_dies(
    db: Any, new_session: Any, admin: Any
) -> None:
    """Killing the connection that holds a session-scope lock frees the key; exit says so."""
    other = new_session()
    with pytest.raises(LockError, match="lost"):
        with advisory_lock("fragile", scope="session"):
            key = advisory_key("fragile")
            assert isinstance(key, int)
            unsigned = key & 0xFFFFFFFFFFFFFFFF
            pid = admin.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
                    "AND classid::bigint = :c AND objid::bigint = :o"
                ),
                {"c": unsigned >> 32, "o": unsigned & 0xFFFFFFFF},
            ).scalar()
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            deadline = time.monotonic() + 5
            while admin.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with advisory_lock("fragile", nowait=True, session=other):
                pass


def test_session_scope_timeout_and_holder(app: Any, db: Any, new_session: Any) -> None:
    """Session scope honours timeout= and names the holder."""
    other = new_session()

    def attempt() -> None:
        with advisory_lock("slow", scope="session", timeout=0.1, session=other):
            pass

    with acting_as("erin"), advisory_lock("slow", scope="session"):
        with pytest.raises(LockTimeoutError) as caught:
            Worker(app, attempt).join()
    assert caught.value.holder is not None
    assert caught.value.holder.user_id == "erin"


def test_record_advisory_lock_key_is_table_and_primary_key(
    db: Any, Counter: Any, new_session: Any
) -> None:
    """record.advisory_lock() is advisory_lock(record_key(record)) and leaves the row unlocked."""
    rec = db.session.get(Counter, 2)
    theirs = new_session().get(Counter, 2)
    assert record_key(rec) == '["chrononaut.record",null,"lock_counter",[2]]'
    with rec.advisory_lock():
        with pytest.raises(LockNotAvailableError):
            with advisory_lock(record_key(rec), nowait=True, session=new_session()):
                pass
        with theirs.lock(nowait=True):
            pass


def test_application_name_is_restored_after_the_transaction(db: Any) -> None:
    """The holder tag in application_name lasts only for the locking transaction."""
    before = db.session.execute(sa.text("SHOW application_name")).scalar()
    with acting_as("frank"), advisory_lock(1, commit=False):
        assert db.session.execute(sa.text("SHOW application_name")).scalar() == "chrononaut:frank"
    db.session.commit()
    assert db.session.execute(sa.text("SHOW application_name")).scalar() == before
    db.session.rollback()
