"""Edit leases in the demo: "Alice is editing this account until 10:20".

The lease edit page takes the user's lease when it opens, renews it from the
page every minute while it stays open (a small JSON heartbeat endpoint), and
releases it on save or cancel. Someone else opening the page meanwhile sees who
holds the account and until when, and may view it read-only or take it over.
The database enforces the lease: a save by anyone else is refused while it holds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers.response import Response

import chrononaut
from chrononaut import ChrononautException, Lease, RecordLeasedError, StaleWriteError
from chrononaut.lease_web import (
    check_edit,
    finish_edit,
    form_lease_token,
    heartbeat_view,
    open_edit,
)
from demo.models import EDITABLE_FIELDS, PLANS, Account, db

__all__ = ["HEARTBEAT_SECONDS", "LEASE_TTL", "blueprint", "held_page"]

#: How long a lease lasts without a heartbeat (a closed tab frees the account then).
LEASE_TTL = dt.timedelta(minutes=5)
#: How often the open page renews its lease.
HEARTBEAT_SECONDS = 60

blueprint = Blueprint("leases", __name__)


@blueprint.before_request
def _require_login() -> Any:
    # Every lease page acts for a logged-in user: the lease holder is that user.
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
    return None


def _holder_name(lease: Lease | None) -> str:
    from demo.app import _user_names

    if lease is None:
        return "nobody"
    return _user_names().get(lease.user_id, f"user {lease.user_id}")


@blueprint.app_template_global()
def lease_holder_of(account: Account) -> dict[str, Any] | None:
    """The live lease on ``account`` for templates: who (display name) and until when."""
    lease = account.lease_holder()
    if lease is None:
        return None
    return {"name": _holder_name(lease), "lease": lease}


def held_page(account: Account, lease: Lease | None, status: int = 200) -> tuple[str, int]:
    """The page telling the user who is editing ``account`` (read-only view, takeover)."""
    from demo.app import _form_values

    return render_template(
        "lease_held.html",
        account=account,
        lease=lease,
        holder=_holder_name(lease),
        values=_form_values(account),
        fields=EDITABLE_FIELDS,
    ), status


def _edit_page(account: Account, token: str, status: int = 200, **form: Any) -> tuple[str, int]:
    from demo.app import _form_values

    return render_template(
        "lease_edit.html",
        account=account,
        lease_token=token,
        lease=account.lease_holder(),
        values=form.get("values") or _form_values(account),
        version=form.get("version", account.version),
        rationale=form.get("rationale", ""),
        errors=form.get("errors", {}),
        plans=PLANS,
        fields=EDITABLE_FIELDS,
        heartbeat_ms=HEARTBEAT_SECONDS * 1000,
    ), status


@blueprint.get("/accounts/<int:account_id>/lease-edit")
def edit(account_id: int) -> tuple[str, int] | Response:
    """Open the edit form: take the lease, or show who holds it."""
    account = db.get_or_404(Account, account_id)
    opened = open_edit(account, LEASE_TTL, note="edit form")
    if not opened.editable:
        return held_page(account, opened.holder)
    assert opened.token is not None
    return _edit_page(account, opened.token)


@blueprint.post("/accounts/<int:account_id>/lease-takeover")
def takeover(account_id: int) -> Response:
    """Take the lease over from its holder (their next save is refused)."""
    account = db.get_or_404(Account, account_id)
    previous = account.lease_holder()
    open_edit(account, LEASE_TTL, note="edit form (taken over)", takeover=True)
    flash(f"You took the account over from {_holder_name(previous)}.", "info")
    return redirect(url_for("leases.edit", account_id=account_id))


@blueprint.post("/accounts/<int:account_id>/lease-edit")
def save(account_id: int) -> tuple[str, int] | Response:
    """Save the form while holding the lease, releasing it with the save."""
    from demo.app import AccountForm, _check_version, _conflict_page

    account = db.get_or_404(Account, account_id)
    token = form_lease_token()
    form = AccountForm.from_request(request.form)
    if form.errors or form.version is None:
        return _edit_page(
            account,
            token,
            400,
            values=form.values,
            version=form.version if form.version is not None else account.version,
            rationale=form.rationale,
            errors=form.errors,
        )
    try:
        check_edit(account, token)
    except ChrononautException:
        db.session.rollback()
        flash("Your edit lease ended before you saved; nothing was saved.", "error")
        return held_page(account, account.lease_holder(), 409)
    try:
        _check_version(account, form.version)
        with chrononaut.rationale(form.rationale):
            form.apply(account)
            finish_edit(account, token)
            db.session.commit()
    except StaleWriteError as exc:
        db.session.rollback()
        return _conflict_page(account_id, form, exc), 409
    except RecordLeasedError as exc:
        db.session.rollback()
        return held_page(account, exc.lease, 423)
    flash(f"Saved {account.name} (now version {account.version}).", "info")
    return redirect(url_for("account_history", account_id=account_id))


@blueprint.post("/accounts/<int:account_id>/lease-release")
def release(account_id: int) -> Response:
    """Cancel: give the account back."""
    account = db.get_or_404(Account, account_id)
    try:
        account.release_lease(form_lease_token())
    except ChrononautException:
        db.session.rollback()  # already expired or taken over: nothing to give back
    return redirect(url_for("accounts"))


def _load(account_id: int) -> Account:
    return db.get_or_404(Account, account_id)


blueprint.add_url_rule(
    "/accounts/<int:account_id>/lease-heartbeat",
    view_func=heartbeat_view(_load),
    methods=["POST"],
    endpoint="heartbeat",
)
