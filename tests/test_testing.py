"""chrononaut.testing: finding a server, a database per run, and the pytest fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from chrononaut.testing import (
    SERVER_ENV,
    ResolvedDatabase,
    database_url,
    describe_database,
    resolve_database,
    temporary_database,
)


def _exists(server: sa.URL, name: str) -> bool:
    engine = sa.create_engine(server, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
        return found is not None
    finally:
        engine.dispose()


@pytest.fixture()
def no_explicit_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DATABASE_URL in the environment."""
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture()
def role_without_createdb(server_url: sa.URL) -> Iterator[str]:
    """A login role that may not create databases."""
    name = f"chrononaut_nocreate_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN NOCREATEDB'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def test_environment_url_comes_first(monkeypatch: pytest.MonkeyPatch, server_url: sa.URL) -> None:
    """``DATABASE_URL`` wins over the config mapping."""
    url = server_url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    found = resolve_database({"SQLALCHEMY_DATABASE_URI": "postgresql://elsewhere/db"})
    assert (found.source, sa.make_url(found.url)) == ("env", server_url)


def test_config_url_when_no_environment(no_explicit_url: None) -> None:
    """The config's ``SQLALCHEMY_DATABASE_URI`` is used, with its driver written out."""
    found = resolve_database({"SQLALCHEMY_DATABASE_URI": "postgresql://u@h/app"})
    assert found.source == "config"
    assert sa.make_url(found.url).drivername in {"postgresql+psycopg2", "postgresql+psycopg"}
    assert "SQLALCHEMY_DATABASE_URI" in found.description


def test_local_server_is_probed(
    no_explicit_url: None, monkeypatch: pytest.MonkeyPatch, server_url: sa.URL
) -> None:
    """Without an explicit URL, the server named by CHRONONAUT_TEST_SERVER is used."""
    probe = server_url.set(query={"application_name": uuid.uuid4().hex})
    monkeypatch.setenv(SERVER_ENV, probe.render_as_string(hide_password=False))
    found = resolve_database()
    assert found.source == "server"
    assert sa.make_url(found.url).database == server_url.database
    assert database_url() == found.url and describe_database() == found.description


def test_server_whose_user_cannot_create_databases_is_passed_over(
    no_explicit_url: None,
    monkeypatch: pytest.MonkeyPatch,
    server_url: sa.URL,
    role_without_createdb: str,
) -> None:
    """A probed user without CREATEDB is no use: the fallback is asked instead."""
    probe = server_url.set(username=role_without_createdb, password=None)
    monkeypatch.setenv(SERVER_ENV, probe.render_as_string(hide_password=False))
    mine = ResolvedDatabase("postgresql+psycopg2://x/y", "mine", "my server")
    assert resolve_database(fallback=lambda: mine) is mine


def test_nothing_found_says_what_to_set(
    no_explicit_url: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no URL, no server and no fallback, the error names DATABASE_URL."""
    monkeypatch.setenv(SERVER_ENV, f"postgresql://postgres@127.0.0.1:1/{uuid.uuid4().hex}")
    with pytest.raises(RuntimeError, match="set DATABASE_URL"):
        resolve_database()


def test_temporary_database_is_created_and_dropped(server_url: sa.URL) -> None:
    """The database exists inside the block and is gone after it."""
    with temporary_database(server_url, prefix="chrononaut_tmp") as url:
        name = sa.make_url(url).database
        assert name is not None and name.startswith("chrononaut_tmp_")
        assert _exists(server_url, name)
        engine = sa.create_engine(url)
        with engine.connect() as conn:  # left open: dropped all the same
            conn.execute(sa.text("SELECT 1"))
            with pytest.raises(ValueError):
                temporary_database(server_url, prefix="no; drop").__enter__()
        engine.dispose()
    assert not _exists(server_url, name)


def test_fixture_gives_a_database_of_its_own(
    chrononaut_database_url: str, chrononaut_server: ResolvedDatabase
) -> None:
    """``chrononaut_database_url`` is a fresh database on ``chrononaut_server``."""
    fresh, server = sa.make_url(chrononaut_database_url), sa.make_url(chrononaut_server.url)
    assert fresh.database != server.database
    assert (fresh.host, fresh.port) == (server.host, server.port)
