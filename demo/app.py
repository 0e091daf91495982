"""The demo's Flask application: log in, list accounts, edit them, read their history.

Every edit runs inside :func:`chrononaut.rationale`, so the history page can say
who changed what, when and why. The edit form carries the ``version`` the user
saw; a save based on an older version shows a conflict page instead of silently
overwriting someone else's change.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Flask, abort, flash, redirect, render_template, request, session, url_for
from flask_login import LoginManager, login_user, logout_user
from flask_login import login_required as _login_required
from werkzeug.wrappers.response import Response

import chrononaut
from chrononaut import ChrononautException, StaleWriteError
from chrononaut.errors import _NO_USER
from demo.models import DEMO_USERS, EDITABLE_FIELDS, PLANS, Account, User, db
from demo.timetravel import bp as timetravel_bp

__all__ = ["create_app"]

_View = TypeVar("_View", bound=Callable[..., Any])

_LABELS = dict(EDITABLE_FIELDS)
_HIDDEN = frozenset(Account.__chrononaut_hidden__)


def create_app(
    database_url: str,
    *,
    secret_key: str | None = None,
    testing: bool = False,
) -> Flask:
    """Build the demo app on ``database_url`` (tables are not created here).

    :param database_url: SQLAlchemy URL of the database holding the demo's tables.
    :param secret_key: signs the session cookie; random per process when omitted,
        so restarting the server logs everyone out.
    :param testing: Flask's ``TESTING`` flag (exceptions propagate to the test client).
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_hex(32),
        SQLALCHEMY_DATABASE_URI=database_url,
        TESTING=testing,
    )
    db.init_app(app)

    login_manager = LoginManager(app)
    login_manager.login_view = "login"
    login_manager.login_message = "Log in to see the accounts."

    @login_manager.user_loader  # type: ignore[untyped-decorator]
    def load_user(user_id: str) -> User | None:
        try:
            return db.session.get(User, int(user_id))
        except ValueError:
            return None

    app.before_request(_check_csrf)
    app.jinja_env.globals["csrf_token"] = _csrf_token
    app.jinja_env.globals["demo_logins"] = DEMO_USERS
    app.jinja_env.filters["when"] = _format_when
    app.jinja_env.filters["show"] = _show_value
    _register_views(app)
    app.register_blueprint(timetravel_bp)
    from demo.leases import blueprint as leases_blueprint

    app.register_blueprint(leases_blueprint)
    return app


def login_required(view: _View) -> _View:
    """Flask-Login's ``login_required`` with the view's type kept (Flask-Login is untyped)."""
    return cast(_View, _login_required(view))


# --- Cross-site request forgery -------------------------------------------------
# The demo has no form library; one random token per session, required on every
# POST, is enough to keep another site from submitting edits as a logged-in user.


def _csrf_token() -> str:
    token = session.get("csrf_token")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session["csrf_token"] = token
    return token


def _check_csrf() -> None:
    if request.method != "POST":
        return
    expected = session.get("csrf_token")
    sent = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not secrets.compare_digest(expected, sent):
        abort(400, description="The form expired or did not come from this site; reload it.")


# --- Presentation helpers -------------------------------------------------------


def _format_when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show_value(value: object) -> str:
    if value is None:
        return "(empty)"
    return str(value)


def _user_names() -> dict[str, str]:
    """Display names by the ``user_id`` strings stored in ``change_info``."""
    return {str(user.id): user.display_name for user in db.session.scalars(sa.select(User))}


@dataclass(frozen=True)
class FieldChange:
    """One field of one change, as shown on the history and conflict pages."""

    name: str
    label: str
    old: object
    new: object
    hidden: bool


@dataclass(frozen=True)
class ChangeEntry:
    """One change of a record: from ``from_version`` to ``from_version + 1``."""

    from_version: int
    changed: dt.datetime
    user: str
    rationale: str | None
    fields: list[FieldChange]
    deleted: bool = False
    snapshot: list[tuple[str, object]] = field(default_factory=list)


