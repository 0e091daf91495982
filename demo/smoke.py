"""``python -m demo --smoke``: a scripted scenario through the demo app's test client.

Two browser sessions (Flask test clients) log in as alice and bob and edit the same
account; the scenario checks the pages *and* the history rows in the database
after each step. The first failing step stops the run; :func:`run_smoke` returns
``False`` and ``python -m demo --smoke`` exits with status 1.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from werkzeug.test import TestResponse

from chrononaut import HiddenAttributeError
from demo.app import create_app
from demo.database import create_database, drop_database, server_description, server_url
from demo.models import DEMO_USERS, Account, User, db, seed

__all__ = ["SmokeFailure", "run_smoke"]

Output = Callable[[str], None]

ALICE, BOB = DEMO_USERS
WHY_UPGRADE = "Upgrade after the contract renewal"
WHY_RENAME = "Company name changed at the registry"
WHY_ROTATE = "Key leaked in a support ticket"
WHY_BOB_CREDIT = "Credit check passed"
WHY_ALICE_PLAN = "Customer asked to go back to pro"
WHY_RESTORE = "Contract renewal was cancelled"


class SmokeFailure(AssertionError):
    """A check of the smoke scenario failed."""


def check(condition: object, message: str) -> None:
    """Fail the current step with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SmokeFailure(message)


def run_smoke(database_url: str | None = None, *, out: Output = print) -> bool:
    """Run the scenario; print each step through ``out``; return whether all passed.

    :param database_url: the database to run in. Its demo tables are created and
        dropped again, so it must not hold a demo of its own. When omitted, a fresh
        database is created on the server from :func:`demo.database.server_url`
        and dropped afterwards.
    :param out: receives one line per step.
    """
    started = time.monotonic()
    if database_url is not None:
        ok = _run(database_url, out, drop_tables=True)
    else:
        try:
            server = server_url()
            name = f"chrononaut_demo_smoke_{os.getpid()}_{secrets.token_hex(4)}"
            url = create_database(server, name)
        except Exception as exc:
            out(f"FAIL could not set up a database: {exc!r}")
            return False
        out(f"Server: {server_description()}")
        out(f"Using fresh database {name!r} on it (dropped afterwards)")
        try:
            ok = _run(url.render_as_string(hide_password=False), out, drop_tables=False)
        finally:
            drop_database(server, name)
    elapsed = time.monotonic() - started
    out(f"Smoke scenario {'passed' if ok else 'FAILED'} in {elapsed:.1f} s.")
    return ok


def _run(database_url: str, out: Output, *, drop_tables: bool) -> bool:
    try:
        app = create_app(database_url, testing=True)
    except Exception:
        out("FAIL creating the demo app:")
        out(traceback.format_exc().rstrip())
        return False
    scenario = _Scenario(app, out)
    try:
        with app.app_context():
            db.create_all()
            seed()
        return scenario.run()
    except Exception:
        out("FAIL setting up the demo database:")
        out(traceback.format_exc().rstrip())
        return False
    finally:
        with app.app_context():
            db.session.remove()
            if drop_tables:
                db.drop_all()
            for engine in db.engines.values():
                engine.dispose()


# --- Reading pages ----------------------------------------------------------------


