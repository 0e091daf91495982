"""``flask chrononaut locks``: the locks held through Chrononaut right now."""

from __future__ import annotations

import json
from typing import Any

from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import acting_as, advisory_lock
from chrononaut.locking import string_key
from chrononaut.locking._cli import locks_command
from chrononaut.locking._common import app_name, keys_from_app_name, user_from_app_name


def _run(app: Any, *args: str) -> Any:
    result = app.test_cli_runner().invoke(locks_command, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_no_locks(app: Any, db: Any, Counter: Any) -> None:
    """With nothing held the command says so."""
    assert "No locks" in _run(app).output


def test_lists_row_and_advisory_locks_with_waiters(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """Row locks (table, key, mode), advisory keys, users, pids and waiting pids."""
    holder = new_session()
    holder_pid = backend_pid(holder)
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    theirs = waiter.get(Counter, 2)

    def wait() -> None:
        with theirs.lock():
            pass

    with acting_as("quinn"), holder.get(Counter, 2).lock("no_key_update", commit=False):
        with advisory_lock((5, 6), session=holder, commit=False):
            worker = Worker(app, wait)
            wait_until_waiting(admin, waiter_pid)
            lines = [json.loads(line) for line in _run(app, "--json").output.splitlines()]
            table = _run(app).output
            holder.commit()
    worker.join()
    row = {k: lines[0][k] for k in ("kind", "lock", "mode", "user_id", "pid", "waiting")}
    assert row == {
        "kind": "row",
        "lock": "lock_counter id=2",
        "mode": "no_key_update",
        "user_id": "quinn",
        "pid": holder_pid,
        "waiting": [waiter_pid],
    }
    assert lines[1]["kind"] == "advisory" and lines[1]["lock"] == "(5, 6)"
    assert lines[1]["mode"] == "exclusive"
    assert "lock_counter id=2" in table and "quinn" in table and "WAITING" in table


def test_session_scope_advisory_lock_is_listed(app: Any, db: Any) -> None:
    """A session-scope advisory lock (a bigint key) is listed with its holder."""
    with acting_as("rita"), advisory_lock(123456789012, scope="session", shared=True):
        lines = [json.loads(line) for line in _run(app, "--json").output.splitlines()]
    assert [(x["lock"], x["mode"], x["user_id"]) for x in lines] == [
        ("123456789012", "shared", "rita")
    ]


def test_string_advisory_key_is_shown_by_its_text(app: Any, db: Any, new_session: Any) -> None:
    """A string key taken through Chrononaut is listed by its text, its hash kept as ``lock``."""
    holder = new_session()
    with acting_as("sam"), advisory_lock("nightly|report 100%", session=holder, commit=False):
        lines = [json.loads(line) for line in _run(app, "--json").output.splitlines()]
        table = _run(app).output
        holder.rollback()
    assert [(x["lock"], x["key"], x["user_id"]) for x in lines] == [
        (str(string_key("nightly|report 100%")), "nightly|report 100%", "sam")
    ]
    assert "'nightly|report 100%'" in table


def test_waiting_user_is_shown(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: Any
) -> None:
    """A backend waiting for a lock through Chrononaut is listed with its user."""
    holder = new_session()
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    theirs = waiter.get(Counter, 2)

    def wait() -> None:
        with acting_as("wendy"), theirs.lock():
            pass

    with acting_as("quinn"), holder.get(Counter, 2).lock(commit=False):
        worker = Worker(app, wait)
        wait_until_waiting(admin, waiter_pid)
        (line,) = [json.loads(line) for line in _run(app, "--json").output.splitlines()]
        table = _run(app).output
        holder.commit()
    worker.join()
    assert (line["waiting"], line["waiting_users"]) == ([waiter_pid], ["wendy"])
    assert f"{waiter_pid} (wendy)" in table


def test_tag_lists_key_texts_after_the_user() -> None:
    """Key texts round-trip through the tag; separators inside them are escaped."""
    tag = app_name("a|b", ["k|1", "50%"])
    assert len(tag) <= 63
    assert user_from_app_name(tag) == (True, "a|b")
    assert sorted(keys_from_app_name(tag)) == ["50%", "k|1"]


def test_tag_leaves_out_key_texts_that_do_not_fit() -> None:
    """A key text longer than the room left in application_name is not listed (or cut)."""
    tag = app_name("bob", ["short", "x" * 60])
    assert keys_from_app_name(tag) == ["short"]


def test_command_is_registered_under_flask_chrononaut(app: Any, db: Any) -> None:
    """``flask chrononaut locks`` reaches the command through the app's CLI."""
    result = app.test_cli_runner().invoke(args=["chrononaut", "locks"])
    assert result.exit_code == 0, result.output
    assert "No locks" in result.output


def test_row_lock_named_by_its_primary_key_column(app: Any, db: Any, new_session: Any) -> None:
    """A locked row is shown with its table's primary-key column, not a made-up ``id``."""
    from chrononaut.locking import LockableMixin

    class Ticket(db.Model, LockableMixin):  # type: ignore[misc]
        __tablename__ = "lock_ticket"
        ticket_no = db.Column(db.Integer, primary_key=True)

    db.create_all()
    db.session.add(Ticket(ticket_no=42))
    db.session.commit()
    holder = new_session()
    with holder.get(Ticket, 42).lock(commit=False):
        output = _run(app).output
        holder.rollback()
    assert "lock_ticket ticket_no=42" in output
