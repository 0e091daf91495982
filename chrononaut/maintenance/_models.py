"""Finding Versioned models and reading their primary keys (shared by the commands)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, registry

from chrononaut.errors import ChrononautException
from chrononaut.versioning._meta import VersionMeta, mapped_mappers, meta_of

__all__ = [
    "base_pk_columns",
    "cli_extension",
    "cli_models",
    "find_model",
    "live_pk_columns",
    "parse_duration",
    "versioned_models",
]


def versioned_models(source: registry | Iterable[type[Any]]) -> list[type[Any]]:
    """The Versioned classes of a registry (or of an iterable of classes), base classes first.

    :param source: a SQLAlchemy ``registry`` (``db.Model.registry``) or model classes.
    """
    if isinstance(source, registry):
        mappers: list[Mapper[Any]] = mapped_mappers(source)
        classes: list[type[Any]] = [m.class_ for m in mappers]
    else:
        classes = list(source)
    found = [cls for cls in classes if meta_of(cls) is not None]
    # Hierarchy depth first, then name: a stable order for output and tests.
    found.sort(key=lambda cls: (len(_meta(cls).tables), cls.__name__))
    return found


def _meta(cls: type[Any]) -> VersionMeta:
    meta = meta_of(cls)
    if meta is None:
        raise ChrononautException(f"{cls.__name__} is not a Versioned model")
    return meta


def find_model(models: Sequence[type[Any]], name: str) -> type[Any]:
    """The model called ``name`` (class name or table name, case-insensitive).

    :param models: the candidates (see :func:`versioned_models`).
    :param name: a class name (``Article``) or table name (``article``).
    :raises ChrononautException: when no model, or several, match.
    """
    wanted = name.lower()
    by_class = [cls for cls in models if cls.__name__.lower() == wanted]
    if len(by_class) == 1:
        return by_class[0]
    by_table = [
        cls
        for cls in models
        if _meta(cls).mapper.inherits is None
        and _meta(cls).version_column.table.name.lower() == wanted
    ]
    if len(by_table) == 1:
        return by_table[0]
    known = ", ".join(sorted(cls.__name__ for cls in models)) or "none"
    raise ChrononautException(f"no Versioned model named {name!r}; Versioned models: {known}")


def base_pk_columns(meta: VersionMeta) -> list[sa.Column[Any]]:
    """The primary-key columns of the base history table (without ``version``)."""
    history = meta.tables[0].history
    return [history.c[col_key] for _, col_key in meta.tables[0].pk]


def live_pk_columns(meta: VersionMeta) -> list[sa.Column[Any]]:
    """The primary-key columns of the live root table, in history-table order."""
    table = meta.version_column.table
    return [table.c[col_key] for _, col_key in meta.tables[0].pk]


_DURATION = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``30d``, ``12h``, ``90m``, ``2w``, ``1d12h`` into a timedelta.

    :param text: one or more ``<number><unit>`` parts, units ``s m h d w``.
    :raises ValueError: for anything else.
    """
    stripped = text.strip()
    parts = _DURATION.findall(stripped)
    if not parts or _DURATION.sub("", stripped).strip():
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit (s, m, h, d, w), e.g. 30d or 12h"
        )
    total = dt.timedelta()
    for number, unit in parts:
        total += dt.timedelta(**{_UNITS[unit.lower()]: int(number)})
    return total


def cli_extension() -> Any:
    """The current app's database extension, for a ``flask chrononaut`` command."""
    import click

    from chrononaut._app import current_extension

    ext = current_extension()
    if ext is None:
        raise click.ClickException("this app has no Flask-SQLAlchemy extension")
    return ext


def cli_models(ext: Any) -> list[type[Any]]:
    """The Versioned models of ``ext``, for a ``flask chrononaut`` command."""
    import click

    models = versioned_models(ext.Model.registry)
    if not models:
        raise click.ClickException("this app has no Versioned models")
    return models
