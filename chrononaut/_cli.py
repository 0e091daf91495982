"""The ``flask chrononaut`` command group.

Commands live next to the feature they operate (``chrononaut.locking._cli``,
``chrononaut.maintenance._cli``); this module only gathers them.
"""

from __future__ import annotations

import importlib

import click
from flask.cli import AppGroup

__all__ = ["chrononaut_cli"]

chrononaut_cli = AppGroup("chrononaut", help="Chrononaut: history, locks and maintenance.")

_COMMAND_MODULES = (
    "chrononaut.locking._cli",
    "chrononaut.maintenance._cli",
    "chrononaut.maintenance._timetravel",
    "chrononaut._lease_cli",
)


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name + ".").startswith(exc.name + "."):
                raise  # a missing dependency inside the module, not the module itself
            continue
        commands = getattr(module, "COMMANDS", None)
        if commands is None:
            commands = [v for v in vars(module).values() if isinstance(v, click.Command)]
        for command in commands:
            chrononaut_cli.add_command(command)


_register()
