"""Where the demo keeps its data: its own database on the resolved PostgreSQL server.

The server comes from the project's ``_devdb`` tooling (an explicit
``DATABASE_URL``, else a server on 127.0.0.1:5432, else an embedded PostgreSQL),
so the demo runs on a fresh machine without any set-up. The demo then works in a
database of its own on that server, so it never touches the tables of whatever
database the URL names.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

__all__ = [
    "DEMO_DATABASE",
    "create_database",
    "database_exists",
    "demo_database_url",
    "drop_database",
    "normalize_url",
    "server_description",
    "server_url",
]

#: The database ``python -m demo`` keeps its records in.
DEMO_DATABASE = "chrononaut_demo"

# Database names the demo creates or drops are interpolated into DDL (CREATE
# DATABASE takes no bind parameters); only plain identifiers are allowed.
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def normalize_url(url: str | sa.URL) -> sa.URL:
    """The URL with its driver written out, by the rule ``VersionedSQLAlchemy`` applies.

    A plain ``postgresql://`` gets the installed driver (psycopg2, else psycopg 3);
    a URL naming its driver keeps it.

    :param url: a PostgreSQL URL, with or without a driver.
    """
    from chrononaut._urls import normalize_url as _normalize

    return _normalize(url)


def server_url() -> sa.URL:
    """The URL of the PostgreSQL server to use, resolved by the project's ``_devdb``.

    This may start an embedded PostgreSQL that lives as long as this process.
    """
    from _devdb import database_url

    return normalize_url(database_url())


def server_description() -> str:
    """One line saying which server :func:`server_url` uses and why."""
    from _devdb import describe_database

    return describe_database()


def _admin_engine(url: sa.URL) -> sa.Engine:
    # CREATE/DROP DATABASE cannot run inside a transaction block; NullPool so no
    # connection to the maintenance database outlives the call.
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _check_name(name: str) -> str:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}: use lower-case letters, digits and _")
    return name


def database_exists(server: sa.URL, name: str) -> bool:
    """Whether database ``name`` exists on ``server``.

    :param server: a URL of any database on the server.
    :param name: the database to look for.
    """
    engine = _admin_engine(server)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
        return found is not None
    finally:
        engine.dispose()


def create_database(server: sa.URL, name: str) -> sa.URL:
    """Create database ``name`` on ``server`` unless it exists; return its URL.

    :param server: a URL of any database on the server, used to run the DDL.
    :param name: the database to create.
    """
    _check_name(name)
    if not database_exists(server, name):
        engine = _admin_engine(server)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except DBAPIError:
            # Another demo process may have created it a moment ago; anything
            # else (no CREATEDB privilege, ...) is a real error.
            if not database_exists(server, name):
                raise
        finally:
            engine.dispose()
    return server.set(database=name)


def drop_database(server: sa.URL, name: str) -> None:
    """Drop database ``name`` from ``server`` if it exists, disconnecting its users.

    :param server: a URL of another database on the server, used to run the DDL.
    :param name: the database to drop.
    """
    _check_name(name)
    engine = _admin_engine(server)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def demo_database_url(server: sa.URL | None = None, name: str = DEMO_DATABASE) -> tuple[str, str]:
    """The URL of the demo's own database, created when missing.

    Falls back to the server URL's own database when the demo's database cannot
    be created (for example a hosted server without the CREATEDB privilege).

    :param server: the server URL; resolved with :func:`server_url` when omitted.
    :param name: the name of the demo database.
    :returns: the URL (as a string, password included) and a note for the user.
    """
    server = server if server is not None else server_url()
    try:
        url = create_database(server, name)
    except DBAPIError as exc:
        note = f"could not create database {name!r} ({exc.orig}); using {server.database!r} instead"
        return server.render_as_string(hide_password=False), note
    return url.render_as_string(hide_password=False), f"database {name!r}"
