"""The "accounts as of…" page: the accounts table as it was at a chosen instant,
read with :func:`chrononaut.as_of`."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from flask import Blueprint, render_template, request
from flask_login import login_required

from chrononaut import as_of
from demo.models import Account, db

__all__ = ["bp", "parse_picker"]

bp = Blueprint("timetravel", __name__)


def parse_picker(text: str | None) -> dt.datetime | None:
    """The instant of an ``<input type="datetime-local">`` value (taken as UTC).

    :returns: ``None`` for an empty or unreadable value.
    """
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


@bp.get("/accounts/as-of")
@login_required  # type: ignore[untyped-decorator]
def accounts_as_of() -> tuple[str, int] | str:
    """Pick an instant; see every account as it was then."""
    raw = request.args.get("at")
    at = parse_picker(raw)
    if raw and at is None:
        message = "That is not a date and time; pick one with the picker."
        return render_template("as_of.html", at=None, raw=raw, rows=[], error=message), 400
    rows = []
    if at is not None:
        past = as_of(Account, at)
        rows = list(db.session.scalars(sa.select(past).order_by(past.name, past.id)))
    return render_template("as_of.html", at=at, raw=raw or "", rows=rows, error=None)
