"""Helpers for testing your own app against a real PostgreSQL server.

Chrononaut's behaviour (row and advisory locks, stale writes, history seen from
other sessions) only shows against a real server, so this module helps you find
one and give each test run a database of its own:

- :func:`resolve_database` / :func:`database_url` find the server to use: the
  ``DATABASE_URL`` environment variable, else ``SQLALCHEMY_DATABASE_URI`` or
  ``DATABASE_URL`` in the configuration mapping you pass, else a PostgreSQL server
  on this machine (``CHRONONAUT_TEST_SERVER``, by default
  ``postgresql://postgres@127.0.0.1:5432/postgres``) if it lets that user create
  databases, else the ``fallback`` you pass (for example a function that starts a
  container).
- :func:`temporary_database` creates a fresh database on that server and drops it
  afterwards.
- As a pytest plugin (``pytest_plugins = ["chrononaut.testing"]`` in your
  top-level ``conftest.py``) it provides the fixtures ``chrononaut_server`` and
  ``chrononaut_database_url``.

Nothing is logged or printed; :attr:`ResolvedDatabase.description` says which
source was used.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from chrononaut._urls import normalize_url

__all__ = [
    "SERVER_ENV",
    "ResolvedDatabase",
    "database_url",
    "describe_database",
    "resolve_database",
    "temporary_database",
]

#: Environment variable: URL of the local server to probe (step 3).
SERVER_ENV = "CHRONONAUT_TEST_SERVER"
_DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
_CONFIG_KEYS = ("SQLALCHEMY_DATABASE_URI", "DATABASE_URL")


@dataclass(frozen=True)
class ResolvedDatabase:
    """Where :func:`resolve_database` found PostgreSQL.

    :param url: SQLAlchemy URL (password included) naming its driver explicitly.
    :param source: ``"env"``, ``"config"``, ``"server"``, or what the fallback says.
    :param description: one human-readable line naming the source, e.g. to print.
    """

    url: str
    source: str
    description: str


_lock = threading.Lock()
# Probe answers per probed URL: a server found (or not) once per process.
_probed: dict[str, ResolvedDatabase | None] = {}


def resolve_database(
    config: Mapping[str, Any] | None = None,
    *,
    fallback: Callable[[], ResolvedDatabase] | None = None,
) -> ResolvedDatabase:
    """Find the PostgreSQL server to test against.

    Tries, in order: the ``DATABASE_URL`` environment variable; the
    ``SQLALCHEMY_DATABASE_URI`` or ``DATABASE_URL`` key of ``config``; the server
    named by ``CHRONONAUT_TEST_SERVER`` (default
    ``postgresql://postgres@127.0.0.1:5432/postgres``), used only when it answers
    and its user may create databases; then ``fallback``.

    A plain ``postgresql://`` URL gets the installed driver (psycopg2, else
    psycopg 3) written out; an explicit driver is kept.

    :param config: optional configuration mapping (e.g. ``app.config``).
    :param fallback: called when nothing else is found, e.g. to start a server.
    :raises RuntimeError: when no source is usable.
    """
    explicit = _explicit(config)
    if explicit is not None:
        return explicit
    probe = os.environ.get(SERVER_ENV, "").strip() or _DEFAULT_SERVER
    with _lock:
        if probe not in _probed:
            _probed[probe] = _probe(probe)
        found = _probed[probe]
    if found is not None:
        return found
    if fallback is not None:
        return fallback()
    shown = sa.make_url(probe).render_as_string(hide_password=True)
    raise RuntimeError(
        f"no PostgreSQL found: set DATABASE_URL, or start a server at {shown} whose user "
        f"may create databases (or point {SERVER_ENV} at one)"
    )


def database_url(
    config: Mapping[str, Any] | None = None,
    *,
    fallback: Callable[[], ResolvedDatabase] | None = None,
) -> str:
    """The URL of :func:`resolve_database`'s answer (same parameters)."""
    return resolve_database(config, fallback=fallback).url


def describe_database(
    config: Mapping[str, Any] | None = None,
    *,
    fallback: Callable[[], ResolvedDatabase] | None = None,
) -> str:
    """One line saying which server :func:`resolve_database` found and why."""
    return resolve_database(config, fallback=fallback).description


@contextmanager
def temporary_database(server_url: str | sa.URL, prefix: str = "test") -> Iterator[str]:
    """Create a database of its own on ``server_url``; drop it on exit.

    Runs that share a server (parallel CI jobs, two developers) then never see
    each other's tables. Connections still open to it at the end are closed.

    :param server_url: a URL of any database on the server, whose user may
        ``CREATE DATABASE``.
    :param prefix: start of the new database's name (letters, digits, ``_``).
    :returns: the new database's URL, password included.
    """
    if not prefix.replace("_", "").isalnum():
        raise ValueError(f"prefix {prefix!r} must be letters, digits and _")
    server = normalize_url(server_url)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    # CREATE/DROP DATABASE cannot run in a transaction block.
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _render(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


def _explicit(config: Mapping[str, Any] | None) -> ResolvedDatabase | None:
    env = os.environ.get("DATABASE_URL", "").strip()
    if env:
        return ResolvedDatabase(
            _render(normalize_url(env)), "env", "PostgreSQL from the DATABASE_URL variable"
        )
    for key in _CONFIG_KEYS:
        value = config.get(key) if config is not None else None
        if value:
            return ResolvedDatabase(
                _render(normalize_url(value)), "config", f"PostgreSQL from the {key} setting"
            )
    return None


def _probe(probe: str) -> ResolvedDatabase | None:
    url = normalize_url(probe)
    # A bare TCP connect first: it fails in microseconds when nothing listens,
    # without loading a driver (a socket-only URL skips it).
    if url.host and not url.host.startswith("/"):
        try:
            with socket.create_connection((url.host, url.port or 5432), timeout=0.5):
                pass
        except OSError:
            return None
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            # Test runs create a database of their own: a user without CREATEDB is no use.
            may_create = conn.execute(
                sa.text("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user")
            ).scalar()
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    if not may_create:
        return None
    where = f"{url.host}:{url.port or 5432}"
    return ResolvedDatabase(
        _render(url),
        "server",
        f"PostgreSQL server at {where} (user {url.username})",
    )


# -- pytest plugin: `pytest_plugins = ["chrononaut.testing"]` ---------------------------

if importlib.util.find_spec("pytest") is not None:
    import pytest

    @pytest.fixture(scope="session")
    def chrononaut_server() -> ResolvedDatabase:
        """The server found by :func:`resolve_database` (override it to choose another)."""
        return resolve_database()

    @pytest.fixture(scope="session")
    def chrononaut_database_url(chrononaut_server: ResolvedDatabase) -> Iterator[str]:
        """A fresh database for this test run (:func:`temporary_database`), dropped after."""
        with temporary_database(chrononaut_server.url) as url:
            yield url
