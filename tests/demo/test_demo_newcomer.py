"""The demo's first impression: login page, conflict re-apply form, start-up messages."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from chrononaut import acting_as, rationale
from demo import create_app
from demo.database import normalize_url
from demo.models import DEMO_USERS, Account, User, db, seed

ROOT = Path(__file__).resolve().parents[2]
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


def _log_in(client: FlaskClient, username: str, password: str) -> None:
    token = _field(client.get("/login").get_data(as_text=True), "csrf_token")
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302


def test_login_page_shows_demo_logins(demo_app: Flask) -> None:
    """The login page lists each demo user name with its password."""
    page = demo_app.test_client().get("/login").get_data(as_text=True)
    for login in DEMO_USERS:
        assert f"<code>{login.username}</code>" in page
        assert f"<code>{login.password}</code>" in page


def test_clash_keeps_the_other_users_value_in_the_reapply_form(demo_app: Flask) -> None:
    """When both changed a field, the re-apply form holds the saved value, not the user's."""
    with demo_app.app_context():
        account_id = db.session.scalar(
            sa.select(Account.id).where(Account.name == "Acme Rockets Ltd")
        )
        bob_id = db.session.scalar(sa.select(User.id).where(User.username == BOB.username))
    client = demo_app.test_client()
    _log_in(client, ALICE.username, ALICE.password)
    html = client.get(f"/accounts/{account_id}/edit").get_data(as_text=True)
    form = {
        name: _field(html, name)
        for name in ("csrf_token", "version", "name", "contact_email", "credit_limit")
    }
    with demo_app.app_context():
        with acting_as(bob_id), rationale("Bob's limit"):
            account = db.session.get(Account, account_id)
            assert account is not None
            account.credit_limit = Decimal(9999)
            db.session.commit()
        db.session.remove()
    response = client.post(
        f"/accounts/{account_id}/edit",
        data={**form, "credit_limit": "1234.00", "plan": "pro", "rationale": "Alice's limit"},
    )
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    retry_form = page[page.index("Re-apply your edit") :]
    assert _field(retry_form, "credit_limit") == "9999.00"
    assert "both changed" in page and "1234.00" in page


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_taken_port_hints_at_port_option(database_url: str) -> None:
    """A port in use ends the demo at once with a hint to use ``--port``."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "demo", "--port", str(port), "--database-url", database_url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"--port {port + 1}" in done.stderr
    assert "Open http" not in done.stdout


def test_start_message_comes_once_the_port_is_bound(database_url: str) -> None:
    """When the demo prints its address, the port already accepts connections."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--port", str(port), "--database-url", database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if f"http://127.0.0.1:{port}/" in line:
                # No retry: the socket must be listening already.
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    pass
                break
        assert any(f"http://127.0.0.1:{port}/" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        engine = sa.create_engine(normalize_url(database_url), poolclass=sa.pool.NullPool)
        try:
            db.metadata.drop_all(engine)
        finally:
            engine.dispose()
