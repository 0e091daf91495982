"""``VersionedSQLAlchemy``: Flask-SQLAlchemy with Chrononaut enabled (SPEC §1)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import sessionmaker

from chrononaut._session import versioned_session
from chrononaut._urls import normalize_url
from chrononaut.versioning._change_info import FlaskSettings

__all__ = ["VersionedSQLAlchemy"]


class VersionedSQLAlchemy(SQLAlchemy):
    """A ``flask_sqlalchemy.SQLAlchemy`` whose sessions capture history.

    Takes the same arguments as ``SQLAlchemy``. Every session it makes —
    ``db.session`` and ``db.session.session_factory()`` — writes history for
    :class:`~chrononaut.Versioned` models, explains stale writes and applies the
    locking features. Reads ``CHRONONAUT_EXTRA_CHANGE_INFO_FUNC`` and
    ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO`` from the current app's config.

    ``postgresql://`` URLs work with whichever of psycopg2 and psycopg 3 is installed.
    """

    def _make_session_factory(self, options: dict[str, Any]) -> sessionmaker[Any]:
        factory = super()._make_session_factory(options)
        return versioned_session(factory, settings=FlaskSettings())

    def _make_engine(
        self, bind_key: str | None, options: dict[str, Any], app: Flask
    ) -> sa.engine.Engine:
        options["url"] = normalize_url(options["url"])
        return super()._make_engine(bind_key, options, app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app`` (and its ``flask chrononaut`` commands)."""
        super().init_app(app)
        from chrononaut._cli import chrononaut_cli

        if "chrononaut" not in app.cli.commands:
            app.cli.add_command(chrononaut_cli)
