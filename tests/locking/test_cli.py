"""``flask chrononaut locks``: the locks held through Chrononaut right now."""

from __future__ import annotations

import json
from typing import Any

from locking_helpers import Worker, backend_pid, wait_until_waiting

from chrononaut import acting_as, advisory_lock
from chrononaut.locking._cli import locks_command


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


def test_command_is_registered_under_flask_chrononaut(app: Any, db: Any) -> None:
    """``flask chrononaut locks`` reaches the command through the app's CLI."""
    result = app.test_cli_runner().invoke(args=["chrononaut", "locks"])
    assert result.exit_code == 0, result.output
    assert "No locks" in result.output
