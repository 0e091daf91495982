"""Database URL handling: make PostgreSQL URLs work with whichever driver is installed.

SQLAlchemy picks a default DBAPI for a plain ``postgresql://`` URL, and that default
changed: 2.0 uses psycopg2, 2.1 uses psycopg (3). A URL that works on one machine
therefore fails on another with ``No module named ...`` although a perfectly good
driver is installed. :func:`normalize_url` removes that dependency on the SQLAlchemy
version and on which of the two drivers happens to be present.
"""

from __future__ import annotations

import importlib
from functools import cache

import sqlalchemy as sa

from chrononaut.errors import ChrononautException

__all__ = ["normalize_url"]

# SQLAlchemy dialect driver name -> importable top-level module of the DBAPI.
_PSYCOPG2 = "psycopg2"
_PSYCOPG3 = "psycopg"
_DRIVER_MODULES = {_PSYCOPG2: "psycopg2", _PSYCOPG3: "psycopg"}


@cache
def _importable(module: str) -> bool:
    """Whether ``module`` imports (not merely exists: psycopg 3 without libpq fails)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _driver_installed(driver: str) -> bool:
    return _importable(_DRIVER_MODULES[driver])


def normalize_url(url: str | sa.URL) -> sa.URL:
    """Return ``url`` with an explicit PostgreSQL driver that is installed.

    - ``postgresql://`` becomes ``postgresql+psycopg2://`` when psycopg2 imports,
      else ``postgresql+psycopg://`` when psycopg 3 does (explicit, so the result
      does not depend on the SQLAlchemy version's default driver);
    - ``postgresql+psycopg2://`` / ``postgresql+psycopg://`` are kept as they are:
      naming a driver is a choice, never silently replaced; when that driver does
      not import, :exc:`~chrononaut.ChrononautException` says what to install;
    - ``postgres://`` (the spelling libpq and many hosting services use) is read as
      ``postgresql://``;
    - any other URL (other drivers such as asyncpg, other databases) is returned
      unchanged.

    :param url: a URL string or :class:`sqlalchemy.engine.URL`.
    :returns: a :class:`sqlalchemy.engine.URL`; query, credentials and database are
        kept as they were.
    :raises ChrononautException: when the URL names a psycopg driver that does not
        import.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgres":
        # The libpq/Heroku spelling, which SQLAlchemy does not accept.
        parsed = parsed.set(drivername="postgresql" + parsed.drivername[len("postgres") :])
    if parsed.get_backend_name() != "postgresql":
        return parsed
    driver = parsed.get_driver_name() if "+" in parsed.drivername else None
    if driver is None:
        # Prefer psycopg2: it is a hard dependency of Chrononaut and the driver
        # the SPEC measures; psycopg 3 is the fallback when only it is present.
        if _driver_installed(_PSYCOPG2) or not _driver_installed(_PSYCOPG3):
            chosen = _PSYCOPG2
        else:
            chosen = _PSYCOPG3
    elif driver in _DRIVER_MODULES:
        if not _driver_installed(driver):
            package = "psycopg2-binary" if driver == _PSYCOPG2 else "psycopg[binary]"
            raise ChrononautException(
                f"the database URL names the driver {driver!r}, which does not import: "
                f"install it (pip install {package!r}), or write postgresql:// to use the "
                "installed driver"
            )
        return parsed
    else:
        return parsed
    return parsed.set(drivername=f"postgresql+{chosen}")
