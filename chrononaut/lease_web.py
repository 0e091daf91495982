"""Edit leases in Flask views: take on open, renew on a heartbeat, release on save.

The pattern::

    @app.get("/accounts/<int:id>/edit")
    def edit(id):
        account = db.get_or_404(Account, id)
        edit = open_edit(account, note="account form")
        if not edit.editable:               # someone else is editing
            return render_template("held.html", holder=edit.holder), 423
        return render_template("edit.html", account=account, lease_token=edit.token)

    @app.post("/accounts/<int:id>/edit")
    def save(id):
        account = db.get_or_404(Account, id)
        token = form_lease_token()
        check_edit(account, token)          # still ours? (joins the transaction)
        ...apply the form...
        finish_edit(account, token)         # release with the save
        db.session.commit()

    app.add_url_rule(
        "/accounts/<int:id>/lease",
        view_func=heartbeat_view(lambda id: db.get_or_404(Account, id)),
        methods=["POST"],
        endpoint="account_lease",
    )

The token travels in the form (field :data:`LEASE_TOKEN_FIELD`) like the
version field does; the page posts it to the heartbeat endpoint every few
minutes while it is open.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify, request

from chrononaut._leases import DEFAULT_TTL
from chrononaut.errors import ChrononautException, Lease, RecordLeasedError

__all__ = [
    "LEASE_TOKEN_FIELD",
    "EditLease",
    "check_edit",
    "finish_edit",
    "form_lease_token",
    "heartbeat_response",
    "heartbeat_view",
    "lease_error_body",
    "lease_error_response",
    "open_edit",
]

#: The form field (and heartbeat parameter) carrying the lease token.
LEASE_TOKEN_FIELD = "lease_token"


@dataclass(frozen=True)
class EditLease:
    """What opening an edit form found.

    :param lease: our lease (with its token) when the user may edit.
    :param holder: the other user's lease (without token) when they may not.
    """

    lease: Lease | None
    holder: Lease | None = None

    @property
    def editable(self) -> bool:
        """Whether the current user holds the lease and may edit."""
        return self.lease is not None

    @property
    def token(self) -> str | None:
        """Our lease token, for the form's hidden :data:`LEASE_TOKEN_FIELD`."""
        return None if self.lease is None else self.lease.token


def open_edit(
    record: Any, ttl: dt.timedelta = DEFAULT_TTL, *, note: str | None = None, takeover: bool = False
) -> EditLease:
    """Take (or renew) the acting user's lease when an edit form opens.

    :param record: a record of a model with ``__chrononaut_leases__ = True``.
    :param ttl: the lease's length; the page's heartbeat renews it.
    :param note: shown to others with the lease.
    :param takeover: take the lease over from another holder (``force=True``).
    :returns: an :class:`EditLease`; ``holder`` set when someone else holds it.
    """
    try:
        return EditLease(record.lease(ttl, note=note, force=takeover))
    except RecordLeasedError as error:
        return EditLease(None, error.lease)


def form_lease_token(form: Mapping[str, str] | None = None) -> str:
    """The lease token posted with the form (``""`` when there is none)."""
    source = request.form if form is None else form
    return str(source.get(LEASE_TOKEN_FIELD, ""))


def check_edit(record: Any, token: str) -> Lease:
    """Check at save time that the form's lease is still ours (and extend it).

    Joins the session's transaction (``commit=False``), so the flush that follows
    knows the lease: the holder's change costs one lease statement.

    :raises ChrononautException: the lease expired, was released or taken over.
    """
    lease: Lease = record.renew_lease(token, commit=False)
    return lease


def finish_edit(record: Any, token: str) -> None:
    """Release the form's lease with the save (or on cancel); joins the transaction."""
    record.release_lease(token, commit=False)


def heartbeat_response(record: Any, token: str, ttl: dt.timedelta | None = None) -> Response:
    """Renew the lease and answer the page's heartbeat with JSON.

    200 ``{"lease": {...}}`` while the lease is ours; 409 ``{"error":
    "lease_lost", "lease": <current holder or null>}`` once it expired or was taken
    over (the page should then tell the user and stop offering to save).
    """
    try:
        lease = record.renew_lease(token, ttl)
    except ChrononautException:
        holder = record.lease_holder()
        body = {"error": "lease_lost", "lease": None if holder is None else holder.as_dict()}
        response = jsonify(body)
        response.status_code = 409
        return response
    return jsonify({"lease": lease.as_dict()})


def heartbeat_view(
    load: Callable[..., Any], ttl: dt.timedelta | None = None
) -> Callable[..., Response]:
    """A view function for the heartbeat endpoint: ``load(**view_args)`` finds the record.

    The token comes from the form field :data:`LEASE_TOKEN_FIELD` (or a JSON body
    with that key).
    """

    def view(**view_args: Any) -> Response:
        record = load(**view_args)
        token = request.form.get(LEASE_TOKEN_FIELD)
        if token is None and request.is_json:
            body = request.get_json(silent=True)
            token = body.get(LEASE_TOKEN_FIELD) if isinstance(body, dict) else None
        return heartbeat_response(record, str(token or ""), ttl)

    return view


def lease_error_body(error: RecordLeasedError) -> dict[str, Any]:
    """``{"error": "leased", "lease": {"user_id", "acquired_at", "expires_at", "note"}}``."""
    return {"error": "leased", "lease": None if error.lease is None else error.lease.as_dict()}


def lease_error_response(error: RecordLeasedError) -> tuple[Response, int]:
    """The 423 JSON response for :class:`~chrononaut.RecordLeasedError` (never the token)."""
    return jsonify(lease_error_body(error)), 423
