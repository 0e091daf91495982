"""Edit leases in Flask views: helpers, heartbeat endpoint and the 423 body (SPEC §4)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from flask import Flask

from chrononaut import ChrononautException, VersionedSQLAlchemy, acting_as, register_error_handlers
from chrononaut.lease_web import (
    LEASE_TOKEN_FIELD,
    check_edit,
    finish_edit,
    heartbeat_view,
    open_edit,
)


@pytest.fixture()
def web(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> Flask:
    """The test app with the JSON error handlers, a save view and a heartbeat endpoint."""
    register_error_handlers(app)

    @app.post("/docs/<int:id>")
    def save(id: int) -> str:
        doc = db.get_or_404(Doc, id)
        doc.title = "saved"
        db.session.commit()
        return "ok"

    app.add_url_rule(
        "/docs/<int:id>/lease",
        view_func=heartbeat_view(lambda id: db.get_or_404(Doc, id)),
        methods=["POST"],
        endpoint="doc_lease",
    )
    return app


def test_423_body(web: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """A write refused by a lease answers 423 with the holder's lease and no token."""
    with acting_as("alice"):
        lease = cast(Any, db.session.get(Doc, 1)).lease(note="n")
    db.session.remove()
    with acting_as("bob"):
        response = web.test_client().post("/docs/1")
    assert response.status_code == 423
    body = response.get_json()
    assert body["error"] == "leased"
    assert set(body["lease"]) == {"user_id", "acquired_at", "expires_at", "note"}
    assert body["lease"]["user_id"] == "alice" and body["lease"]["expires_at"].endswith("+00:00")
    assert lease.token is not None and lease.token not in response.get_data(as_text=True)


def test_open_edit_for_holder_and_other(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """open_edit: editable for the first user, the holder for the second."""
    doc = db.session.get(Doc, 1)
    with acting_as("alice"):
        mine = open_edit(doc)
    with acting_as("bob"):
        theirs = open_edit(doc)
    assert mine.editable and mine.token
    assert not theirs.editable and theirs.holder is not None
    assert theirs.holder.user_id == "alice"


def test_open_edit_takeover(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """open_edit(takeover=True) takes the lease over."""
    doc = db.session.get(Doc, 1)
    with acting_as("alice"):
        open_edit(doc)
    with acting_as("bob"):
        taken = open_edit(doc, takeover=True)
    assert taken.editable and taken.lease is not None and taken.lease.user_id == "bob"


def test_heartbeat_renews(web: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """The heartbeat endpoint renews the lease and answers with it."""
    with acting_as("alice"):
        lease = cast(Any, db.session.get(Doc, 1)).lease()
    db.session.remove()
    with acting_as("alice"):
        response = web.test_client().post("/docs/1/lease", data={LEASE_TOKEN_FIELD: lease.token})
    assert response.status_code == 200
    assert response.get_json()["lease"]["user_id"] == "alice"


def test_heartbeat_after_takeover(web: Flask, db: VersionedSQLAlchemy, Doc: Any) -> None:
    """After a takeover the heartbeat answers 409 lease_lost with the new holder."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        lease = doc.lease()
    with acting_as("bob"):
        doc.lease(force=True)
    db.session.remove()
    response = web.test_client().post("/docs/1/lease", data={LEASE_TOKEN_FIELD: lease.token})
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "lease_lost",
        "lease": response.get_json()["lease"],
    }
    assert response.get_json()["lease"]["user_id"] == "bob"


def test_save_checks_and_releases(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """check_edit + finish_edit: the save carries the lease and frees the record."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        token = open_edit(doc).token
        assert token is not None
        check_edit(doc, token)
        doc.title = "done"
        finish_edit(doc, token)
        db.session.commit()
    assert doc.versions()[-1].change_info["lease"]["user_id"] == "alice"
    assert doc.lease_holder() is None


def test_check_edit_lost_lease(db: VersionedSQLAlchemy, Doc: Any) -> None:
    """check_edit refuses a token whose lease was taken over."""
    doc = db.session.get(Doc, 1)
    assert doc is not None
    with acting_as("alice"):
        token = open_edit(doc).token
    with acting_as("bob"):
        doc.lease(force=True)
    with pytest.raises(ChrononautException):
        check_edit(doc, str(token))
