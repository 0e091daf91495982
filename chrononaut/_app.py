"""The current Flask app's database extension, for code outside the extension.

A module of its own (it imports nothing of Chrononaut) so that locking, the CLI
and the request helpers can find the app's database without importing
:mod:`chrononaut._flask_ext`, which builds on versioning.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

#: Key of :class:`~chrononaut.VersionedSQLAlchemy` in ``app.extensions``.
EXTENSION_KEY = "chrononaut"

#: Where Flask-SQLAlchemy's ``init_app`` registers itself (a plain ``SQLAlchemy``).
FLASK_SQLALCHEMY_KEY = "sqlalchemy"


def current_extension() -> Any:
    """The current app's ``VersionedSQLAlchemy``, else its Flask-SQLAlchemy extension.

    For code that runs in an app context (CLI commands, request helpers, a lock
    without ``session=``) and needs the app's database; ``None`` when the app has
    neither.
    """
    extensions = current_app.extensions
    return extensions.get(EXTENSION_KEY, extensions.get(FLASK_SQLALCHEMY_KEY))
