"""The demo's edit leases: Bob sees that Alice is editing, and can't overwrite her."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from demo import create_app
from demo.models import DEMO_USERS, Account, db, seed

ALICE, BOB = DEMO_USERS


@pytest.fixture()
def demo_app(database_url: str) -> Iterator[Flask]:
    """The demo app on the test database, seeded; its tables are dropped afterwards."""
    app = create_app(database_url, testing=True)
    with app.app_context():
        db.create_all()
        seed()
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.drop_all()
            for engine in db.engines.values():
                engine.dispose()


def _field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match is not None, f"no form field {name!r}"
    return match.group(1)


def _client(app: Flask, username: str, password: str) -> FlaskClient:
    client = app.test_client()
    token = _field(client.get("/login").get_data(as_text=True), "csrf_token")
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302
    return client


def _account_id(app: Flask) -> int:
    with app.app_context():
        found = db.session.scalar(sa.select(Account.id).order_by(Account.id).limit(1))
        assert isinstance(found, int)
        return found


def _form(html: str) -> dict[str, str]:
    names = ("csrf_token", "version", "lease_token", "name", "contact_email", "credit_limit")
    return {name: _field(html, name) for name in names}


def test_bob_sees_alice_editing_and_until(demo_app: Flask) -> None:
    """Bob opening the lease edit page sees Alice as the editor, with the lease's end."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    assert 'name="lease_token"' in alice.get(f"/accounts/{account_id}/lease-edit").get_data(
        as_text=True
    )
    bob = _client(demo_app, BOB.username, BOB.password)
    page = bob.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True)
    assert ALICE.display_name in page and 'id="lease-until"' in page
    assert "Take over" in page and 'id="read-only"' in page
    assert ALICE.display_name in bob.get(f"/accounts/{account_id}/edit").get_data(as_text=True)


def test_bobs_plain_save_refused(demo_app: Flask) -> None:
    """Bob's save through the plain edit form is refused (423) while Alice holds the lease."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    alice.get(f"/accounts/{account_id}/lease-edit")
    bob = _client(demo_app, BOB.username, BOB.password)
    html = bob.get(f"/accounts/{account_id}/edit").get_data(as_text=True)
    form = {n: _field(html, n) for n in ("csrf_token", "version", "name", "contact_email")}
    response = bob.post(
        f"/accounts/{account_id}/edit",
        data={**form, "credit_limit": "1.00", "plan": "pro", "rationale": "bob"},
    )
    assert response.status_code == 423
    assert ALICE.display_name in response.get_data(as_text=True)


def test_heartbeat_renews_alices_lease(demo_app: Flask) -> None:
    """The page's heartbeat endpoint renews Alice's lease."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    form = _form(alice.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True))
    response = alice.post(
        f"/accounts/{account_id}/lease-heartbeat",
        data={"csrf_token": form["csrf_token"], "lease_token": form["lease_token"]},
    )
    assert response.status_code == 200 and response.get_json()["lease"]["expires_at"]


def test_alice_saves_and_frees(demo_app: Flask) -> None:
    """Alice's save goes through, carries her lease in history and frees the account."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    form = _form(alice.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True))
    response = alice.post(
        f"/accounts/{account_id}/lease-edit",
        data={**form, "plan": "enterprise", "rationale": "upgrade"},
    )
    assert response.status_code == 302
    with demo_app.app_context():
        account = db.session.get(Account, account_id)
        assert account is not None and account.plan == "enterprise"
        assert "lease" in account.versions()[-1].change_info
        assert account.lease_holder() is None


def test_takeover_then_alice_refused(demo_app: Flask) -> None:
    """Bob takes over; Alice's heartbeat reports the loss and her save is refused."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    form = _form(alice.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True))
    bob = _client(demo_app, BOB.username, BOB.password)
    held = bob.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True)
    taken = bob.post(
        f"/accounts/{account_id}/lease-takeover", data={"csrf_token": _field(held, "csrf_token")}
    )
    assert taken.status_code == 302
    beat = alice.post(
        f"/accounts/{account_id}/lease-heartbeat",
        data={"csrf_token": form["csrf_token"], "lease_token": form["lease_token"]},
    )
    assert beat.status_code == 409
    response = alice.post(
        f"/accounts/{account_id}/lease-edit", data={**form, "plan": "free", "rationale": "late"}
    )
    assert response.status_code == 409
    assert BOB.display_name in response.get_data(as_text=True)


def test_cancel_releases(demo_app: Flask) -> None:
    """Cancel gives the account back."""
    account_id = _account_id(demo_app)
    alice = _client(demo_app, ALICE.username, ALICE.password)
    form = _form(alice.get(f"/accounts/{account_id}/lease-edit").get_data(as_text=True))
    alice.post(
        f"/accounts/{account_id}/lease-release",
        data={"csrf_token": form["csrf_token"], "lease_token": form["lease_token"]},
    )
    with demo_app.app_context():
        account = db.session.get(Account, account_id)
        assert account is not None and account.lease_holder() is None
