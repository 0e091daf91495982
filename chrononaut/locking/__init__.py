"""Row locks, advisory locks and lock holders.

This package must not import :mod:`chrononaut.versioning` internals: versioning
builds on locking (it records lock facts in history), never the other way round.

Contract used by the rest of the package:

- :class:`LockableMixin` gives records ``lock()``, ``lock_holder()``,
  ``advisory_lock()`` and the classmethod ``lock_next()``; ``Versioned`` inherits it.
- ``_common.held_row_lock`` tells history capture which lock (if any) this
  session holds on a record, for ``change_info["lock"]`` (internal).
- :func:`advisory_lock` and :func:`lock_all` are re-exported by :mod:`chrononaut`.
- :func:`string_key` / :func:`advisory_key` / :func:`record_key` document how keys
  reach PostgreSQL.
"""

from __future__ import annotations

from chrononaut.locking._advisory import advisory_lock, record_key
from chrononaut.locking._keys import advisory_key, string_key
from chrononaut.locking._mixin import LockableMixin
from chrononaut.locking._rows import lock_all

__all__ = [
    "LockableMixin",
    "advisory_key",
    "advisory_lock",
    "lock_all",
    "record_key",
    "string_key",
]
