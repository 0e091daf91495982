"""The demo app (``python -m demo``): its smoke scenario, a lost race, and the server."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

import chrononaut
import demo.app
from chrononaut import acting_as, rationale
from demo import create_app
from demo.database import normalize_url
from demo.models import DEMO_USERS, Account, User, db, seed
from demo.smoke import run_smoke

ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB = DEMO_USERS


def _dispose(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        db.drop_all()
        for engine in db.engines.values():
            engine.dispose()


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
        _dispose(app)


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


def test_smoke_scenario_passes(database_url: str) -> None:
    """Two users edit, rename, rotate a hidden key and hit a conflict; every check holds."""
    lines: list[str] = []
    ok = run_smoke(database_url, out=lines.append)
    assert ok, "\n".join(lines)


def test_smoke_scenario_reports_a_failing_check(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the app stops recording rationales, the smoke run fails and says where."""
    monkeypatch.setattr(chrononaut, "rationale", lambda text: contextlib.nullcontext())
    lines: list[str] = []
    assert not run_smoke(database_url, out=lines.append)
    assert any(line.startswith("FAIL") and "rationale is None" in line for line in lines), lines
    assert lines[-1].startswith("Smoke scenario FAILED")


def test_save_losing_the_race_at_commit_shows_conflict(
    demo_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save whose form version was current but that loses the race at commit gets a 409."""
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
    assert form["version"] == "0"

    check_version = demo.app._check_version

    def bob_saves_meanwhile(account: Account, version: int) -> None:
        check_version(account, version)
        # Bob commits in his own session and transaction after alice's check passed.
        other = db.session.session_factory()
        try:
            with acting_as(bob_id), rationale("Bob was faster"):
                mine = other.get(Account, account_id)
                assert mine is not None
                mine.credit_limit = Decimal("9999.00")
                other.commit()
        finally:
            other.close()

    monkeypatch.setattr(demo.app, "_check_version", bob_saves_meanwhile)
    response = client.post(
        f"/accounts/{account_id}/edit",
        data={**form, "plan": "enterprise", "rationale": "Alice was slower"},
    )

    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert 'id="your-version">0<' in page and 'id="current-version">1<' in page
    assert BOB.display_name in page and "Bob was faster" in page
    with demo_app.app_context():
        account = db.session.get(Account, account_id)
        assert account is not None
        assert (account.version, account.plan, account.credit_limit) == (
            1,
            "pro",
            Decimal("9999.00"),
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_server_prints_url_and_logins_and_serves(database_url: str) -> None:
    """``python -m demo`` prints its URL and both logins, then serves the login page."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "demo", "--port", str(port), "--database-url", database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(output)
        assert f"http://127.0.0.1:{port}/" in text, text
        for login in DEMO_USERS:
            assert login.username in text and login.password in text, text
        page = b""
        while time.monotonic() < deadline and not page:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as r:
                    page = r.read()
            except OSError:
                time.sleep(0.1)
        assert b"Log in" in page
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


def test_accounts_as_of_page(demo_app: Flask) -> None:
    """The "accounts as of…" page shows the table as it was at the picked instant."""
    import datetime as dt

    client = demo_app.test_client()
    _log_in(client, ALICE.username, ALICE.password)
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with demo_app.app_context():
        account = db.session.scalars(sa.select(Account).order_by(Account.id)).first()
        assert account is not None
        old_name = account.name
        account.name = "Renamed Ltd"
        db.session.commit()
    page = client.get("/accounts/as-of", query_string={"at": before.isoformat()})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert old_name in html and "Renamed Ltd" not in html
    now = client.get("/accounts/as-of", query_string={"at": "2999-01-01T00:00:00"})
    assert "Renamed Ltd" in now.get_data(as_text=True)
    assert client.get("/accounts/as-of").status_code == 200
    bad = client.get("/accounts/as-of", query_string={"at": "next tuesday"})
    assert bad.status_code == 400
    assert "View the accounts as of" in client.get("/accounts").get_data(as_text=True)
