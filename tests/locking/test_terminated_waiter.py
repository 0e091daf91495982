"""A waiter whose backend is terminated gets the connection error, not PendingRollbackError."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from locking_helpers import Worker, backend_pid, wait_until_waiting


@pytest.mark.parametrize("how", ["timeout", "advisory-timeout"])
def test_terminated_waiter_sees_the_connection_error(
    app: Any, db: Any, Counter: Any, new_session: Any, admin: sa.Connection, how: str
) -> None:
    """lock(timeout=) / advisory_lock(timeout=) interrupted by pg_terminate_backend."""
    from chrononaut import advisory_lock

    holder = new_session()
    waiter = new_session()
    waiter_pid = backend_pid(waiter)
    rec = waiter.get(Counter, 1)

    def wait() -> None:
        if how == "timeout":
            with rec.lock(timeout=30):
                pass
        else:
            with advisory_lock("terminated", timeout=30, session=waiter):
                pass

    if how == "timeout":
        held = holder.get(Counter, 1).lock(commit=False)
    else:
        held = advisory_lock("terminated", session=holder, commit=False)
    with held:
        worker = Worker(app, wait)
        wait_until_waiting(admin, waiter_pid)
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": waiter_pid})
        with pytest.raises(sa.exc.DBAPIError) as caught:
            worker.join()
        holder.rollback()
    assert not isinstance(caught.value, sa.exc.PendingRollbackError)
    assert caught.value.connection_invalidated or "terminat" in str(caught.value.orig)
    waiter.rollback()
    assert waiter.get(Counter, 1) is not None
