"""A record's timeline: every change with who, when, why and what (``flask chrononaut history``)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from chrononaut.errors import _NO_USER, ChrononautException
from chrononaut.maintenance._cast import cast_value
from chrononaut.maintenance._models import base_pk_columns
from chrononaut.versioning._meta import VERSION_KEY, VersionMeta, meta_of

__all__ = ["Change", "Timeline", "parse_key", "timeline"]


@dataclass
class Change:
    """One change of a record: version ``version`` became ``version + 1`` (or was deleted)."""

    version: int
    changed: dt.datetime
    user_id: str | None
    remote_addr: str | None
    #: ``change_info["extra"]`` (``rationale`` and other context)
    extra: dict[str, Any]
    #: tracked attribute -> (old value, new value)
    fields: dict[str, tuple[Any, Any]]
    #: hidden columns that changed (values are never stored)
    hidden: list[str]
    deleted: bool = False
    lock: dict[str, Any] | None = None
    #: whether the new values are unknown (the next version was pruned)
    next_unknown: bool = False
    #: when this version began (None: where the previous one ended; legacy rows)
    valid_from: dt.datetime | None = None

    @property
    def why(self) -> str | None:
        """The rationale, when one was given."""
        value = self.extra.get("rationale")
        return None if value is None else str(value)

    def as_dict(self) -> dict[str, Any]:
        """JSON values: field values as JSON numbers, strings, ``null``, ... (dates
        and times as ISO 8601 text, decimals and UUIDs as text, bytes as hex);
        ``fields`` maps each changed field to ``[old, new]`` (``new`` is ``null``
        when the next version was pruned)."""
        return {
            "version": self.version,
            "changed": self.changed.isoformat(),
            "user_id": self.user_id,
            "remote_addr": self.remote_addr,
            "extra": _json(self.extra),
            "fields": {
                k: [_json(o), None if self.next_unknown else _json(n)]
                for k, (o, n) in self.fields.items()
            },
            "hidden_changed": self.hidden,
            "deleted": self.deleted,
            "lock": _json(self.lock),
            "next_pruned": self.next_unknown,
            "valid_from": None if self.valid_from is None else self.valid_from.isoformat(),
        }


@dataclass
class Timeline:
    """The changes of one record, oldest first."""

    model: str
    key: tuple[Any, ...]
    #: the live record's version, or None when it was deleted
    current_version: int | None
    changes: list[Change] = field(default_factory=list)
    #: the oldest version still in history (older ones were pruned), or None
    oldest_kept: int | None = None
    #: when the live record's current version began (None: unknown or deleted)
    current_since: dt.datetime | None = None

    @property
    def found(self) -> bool:
        """Whether the record exists or ever had recorded history."""
        return self.current_version is not None or bool(self.changes)

    def lines(self) -> list[str]:
        """The timeline as text, one change per block."""
        key = ", ".join(str(v) for v in self.key)
        if self.current_version is None:
            head = f"{self.model} {key}: deleted"
        else:
            head = f"{self.model} {key}: current version {self.current_version}"
            if self.current_since is not None:
                head += f" [{_when(self.current_since)}, now)"
        out = [head]
        if not self.changes:
            out.append("  no recorded changes")
            return out
        if self.oldest_kept:
            out.append(f"  versions before {self.oldest_kept} were pruned")
        for change in self.changes:
            who = change.user_id if change.user_id is not None else _NO_USER
            if change.remote_addr:
                who += f" from {change.remote_addr}"
            target = "deleted" if change.deleted else f"v{change.version + 1}"
            out.append(
                f"v{change.version} -> {target}  "
                f"{change.changed.isoformat(sep=' ', timespec='seconds')}  by {who}"
            )
            began = "?" if change.valid_from is None else _when(change.valid_from)
            out.append(f"    v{change.version} was current [{began}, {_when(change.changed)})")
            if change.why:
                out.append(f"    why: {change.why}")
            others = {k: v for k, v in change.extra.items() if k != "rationale"}
            if others:
                out.append(f"    info: {_show(others)}")
            if change.lock:
                out.append(f"    while locked ({change.lock.get('mode')})")
            for name, (old, new) in change.fields.items():
                if change.next_unknown:
                    out.append(f"    {name}: {_show(old)} -> (pruned)")
                else:
                    out.append(f"    {name}: {_show(old)} -> {_show(new)}")
            for name in change.hidden:
                out.append(f"    {name}: changed (hidden)")
            if change.next_unknown and not change.fields:
                out.append("    (the next version was pruned: changed fields unknown)")
        return out


def _json(value: Any) -> Any:
    """``value`` as a JSON value (what ``json.dumps`` takes as it is)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json(v) for v in value]
    return str(value)