def _changed_fields(account: Account, before: Any, after: Any | None) -> list[FieldChange]:
    """The fields that differ between history record ``before`` and ``after``.

    ``after`` is the next history record, or ``None`` for the account as it is now.
    Hidden fields come back from ``diff(include_hidden=True)`` without values; the
    hidden names recorded in ``change_info`` are added too, so the page says
    "changed" even if ``diff`` only reports tracked columns.
    """
    diff: Mapping[str, tuple[object, object]] = account.diff(before, after, include_hidden=True)
    info: Mapping[str, Any] = before.change_info or {}
    hidden_names = set(info.get("hidden_cols_changed") or ()) | (set(diff) & _HIDDEN)
    changes = [
        FieldChange(name, _LABELS.get(name, name), old, new, hidden=False)
        for name, (old, new) in diff.items()
        if name not in _HIDDEN
    ]
    changes.extend(
        FieldChange(name, _LABELS.get(name, name), None, None, hidden=True)
        for name in sorted(hidden_names)
    )
    order = {name: index for index, (name, _label) in enumerate(EDITABLE_FIELDS)}
    changes.sort(key=lambda change: order.get(change.name, len(order)))
    return changes


def _snapshot(history_record: Any) -> list[tuple[str, object]]:
    """The tracked values a history record holds, in form order."""
    return [
        (label, getattr(history_record, name))
        for name, label in EDITABLE_FIELDS
        if name not in _HIDDEN
    ]


def _change_entries(account: Account, history: Sequence[Any]) -> list[ChangeEntry]:
    """Describe each change recorded in ``history`` (ascending history records).

    A history row holds the values *before* a change and the ``change_info`` of
    that change, so row ``v`` compared with row ``v + 1`` (or the live record for
    the newest row) is the change that produced version ``v + 1``.
    """
    names = _user_names()
    by_version = {record.version: record for record in history}
    entries = []
    for before in history:
        after = by_version.get(before.version + 1)
        info: Mapping[str, Any] = before.change_info or {}
        user_id = info.get("user_id")
        extra: Mapping[str, Any] = info.get("extra") or {}
        entries.append(
            ChangeEntry(
                from_version=before.version,
                changed=before.changed,
                user=names.get(str(user_id), f"user {user_id}")
                if user_id is not None
                else _NO_USER,
                rationale=extra.get("rationale"),
                fields=_changed_fields(account, before, after),
                deleted=bool(info.get("deleted")),
                snapshot=_snapshot(before),
            )
        )
    return entries


# --- Forms ----------------------------------------------------------------------


# The column lengths of the editable text fields (longer input is a form error,
# not a database error).
_MAX_LENGTHS = {
    name: getattr(Account.__table__.c[name].type, "length", None) or 10_000
    for name in ("name", "contact_email", "api_key")
}


@dataclass
class AccountForm:
    """The submitted edit form, validated."""

    values: dict[str, str]
    version: int | None = None
    rationale: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    credit_limit: Decimal | None = None

    @classmethod
    def from_request(cls, form: Mapping[str, str]) -> AccountForm:
        """Read and validate the edit form fields."""
        values = {name: form.get(name, "").strip() for name, _label in EDITABLE_FIELDS}
        result = cls(values=values, rationale=form.get("rationale", "").strip())
        try:
            result.version = int(form.get("version", ""))
        except ValueError:
            result.errors["version"] = "The form has no valid version; reload the page."
        if not values["name"]:
            result.errors["name"] = "A name is required."
        if "@" not in values["contact_email"]:
            result.errors["contact_email"] = "Enter an e-mail address."
        for name, limit in _MAX_LENGTHS.items():
            if len(values[name]) > limit:
                result.errors[name] = f"At most {limit} characters."
        if values["plan"] not in PLANS:
            result.errors["plan"] = f"Choose one of: {', '.join(PLANS)}."
        try:
            limit = Decimal(values["credit_limit"]).quantize(Decimal("0.01"))
            if not limit.is_finite() or limit < 0 or limit >= Decimal("1e10"):
                raise InvalidOperation
            result.credit_limit = limit
            # Compare and show amounts the way the database returns them.
            values["credit_limit"] = str(limit)
        except (InvalidOperation, ValueError):
            result.errors["credit_limit"] = "Enter an amount of at least 0, like 1500.00."
        if not result.rationale:
            result.errors["rationale"] = "Say why you make this change; it goes into the history."
        return result

    def apply(self, account: Account) -> None:
        """Copy the submitted values onto ``account`` (unchanged values are no change)."""
        account.name = self.values["name"]
        account.contact_email = self.values["contact_email"]
        account.plan = self.values["plan"]
        assert self.credit_limit is not None
        account.credit_limit = self.credit_limit
        # The API key is a secret: the form never shows it, an empty field keeps it.
        if self.values["api_key"]:
            account.api_key = self.values["api_key"]


