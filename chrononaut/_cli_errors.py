"""One way for every ``flask chrononaut`` command to fail: ``Error: …``, exit 1.

Bad input that reaches a command (a key the database can't compare, a duration
beyond the calendar, an unknown bind) must never end in a traceback. Driver
errors are reduced to their class, SQLSTATE and first line: their full text
quotes SQL parameters, which may hold hidden values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click
from sqlalchemy import exc as sa_exc

from chrononaut._db_errors import describe_db_error
from chrononaut.errors import ChrononautException

P = ParamSpec("P")
R = TypeVar("R")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def cli_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the documented errors of a command body into ``click.ClickException``."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except sa_exc.DBAPIError as error:
            raise click.ClickException(
                f"the database refused the command: {describe_db_error(error)}"
            ) from None
        except (ChrononautException, ValueError, TypeError, OverflowError, LookupError) as error:
            raise click.ClickException(_first_line(error)) from None

    return wrapper
