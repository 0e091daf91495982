"""``flask chrononaut locks``: the locks held through Chrononaut right now."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from chrononaut._app import current_extension
from chrononaut._cli_errors import cli_errors
from chrononaut.locking._common import keys_from_app_name, user_from_app_name
from chrononaut.locking._keys import decode_marker, string_key

__all__ = ["HeldLock", "Waiter", "held_locks", "locks_command"]

# Advisory locks (row markers and advisory_lock keys) held by backends whose
# application_name carries Chrononaut's tag, with the table a marker names.
_LOCKS_SQL = sa.text(
    """
    SELECT l.pid, l.classid::bigint, l.objid::bigint, l.objsubid, l.mode,
           a.application_name, COALESCE(a.xact_start, a.state_change),
           CASE WHEN l.objsubid = 2 AND c.relkind IN ('r', 'p')
                THEN c.oid::regclass::text END AS relation,
           -- The name of the table's one-column primary key (row markers exist
           -- only for keys of one small integer).
           (SELECT pa.attname FROM pg_index i
            JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = i.indkey[0]
            WHERE l.objsubid = 2 AND i.indrelid = c.oid AND i.indisprimary
              AND i.indnatts = 1) AS key_name
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    LEFT JOIN pg_class c ON l.objsubid = 2 AND c.oid = l.classid
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.application_name LIKE 'chrononaut%'
      AND l.pid <> pg_backend_pid()
    ORDER BY a.xact_start NULLS LAST, l.pid, l.classid, l.objid
    """
)

# Who waits for whom: every backend of this database waiting for a lock, with
# the pids blocking it and its tag (the waiter's user, when its transaction
# already took a lock through Chrononaut).
_WAITERS_SQL = sa.text(
    """
    SELECT pid, pg_blocking_pids(pid), application_name FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
    """
)


@dataclass(frozen=True)
class Waiter:
    """A backend waiting for a lock: its pid and, when known, its acting user."""

    pid: int
    user_id: str | None = None

    def __str__(self) -> str:
        return str(self.pid) if self.user_id is None else f"{self.pid} ({self.user_id})"


@dataclass
class HeldLock:
    """One lock held through Chrononaut, as listed by ``flask chrononaut locks``."""

    kind: str
    target: str
    mode: str
    user_id: str | None
    pid: int
    since: _dt.datetime | None
    waiters: list[Waiter] = field(default_factory=list)
    #: The text of a string advisory key taken through Chrononaut, when known.
    key_text: str | None = None

    @property
    def waiting(self) -> list[int]:
        """The pids waiting for this holder."""
        return [waiter.pid for waiter in self.waiters]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "kind": self.kind,
            "lock": self.target,
            "key": self.key_text,
            "mode": self.mode,
            "user_id": self.user_id,
            "pid": self.pid,
            "since": self.since.isoformat() if self.since else None,
            "waiting": self.waiting,
            "waiting_users": [waiter.user_id for waiter in self.waiters],
        }


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def held_locks(conn: sa.Connection) -> list[HeldLock]:
    """The locks currently held through Chrononaut in this database.

    Row locks are found through their marker locks (so rows beyond the marker
    limit of one ``lock_all()`` call are not listed); advisory locks through the
    holder's ``application_name`` tag. A row whose key is not one small integer has
    a 64-bit hashed marker, listed as a shared advisory lock on that key.

    :param conn: any connection to the database.
    """
    waiters: dict[int, list[Waiter]] = {}
    for pid, blockers, waiter_app in conn.execute(_WAITERS_SQL):
        waiter = Waiter(int(pid), user_from_app_name(waiter_app)[1])
        for blocker in blockers or ():
            waiters.setdefault(int(blocker), []).append(waiter)
    held: list[HeldLock] = []
    for row in conn.execute(_LOCKS_SQL):
        pid, classid, objid, objsubid, mode, app, since, relation, key_name = row
        _, user_id = user_from_app_name(app)
        if relation is not None:
            pk, row_mode = decode_marker(int(objid))
            target = f"{relation} {key_name or 'key'}={pk}"
            held.append(HeldLock("row", target, row_mode, user_id, int(pid), since))
            continue
        text: str | None = None
        if objsubid == 2:
            target = f"({_signed(int(classid), 32)}, {_signed(int(objid), 32)})"
        else:
            value = _signed((int(classid) << 32) | int(objid), 64)
            target = str(value)
            # The holder's tag lists the texts of the string keys it took; a text
            # is this lock's key only if it hashes to it.
            text = next((k for k in keys_from_app_name(app) if string_key(k) == value), None)
        lock_mode = "shared" if mode == "ShareLock" else "exclusive"
        held.append(HeldLock("advisory", target, lock_mode, user_id, int(pid), since, [], text))
    for lock in held:
        lock.waiters = sorted(waiters.get(lock.pid, []), key=lambda waiter: waiter.pid)
    # Oldest holder first; per holder its row locks, then its advisory locks.
    epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    held.sort(key=lambda lock: (lock.since or epoch, lock.pid, lock.kind != "row"))
    return held


@click.command("locks")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option(
    "--bind", default=None, help="Flask-SQLAlchemy bind key (default: the main database)."
)
@with_appcontext
@cli_errors
def locks_command(as_json: bool, bind: str | None) -> None:
    """List the locks currently held through Chrononaut: what is locked (a string
    advisory key by its text when known), in which mode, by which user and server
    process, since when, and who is waiting (pid, and user when known)."""
    ext = current_extension()
    if ext is None:
        raise click.ClickException("this app has no Flask-SQLAlchemy extension")
    try:
        engine = ext.engines[bind]
    except KeyError:
        raise click.ClickException(f"no database bind {bind!r}") from None
    with engine.connect() as conn:
        locks = held_locks(conn)
    if as_json:
        for lock in locks:
            click.echo(json.dumps(lock.as_dict()))
        return
    if not locks:
        click.echo("No locks are held through Chrononaut.")
        return
    header = ("KIND", "LOCK", "MODE", "USER", "PID", "SINCE", "WAITING")
    lines = [header]
    for lock in locks:
        lines.append(
            (
                lock.kind,
                repr(lock.key_text) if lock.key_text is not None else lock.target,
                lock.mode,
                lock.user_id if lock.user_id is not None else "-",
                str(lock.pid),
                lock.since.isoformat(timespec="seconds") if lock.since else "-",
                ",".join(str(waiter) for waiter in lock.waiters) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