def _when(value: dt.datetime) -> str:
    return value.isoformat(sep=" ", timespec="microseconds")


def _show(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def parse_key(model: type[Any], values: Sequence[str]) -> tuple[Any, ...]:
    """A primary key typed as the model's key columns, from command-line text.

    :param model: a Versioned model.
    :param values: one text value per primary-key column.
    :raises ChrononautException: when the number of values is wrong or a value
        can't be read as its column's type.
    """
    meta = _meta(model)
    columns = base_pk_columns(meta)
    if len(values) != len(columns):
        names = ", ".join(c.name for c in columns)
        raise ChrononautException(
            f"{model.__name__} is keyed by {names}: give {len(columns)} value(s), not {len(values)}"
        )
    out = []
    for column, text in zip(columns, values, strict=True):
        try:
            out.append(cast_value(column.type, text))
        except (ValueError, TypeError) as exc:
            raise ChrononautException(
                f"{text!r} is not a valid {column.name} ({column.type}): {exc}"
            ) from exc
    return tuple(out)


def _meta(model: type[Any]) -> VersionMeta:
    meta = meta_of(model)
    if meta is None:
        raise TypeError(f"{model.__name__} is not a Versioned model")
    return meta


def timeline(session: Session, model: type[Any], key: tuple[Any, ...]) -> Timeline:
    """The changes of the record of ``model`` with primary key ``key``.

    Works for deleted records too (their history outlives them).

    :param session: any session on the database (only reads).
    :param model: a Versioned model.
    :param key: the primary-key values, in primary-key order.
    """
    meta = _meta(model)
    history_cls = meta.history_mapper.class_
    history = meta.tables[0].history
    match = [c == v for c, v in zip(base_pk_columns(meta), key, strict=True)]
    records = session.query(history_cls).filter(*match).order_by(history.c[VERSION_KEY]).all()
    live = session.get(model, key if len(key) > 1 else key[0])
    live_meta = meta_of(type(live)) if live is not None else None
    result = Timeline(
        model=model.__name__,
        key=key,
        current_version=None if live is None else int(getattr(live, VERSION_KEY)),
        current_since=None if live is None else getattr(live, "valid_from", None),
    )
    if records and records[0].version > 0:
        result.oldest_kept = records[0].version
    for index, record in enumerate(records):
        info = record.change_info or {}
        nxt: Any = records[index + 1] if index + 1 < len(records) else live
        deleted = bool(info.get("deleted"))
        # The next state is unknown when the row after this one was pruned.
        gap = nxt is not None and getattr(nxt, VERSION_KEY) != record.version + 1
        fields: dict[str, tuple[Any, Any]] = {}
        if not deleted and nxt is not None:
            rec_meta = meta_of(type(record).__chrononaut_model__) or meta
            tracked = [k for k in rec_meta.tracked if k not in rec_meta.pk_keys]
            if live_meta is not None and nxt is live:
                tracked = [k for k in tracked if k in live_meta.tracked]
            for name in tracked:
                old = record.__dict__.get(name)
                new = nxt.__dict__.get(name) if nxt is not live else getattr(live, name)
                if old != new:
                    fields[name] = (old, new)
        lock = info.get("lock")
        result.changes.append(
            Change(
                version=record.version,
                changed=record.changed,
                user_id=info.get("user_id"),
                remote_addr=info.get("remote_addr"),
                extra=dict(info.get("extra") or {}),
                fields=fields,
                hidden=sorted(info.get("hidden_cols_changed") or ()),
                deleted=deleted,
                lock=lock if isinstance(lock, dict) else None,
                next_unknown=gap,
                valid_from=record.__dict__.get("valid_from"),
            )
        )
    return result
