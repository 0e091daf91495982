"""Row locks, advisory locks and lock holders (SPEC §4).

This package must not import :mod:`chrononaut.versioning` internals: versioning
builds on locking (it records lock facts in history), never the other way round.

Contract used by the rest of the package:

- :class:`LockableMixin` gives records ``lock()``, ``lock_holder()``,
  ``advisory_lock()`` and the classmethod ``lock_next()``; ``Versioned`` inherits it.
- :func:`lock_info_for` tells history capture which lock (if any) this session
  holds on a record, for ``change_info["lock"]``.
- :func:`advisory_lock` and :func:`lock_all` are re-exported by :mod:`chrononaut`.
- :func:`string_key` / :func:`advisory_key` / :func:`record_key` document how keys
  reach PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from chrononaut.locking._common import held_row_lock
from chrononaut.locking._keys import advisory_key, string_key
from chrononaut.locking.advisory import advisory_lock, record_key
from chrononaut.locking.mixin import LockableMixin
from chrononaut.locking.rows import lock_all

__all__ = [
    "LockableMixin",
    "advisory_key",
    "advisory_lock",
    "lock_all",
    "lock_info_for",
    "record_key",
    "string_key",
]


def lock_info_for(session: Session, state: InstanceState[Any]) -> dict[str, Any] | None:
    """The lock this session's transaction holds on ``state``'s row through
    Chrononaut, as ``{"user_id", "mode", "acquired_at"}``, or ``None``.

    Called by history capture during flush. Costs a dict lookup: the locks are
    remembered in ``session.info`` when taken and forgotten as soon as the
    transaction that took them is no longer the session's transaction.

    :param session: the flushing session.
    :param state: the changed record's instance state.
    """
    return held_row_lock(session, state)
