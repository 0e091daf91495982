"""Reading driver errors: the SQLSTATE, and a description safe to show or log.

One place for psycopg2's ``pgcode`` and psycopg 3's ``sqlstate``. A driver
error's full text quotes the statement and its parameters (hidden values
included) and a ``DETAIL`` line with row values, so it is shown as its class,
SQLSTATE and the first line of the server's message only.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc


def sqlstate(error: BaseException | None) -> str | None:
    """The PostgreSQL SQLSTATE of a driver error (psycopg2 or psycopg 3), if any.

    :param error: a SQLAlchemy ``DBAPIError`` or the driver's own exception.
    """
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def describe_db_error(error: sa_exc.DBAPIError) -> str:
    """``Class [SQLSTATE code]: first line`` of a driver error (no SQL, no values)."""
    orig = error.orig
    if orig is None:
        return type(error).__name__
    code = sqlstate(orig)
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else type(orig).__name__
    return f"{type(orig).__name__}{f' [SQLSTATE {code}]' if code else ''}: {first}"