def _form_values(account: Account) -> dict[str, str]:
    values = {name: _show_edit_value(getattr(account, name)) for name, _label in EDITABLE_FIELDS}
    values["api_key"] = ""
    return values


def _show_edit_value(value: object) -> str:
    return "" if value is None else str(value)


def _check_version(account: Account, version: int) -> None:
    """Raise :class:`StaleWriteError` unless ``version`` is the account's current version.

    Uses ``record.expect_version`` (SPEC §5) when the library has it, which also
    pins the next write to that version; otherwise compares by hand. Either way
    the flush itself is version-checked against the version loaded here.
    """
    expect_version = getattr(account, "expect_version", None)
    if expect_version is not None:
        expect_version(version)
        return
    if account.version != version:
        changes = [record for record in account.versions() if record.version >= version]
        raise StaleWriteError(
            f"account {account.id} is at version {account.version}, the form was for {version}",
            record=account,
            expected_version=version,
            current_version=account.version,
            changes=changes,
        )


# --- Views ----------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else the account list."""
    if target and target.startswith("/") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("accounts")


def _register_views(app: Flask) -> None:
    @app.get("/")
    def index() -> Response:
        return redirect(url_for("accounts"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> str | Response | tuple[str, int]:
        if request.method == "GET":
            return render_template("login.html", next=request.args.get("next", ""))
        username = request.form.get("username", "").strip()
        user = db.session.scalar(sa.select(User).where(User.username == username))
        if user is None or not user.check_password(request.form.get("password", "")):
            flash("Unknown user name or wrong password.", "error")
            return render_template(
                "login.html", next=request.form.get("next", ""), username=username
            ), 401
        login_user(user)
        # Rotate the CSRF token at login, so a token obtained before logging in
        # (by whoever used this browser session) is not valid for the user's edits.
        session.pop("csrf_token", None)
        flash(f"Logged in as {user.display_name}.", "info")
        return redirect(_safe_next(request.form.get("next")))

    @app.post("/logout")
    def logout() -> Response:
        logout_user()
        session.pop("csrf_token", None)
        flash("Logged out.", "info")
        return redirect(url_for("login"))

    @app.get("/accounts")
    @login_required
    def accounts() -> str:
        rows = db.session.scalars(sa.select(Account).order_by(Account.name)).all()
        names = _user_names()
        listing = []
        for account in rows:
            last = account.previous_version()
            last_by = None
            if last is not None:
                user_id = (last.change_info or {}).get("user_id")
                last_by = (
                    names.get(str(user_id), f"user {user_id}") if user_id is not None else _NO_USER
                )
            listing.append((account, last, last_by))
        return render_template("accounts.html", listing=listing)

    @app.get("/accounts/<int:account_id>/edit")
    @login_required
    def edit_account(account_id: int) -> str:
        account = db.get_or_404(Account, account_id)
        form_values = _form_values(account)
        version = account.version
        _count_view(account)
        return render_template(
            "edit.html",
            account=account,
            values=form_values,
            version=version,
            rationale="",
            errors={},
            plans=PLANS,
            fields=EDITABLE_FIELDS,
        )

    @app.post("/accounts/<int:account_id>/edit")
    @login_required
    def save_account(account_id: int) -> str | Response | tuple[str, int]:
        account = db.get_or_404(Account, account_id)
        form = AccountForm.from_request(request.form)
        if form.errors or form.version is None:
            return render_template(
                "edit.html",
                account=account,
                values=form.values,
                version=form.version if form.version is not None else account.version,
                rationale=form.rationale,
                errors=form.errors,
                plans=PLANS,
                fields=EDITABLE_FIELDS,
            ), 400
        try:
            _check_version(account, form.version)
            with chrononaut.rationale(form.rationale):
                form.apply(account)
                db.session.commit()
        except StaleWriteError as exc:
            # Another user saved in between (noticed from the form's version, or by
            # the version-checked UPDATE when they saved a moment ago).
            db.session.rollback()
            return _conflict_page(account_id, form, exc), 409
        except chrononaut.RecordLeasedError as exc:
            # Someone holds the account's edit lease (demo/leases.py): say who.
            db.session.rollback()
            from demo.leases import held_page

            return held_page(account, exc.lease, 423)
        flash(f"Saved {account.name} (now version {account.version}).", "info")
        return redirect(url_for("account_history", account_id=account_id))

    @app.get("/accounts/<int:account_id>/history")
    @login_required
    def account_history(account_id: int) -> str:
        account = db.get_or_404(Account, account_id)
        history = account.versions()
        entries = _change_entries(account, history)
        entries.reverse()  # newest first
        return render_template(
            "history.html",
            account=account,
            entries=entries,
            current=_snapshot(account),
        )

    @app.post("/accounts/<int:account_id>/restore")
    @login_required
    def restore_account(account_id: int) -> Response:
        account = db.get_or_404(Account, account_id)
        try:
            restore_version = int(request.form.get("restore_version", ""))
            version = int(request.form.get("version", ""))
        except ValueError:
            abort(400, description="The restore form has no valid version; reload the page.")
        why = request.form.get("rationale", "").strip()
        why = why or f"Restored the values of version {restore_version}"
        try:
            _check_version(account, version)
            with chrononaut.rationale(why):
                # restore() sets tracked columns only: the hidden API key and the
                # untracked view count keep their current values.
                account.restore(restore_version)
                db.session.commit()
        except StaleWriteError:
            db.session.rollback()
            flash(
                "Someone changed the account since you loaded its history; "
                "check the changes below before restoring.",
                "error",
            )
            return redirect(url_for("account_history", account_id=account_id))
        except ChrononautException as exc:
            db.session.rollback()
            abort(400, description=str(exc))
        if account.version == version:
            flash(f"Version {restore_version} has the current values: nothing changed.", "info")
        else:
            flash(f"Restored the values of version {restore_version}.", "info")
        return redirect(url_for("account_history", account_id=account_id))


def _count_view(account: Account) -> None:
    """Count a view of the edit page in ``view_count``, an untracked column.

    It writes no history and leaves ``version`` as it is, so it never makes
    anyone's open form stale. The write is still version-checked; losing a view
    to a concurrent edit does not matter, so a stale write is ignored here.
    """
    account.view_count += 1
    try:
        db.session.commit()
    except StaleWriteError:
        db.session.rollback()


@dataclass(frozen=True)
class ConflictRow:
    """One field on the conflict page: its value at the user's version, theirs, and now."""

    name: str
    label: str
    base: str | None
    yours: str
    current: str

    @property
    def edited_by_you(self) -> bool:
        """Whether the user's form changed this field (unknown base: assume so)."""
        return self.base is None or self.yours != self.base

    @property
    def edited_by_others(self) -> bool:
        """Whether someone else changed this field since the user's version."""
        return self.base is not None and self.current != self.base

    @property
    def clash(self) -> bool:
        """Whether both changed the field, to different values: the user must decide."""
        return self.edited_by_you and self.edited_by_others and self.yours != self.current

    @property
    def merged(self) -> str:
        """The value the re-apply form offers: the user's edit, else the current value.

        On a clash the current (the other user's) value: pre-filling the user's own
        would let one click overwrite a change they have not looked at. The page
        shows both; the user types theirs in again to choose it.
        """
        if self.clash:
            return self.current
        return self.yours if self.edited_by_you else self.current


def _conflict_page(account_id: int, form: AccountForm, exc: StaleWriteError) -> str:
    """Show what the user submitted, what is saved now, and who changed what since.

    The re-apply form is a three-way merge: fields only the user edited keep the
    user's value, all others take the current value, so saving it again does not
    undo the other user's changes; a field both changed starts at the current value
    and is marked for the user to decide.
    """
    account = db.session.get(Account, account_id)
    if account is None:
        abort(404, description="The account was deleted while you edited it.")
    expected = exc.expected_version if exc.expected_version is not None else form.version
    # The changes since the user's version, read in this session after the rollback
    # rather than taken from ``exc.changes`` (which were read when the write failed):
    # then they end exactly at the current values shown next to them, even if yet
    # another save landed in between.
    changes = [record for record in account.versions() if record.version >= (expected or 0)]
    # The history row of the user's version holds the values their form started from.
    base = next((record for record in changes if record.version == expected), None)
    entries = _change_entries(account, changes)
    current = _form_values(account)
    rows = [
        ConflictRow(
            name,
            label,
            None if base is None else _show_edit_value(getattr(base, name)),
            form.values.get(name, ""),
            current.get(name, ""),
        )
        for name, label in EDITABLE_FIELDS
        if name not in _HIDDEN
    ]
    merged = {row.name: row.merged for row in rows}
    merged["api_key"] = ""
    return render_template(
        "conflict.html",
        account=account,
        form=form,
        rows=rows,
        merged=merged,
        entries=entries,
        your_version=expected,
        current_version=account.version,
        plans=PLANS,
    )
