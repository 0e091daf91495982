"""Helpers of the locking tests (imported as ``locking_helpers``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session


def wait_until_waiting(admin: sa.Connection, pid: int, timeout: float = 5.0) -> None:
    """Block until backend ``pid`` waits for a lock (so the test is not timing-based)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = admin.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        ).scalar()
        if state == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def backend_pid(session: Session) -> int:
    """The server pid of the session's connection (starts its transaction)."""
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    assert isinstance(pid, int)
    return pid


class Worker:
    """Run ``target`` in a thread inside the Flask app's context; ``join()`` re-raises."""

    def __init__(self, app: Any, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with app.app_context():
                    self.result = target()
            except BaseException as error:  # handed to the test thread by join()
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("worker thread did not finish")
        if self.error is not None:
            raise self.error
        return self.result
