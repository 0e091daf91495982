"""The ``flask chrononaut`` command group."""

from __future__ import annotations

from flask.cli import AppGroup

__all__ = ["chrononaut_cli"]

chrononaut_cli = AppGroup("chrononaut", help="Chrononaut: history, locks and maintenance.")


def _register() -> None:
    try:
        from chrononaut.locking.cli import locks_command
    except ImportError:
        return
    chrononaut_cli.add_command(locks_command)


_register()
