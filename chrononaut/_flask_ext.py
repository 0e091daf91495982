"""``VersionedSQLAlchemy``: Flask-SQLAlchemy with Chrononaut enabled.

Only Flask-SQLAlchemy's public surface is used: the ``session_options`` argument
(a session class of our own, ``class_``) and the app config read by ``init_app``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession

from chrononaut._app import EXTENSION_KEY, current_extension
from chrononaut._session import versioned_session
from chrononaut._urls import normalize_url
from chrononaut.versioning._change_info import FlaskSettings

__all__ = ["VersionedSQLAlchemy"]


class VersionedSQLAlchemy(SQLAlchemy):
    """A ``flask_sqlalchemy.SQLAlchemy`` whose sessions capture history.

    Takes the same arguments as ``SQLAlchemy``. Every session it makes —
    ``db.session`` and ``db.session.session_factory()`` — writes history for
    :class:`~chrononaut.Versioned` models, explains stale writes and applies the
    locking features. Its sessions are of a class of its own, derived from
    ``session_options["class_"]`` when you give one (else Flask-SQLAlchemy's
    ``Session``), so two extensions in one process never share listeners.

    ``CHRONONAUT_EXTRA_CHANGE_INFO_FUNC`` and ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO``
    are read from the current app's config at each flush: a change at run time
    applies from the next flush on.

    Database URLs: a plain ``postgresql://`` (or ``postgres://``) URL in
    ``SQLALCHEMY_DATABASE_URI`` or ``SQLALCHEMY_BINDS`` gets the installed driver
    written out when :meth:`init_app` runs (psycopg2, else psycopg 3; SQLAlchemy 2.0
    and 2.1 would pick different ones), and the config value is replaced by that
    URL. A URL naming its driver (``postgresql+psycopg://``) is used as it is, and
    fails at once with a :exc:`~chrononaut.ChrononautException` saying what to
    install when that driver is missing. With
    :func:`~chrononaut.versioned_session` you create the engine yourself, so
    SQLAlchemy's own rule applies there: name the driver in the URL.

    ``init_app`` registers the extension as ``app.extensions["chrononaut"]`` and
    the ``flask chrononaut`` commands.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        session_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = dict(session_options or {})
        base: type[sa.orm.Session] = options.get("class_", FlaskSession)
        # A subclass per extension: the listeners versioned_session adds to it
        # reach this extension's sessions only, never the class we were given.
        options["class_"] = versioned_session(
            type(f"Versioned{base.__name__}", (base,), {"__module__": __name__}),
            settings=FlaskSettings(),
        )
        super().__init__(app, session_options=options, **kwargs)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app`` (and its ``flask chrononaut`` commands)."""
        _write_drivers(app.config)
        super().init_app(app)
        app.extensions[EXTENSION_KEY] = self
        from chrononaut._cli import chrononaut_cli

        if "chrononaut" not in app.cli.commands:
            app.cli.add_command(chrononaut_cli)


def _with_driver(url: Any) -> Any:
    """``url`` with its driver written out; the same object when nothing changes."""
    if not isinstance(url, str | sa.URL):
        return url
    chosen = normalize_url(url)
    if isinstance(url, sa.URL):
        return url if chosen == url else chosen
    if chosen == sa.make_url(url):
        return url
    return chosen.render_as_string(hide_password=False)


def _write_drivers(config: Any) -> None:
    uri = config.get("SQLALCHEMY_DATABASE_URI")
    if uri is not None:
        config["SQLALCHEMY_DATABASE_URI"] = _with_driver(uri)
    binds = config.get("SQLALCHEMY_BINDS")
    if isinstance(binds, Mapping) and binds:
        rewritten: dict[Any, Any] = {}
        for key, value in binds.items():
            if isinstance(value, Mapping) and "url" in value:
                value = {**value, "url": _with_driver(value["url"])}
            else:
                value = _with_driver(value)
            rewritten[key] = value
        config["SQLALCHEMY_BINDS"] = rewritten


#: The old name, for callers not moved yet; the function lives in :mod:`chrononaut._app`
#: (which imports nothing of ours, so locking can use it without a cycle).
_current_extension = current_extension
