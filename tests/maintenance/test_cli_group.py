"""The maintenance commands are part of the app's ``flask chrononaut`` group."""

from __future__ import annotations

from flask import Flask

from chrononaut import VersionedSQLAlchemy


def test_group_lists_the_maintenance_commands(app: Flask, db: VersionedSQLAlchemy) -> None:
    """``flask chrononaut --help`` lists history, import-activity and prune."""
    result = app.test_cli_runner().invoke(args=["chrononaut", "--help"])
    assert result.exit_code == 0, result.output
    for name in ("history", "import-activity", "prune"):
        assert f"  {name} " in result.output