def _text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def _form_field(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    check(match, f"the page has no form field {name!r}")
    assert match is not None
    return match.group(1)


def _change_block(html: str, from_version: int) -> str:
    """The HTML of the change from ``from_version`` on a history/conflict page."""
    match = re.search(
        rf'<div class="change" id="change-{from_version}">(.*?)<!-- end of change -->',
        html,
        re.S,
    )
    check(match, f"the page shows no change from version {from_version}")
    assert match is not None
    return match.group(1)


def _fields_in(block: str) -> list[str]:
    return re.findall(r'data-field="([^"]+)"', block)


def _field_row(block: str, name: str) -> str:
    match = re.search(rf'data-field="{re.escape(name)}">(.*?)</tr>', block, re.S)
    check(match, f"the change does not list field {name!r}")
    assert match is not None
    return match.group(1)


def _contains(html: str, text: str) -> bool:
    return str(escape(text)) in html


# --- The scenario -----------------------------------------------------------------


class _Scenario:
    def __init__(self, app: Flask, out: Output) -> None:
        self.app = app
        self.out = out
        self.alice = app.test_client()
        self.bob = app.test_client()
        self.account_id = 0
        self.alice_id = ""
        self.bob_id = ""
        self.number = 0

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.number += 1
        try:
            yield
        except SmokeFailure as exc:
            self.out(f"FAIL {self.number:2d}. {title}: {exc}")
            raise
        except Exception:
            self.out(f"FAIL {self.number:2d}. {title}: unexpected error")
            self.out(traceback.format_exc().rstrip())
            raise
        self.out(f"ok   {self.number:2d}. {title}")

    def run(self) -> bool:
        try:
            self._scenario()
        except Exception:
            return False
        return True

    # Helpers -------------------------------------------------------------------

    def _db(self) -> Any:
        """An app context for direct database checks (its session is removed on exit)."""
        return self.app.app_context()

    def _account(self) -> Account:
        account = db.session.get(Account, self.account_id)
        check(account is not None, "the account disappeared")
        assert account is not None
        return account

    def _history_rows(self) -> list[Any]:
        with self._db():
            return list(self._account().versions())

    def _login(self, client: FlaskClient, username: str, password: str) -> TestResponse:
        page = client.get("/login")
        check(page.status_code == 200, f"GET /login returned {page.status_code}")
        return client.post(
            "/login",
            data={
                "username": username,
                "password": password,
                "csrf_token": _form_field(_text(page), "csrf_token"),
                "next": "",
            },
        )

    def _open_form(self, client: FlaskClient) -> tuple[str, dict[str, str]]:
        page = client.get(f"/accounts/{self.account_id}/edit")
        check(page.status_code == 200, f"the edit page returned {page.status_code}")
        html = _text(page)
        fields = {
            name: _form_field(html, name)
            for name in ("csrf_token", "version", "name", "contact_email", "credit_limit")
        }
        plan = re.search(r'<option value="([^"]+)" selected>', html)
        check(plan, "the edit page has no selected plan")
        assert plan is not None
        fields["plan"] = plan.group(1)
        fields["api_key"] = ""
        return html, fields

    def _save(
        self, client: FlaskClient, form: Mapping[str, str], rationale: str, **changes: str
    ) -> TestResponse:
        data = {**form, **changes, "rationale": rationale}
        return client.post(f"/accounts/{self.account_id}/edit", data=data)

    def _check_version(self, expected: int) -> None:
        with self._db():
            version = self._account().version
        check(version == expected, f"the account is at version {version}, expected {expected}")

    # Steps -----------------------------------------------------------------------

    def _scenario(self) -> None:
        with self.step("set-up: tables created, demo users and accounts seeded"):
            with self._db():
                users = {u.username: u for u in db.session.scalars(sa.select(User))}
                check(set(users) == {ALICE.username, BOB.username}, f"users are {sorted(users)}")
                self.alice_id = str(users[ALICE.username].id)
                self.bob_id = str(users[BOB.username].id)
                acme = db.session.scalar(
                    sa.select(Account).where(Account.name == "Acme Rockets Ltd")
                )
                check(acme is not None, "the seed account 'Acme Rockets Ltd' is missing")
                assert acme is not None
                self.account_id = acme.id
                check(acme.version == 0, f"a new account has version {acme.version}, expected 0")
                check(acme.versions() == [], "a new account already has history")

        with self.step("anonymous visitors are sent to the login page"):
            response = self.alice.get("/accounts")
            check(response.status_code == 302, f"GET /accounts returned {response.status_code}")
            check("/login" in response.headers.get("Location", ""), "no redirect to /login")

        with self.step("a POST without the form's CSRF token is refused"):
            response = self.alice.post("/login", data={"username": "alice", "password": "x"})
            check(response.status_code == 400, f"got {response.status_code}, expected 400")

        with self.step("alice cannot log in with a wrong password"):
            response = self._login(self.alice, ALICE.username, "not-the-password")
            check(response.status_code == 401, f"got {response.status_code}, expected 401")

        with self.step("alice logs in and sees the account list"):
            response = self._login(self.alice, ALICE.username, ALICE.password)
            check(response.status_code == 302, f"login returned {response.status_code}")
            page = self.alice.get("/accounts")
            html = _text(page)
            check(page.status_code == 200, f"GET /accounts returned {page.status_code}")
            check(_contains(html, ALICE.display_name), "the page does not show alice as logged in")
            check("Acme Rockets Ltd" in html, "the list does not show Acme Rockets Ltd")
            check("Globex Corporation" in html, "the list does not show Globex Corporation")

        with self.step("opening the edit form counts a view (untracked): no history, same version"):
            _html, form = self._open_form(self.alice)
            check(form["version"] == "0", f"the form carries version {form['version']}, expected 0")
            with self._db():
                account = self._account()
                check(account.view_count == 1, f"view_count is {account.view_count}, expected 1")
                check(account.version == 0, f"the version became {account.version}")
                check(account.versions() == [], "counting a view wrote history")

        with self.step("saving without a rationale is refused and changes nothing"):
            response = self._save(self.alice, form, "", plan="enterprise")
            check(response.status_code == 400, f"got {response.status_code}, expected 400")
            check("Say why" in _text(response), "the form does not ask for a rationale")
            self._check_version(0)

        with self.step("alice upgrades the plan and credit limit with a rationale"):
            response = self._save(
                self.alice, form, WHY_UPGRADE, plan="enterprise", credit_limit="12000.00"
            )
            check(response.status_code == 302, f"save returned {response.status_code}")
            self._check_version(1)
            rows = self._history_rows()
            check(len(rows) == 1, f"{len(rows)} history rows, expected 1")
            row = rows[0]
            check(row.version == 0, f"the history row has version {row.version}, expected 0")
            check(row.plan == "pro", f"the history row holds plan {row.plan!r}, expected 'pro'")
            check(row.credit_limit == Decimal("5000.00"), f"old credit limit {row.credit_limit!r}")
            info = row.change_info
            check(info.get("user_id") == self.alice_id, f"user_id is {info.get('user_id')!r}")
            rationale = info.get("extra", {}).get("rationale")
            check(rationale == WHY_UPGRADE, f"rationale is {rationale!r}")
            check("hidden_cols_changed" not in info, "a hidden column is listed as changed")

        with self.step("bob logs in in a second session and renames the account"):
            response = self._login(self.bob, BOB.username, BOB.password)
            check(response.status_code == 302, f"login returned {response.status_code}")
            _html, form = self._open_form(self.bob)
            check(form["version"] == "1", f"bob's form carries version {form['version']}")
            check(form["plan"] == "enterprise", f"bob's form shows plan {form['plan']!r}")
            response = self._save(self.bob, form, WHY_RENAME, name="Acme Rockets Limited")
            check(response.status_code == 302, f"save returned {response.status_code}")
            self._check_version(2)
            rows = self._history_rows()
            check(
                [r.version for r in rows] == [0, 1], f"history versions {[r.version for r in rows]}"
            )
            info = rows[1].change_info
            check(info.get("user_id") == self.bob_id, f"user_id is {info.get('user_id')!r}")
            rationale = info.get("extra", {}).get("rationale")
            check(rationale == WHY_RENAME, f"rationale is {rationale!r}")

        with self.step("the history page shows who, when, why and the diffs of both edits"):
            page = self.bob.get(f"/accounts/{self.account_id}/history")
            check(page.status_code == 200, f"the history page returned {page.status_code}")
            html = _text(page)
            first, second = _change_block(html, 0), _change_block(html, 1)
            check(_contains(first, ALICE.display_name), "the first change is not credited to alice")
            check(_contains(first, WHY_UPGRADE), "the first change does not show alice's reason")
            check(
                sorted(_fields_in(first)) == ["credit_limit", "plan"],
                f"the first change lists fields {_fields_in(first)}",
            )
            plan_row = _field_row(first, "plan")
            check(
                "pro" in plan_row and "enterprise" in plan_row,
                "the plan diff is not pro → enterprise",
            )
            limit_row = _field_row(first, "credit_limit")
            check(
                "5000.00" in limit_row and "12000.00" in limit_row,
                "the credit limit diff is not 5000.00 → 12000.00",
            )
            check(_contains(second, BOB.display_name), "the second change is not credited to bob")
            check(_contains(second, WHY_RENAME), "the second change does not show bob's reason")
            check(_fields_in(second) == ["name"], f"the second change lists {_fields_in(second)}")
            name_row = _field_row(second, "name")
            check(
                "Acme Rockets Ltd" in name_row and "Acme Rockets Limited" in name_row,
                "the name diff is not shown",
            )
            check(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", first), "no change time shown")

        with self.step("alice rotates the hidden API key: history says 'changed', never the value"):
            with self._db():
                old_key = self._account().api_key
            _html, form = self._open_form(self.alice)
            new_key = "sk-smoke-" + secrets.token_hex(8)
            response = self._save(self.alice, form, WHY_ROTATE, api_key=new_key)
            check(response.status_code == 302, f"save returned {response.status_code}")
            self._check_version(3)
            with self._db():
                check(self._account().api_key == new_key, "the new key was not saved")
            rows = self._history_rows()
            info = rows[2].change_info
            hidden = info.get("hidden_cols_changed")
            check(hidden == ["api_key"], f"hidden_cols_changed is {hidden!r}")
            check(
                old_key not in repr(info) and new_key not in repr(info), "a key is in change_info"
            )
            try:
                value = rows[2].api_key
            except HiddenAttributeError:
                pass
            else:
                raise SmokeFailure(f"reading api_key from history gave {value!r}")
            html = _text(self.alice.get(f"/accounts/{self.account_id}/history"))
            third = _change_block(html, 2)
            check(_fields_in(third) == ["api_key"], f"the key change lists {_fields_in(third)}")
            check(
                "changed" in _field_row(third, "api_key"), "the key change does not say 'changed'"
            )
            check(_contains(third, WHY_ROTATE), "the key change does not show the reason")
            check(old_key not in html and new_key not in html, "an API key is on the history page")

        with self.step("a save based on an old version shows a conflict page and saves nothing"):
            _html, alice_form = self._open_form(self.alice)
            _html, bob_form = self._open_form(self.bob)
            check(alice_form["version"] == "3", f"alice's form has version {alice_form['version']}")
            response = self._save(self.bob, bob_form, WHY_BOB_CREDIT, credit_limit="15000.00")
            check(response.status_code == 302, f"bob's save returned {response.status_code}")
            self._check_version(4)
            response = self._save(self.alice, alice_form, WHY_ALICE_PLAN, plan="pro")
            check(
                response.status_code == 409, f"alice's stale save returned {response.status_code}"
            )
            html = _text(response)
            check('id="your-version">3<' in html, "the conflict page does not name version 3")
            check('id="current-version">4<' in html, "the conflict page does not name version 4")
            block = _change_block(html, 3)
            check(_contains(block, BOB.display_name), "the conflict does not say bob changed it")
            check(_fields_in(block) == ["credit_limit"], f"the conflict lists {_fields_in(block)}")
            check(_contains(block, WHY_BOB_CREDIT), "the conflict does not show bob's reason")
            self._check_version(4)
            with self._db():
                account = self._account()
                check(
                    account.plan == "enterprise", f"the stale save changed plan to {account.plan}"
                )
                check(account.credit_limit == Decimal("15000.00"), "bob's credit limit was lost")

        with self.step("the conflict page offers alice's edit merged with bob's"):
            plan_row = _field_row(html, "plan")
            check("your change" in plan_row, "the plan is not marked as alice's change")
            limit_row = _field_row(html, "credit_limit")
            check(
                _contains(limit_row, f"changed by {BOB.display_name}"),
                "the credit limit is not marked as bob's change",
            )
            retry = {
                name: _form_field(html, name)
                for name in ("csrf_token", "version", "name", "contact_email", "credit_limit")
            }
            check(retry["version"] == "4", "the re-apply form is not on version 4")
            check(retry["credit_limit"] == "15000.00", "the re-apply form undoes bob's limit")
            plan = re.search(r'<option value="([^"]+)" selected>', html)
            check(plan and plan.group(1) == "pro", "the re-apply form loses alice's plan")
            retry["plan"] = "pro"
            response = self._save(self.alice, retry, WHY_ALICE_PLAN)
            check(
                response.status_code == 302, f"the re-applied save returned {response.status_code}"
            )
            self._check_version(5)
            with self._db():
                account = self._account()
                check(account.plan == "pro", f"plan is {account.plan!r}")
                check(account.credit_limit == Decimal("15000.00"), "bob's credit limit was lost")

        with self.step("history rows are contiguous, timed in UTC and attributed"):
            rows = self._history_rows()
            check(
                [r.version for r in rows] == [0, 1, 2, 3, 4],
                f"versions {[r.version for r in rows]}",
            )
            times = [r.changed for r in rows]
            check(all(t.tzinfo is not None for t in times), "a change time is naive")
            check(times == sorted(times), "change times are not in order")
            who = [r.change_info.get("user_id") for r in rows]
            expected = [self.alice_id, self.bob_id, self.alice_id, self.bob_id, self.alice_id]
            check(who == expected, f"user ids are {who}, expected {expected}")

        with self.step("bob restores version 0: tracked values back, hidden key kept"):
            html = _text(self.bob.get(f"/accounts/{self.account_id}/history"))
            forms = re.findall(
                r'<form method="post" action="[^"]*/restore"[^>]*>(.*?)</form>', html, re.S
            )
            restore = next((f for f in forms if 'name="restore_version" value="0"' in f), None)
            check(restore is not None, "the history page has no form to restore version 0")
            assert restore is not None
            data = {
                "csrf_token": _form_field(restore, "csrf_token"),
                "version": _form_field(restore, "version"),
                "restore_version": "0",
                "rationale": WHY_RESTORE,
            }
            check(data["version"] == "5", f"the restore form is based on version {data['version']}")
            response = self.bob.post(f"/accounts/{self.account_id}/restore", data=data)
            check(response.status_code == 302, f"restoring returned {response.status_code}")
            self._check_version(6)
            rows = self._history_rows()
            with self._db():
                account = self._account()
                first = rows[0]
                for name in ("name", "contact_email", "plan", "credit_limit"):
                    now, then = getattr(account, name), getattr(first, name)
                    check(now == then, f"{name} is {now!r} after the restore, not {then!r}")
                check(account.api_key == new_key, "restoring changed the hidden API key")
            info = rows[5].change_info
            check(info.get("user_id") == self.bob_id, "the restore is not credited to bob")
            why = info.get("extra", {}).get("rationale")
            check(why == WHY_RESTORE, f"the restore's rationale is {why!r}")
            html = _text(self.bob.get(f"/accounts/{self.account_id}/history"))
            block = _change_block(html, 5)
            check(
                _fields_in(block) == ["name", "credit_limit"],
                f"the restore lists fields {_fields_in(block)}",
            )

        with self.step("logging out ends the session"):
            page = self.alice.get("/accounts")
            response = self.alice.post(
                "/logout", data={"csrf_token": _form_field(_text(page), "csrf_token")}
            )
            check(response.status_code == 302, f"logout returned {response.status_code}")
            response = self.alice.get("/accounts")
            check(response.status_code == 302, "the account list is still visible after logout")
