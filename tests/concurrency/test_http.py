"""ETag / If-Match helpers and the JSON error handlers (SPEC §5, issue 4 §2-§3).

Requests go through Flask's test client to views using ``chrononaut.http``; the
concurrent writer ("bob") is a second real session committing for real.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from flask import Blueprint, Flask, jsonify, request
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from chrononaut import (
    ChrononautException,
    LockNotAvailableError,
    StaleWriteError,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    advisory_lock,
    register_error_handlers,
)
from chrononaut.http import (
    PreconditionFailed,
    PreconditionRequired,
    check_if_match,
    etag_for,
    require_if_match,
    stale_write_response,
    with_etag,
)

from .conftest import SECRET

Committed = Callable[[str], list[dict[str, Any]]]


def _bob_edits(other: Session, Doc: Any, doc_id: int, **values: Any) -> None:
    """Bob changes ``values`` of the document in his own session and commits."""
    with acting_as("bob"):
        doc = other.get(Doc, doc_id)
        for key, value in values.items():
            setattr(doc, key, value)
        other.commit()


@pytest.fixture()
def api(app: Flask, db: VersionedSQLAlchemy, Doc: Any) -> Flask:
    """The test app with a small JSON API over ``Doc`` and the JSON error handlers."""
    hooks: dict[str, Callable[[], None]] = {}
    app.config["HOOKS"] = hooks

    def body(doc: Any) -> dict[str, Any]:
        return {"id": doc.id, "title": doc.title, "body": doc.body, "version": doc.version}

    @app.get("/docs/<int:doc_id>")
    @require_if_match
    def show(doc_id: int) -> Any:
        doc = db.get_or_404(Doc, doc_id)
        return with_etag(jsonify(body(doc)), doc)

    @app.put("/docs/<int:doc_id>")
    @require_if_match
    def replace(doc_id: int) -> Any:
        doc = db.get_or_404(Doc, doc_id)
        check_if_match(doc)
        hooks.get("between", lambda: None)()
        for key, value in (request.json or {}).items():
            setattr(doc, key, value)
        db.session.commit()
        return with_etag(jsonify(body(doc)), doc)

    @app.patch("/loose/<int:doc_id>")
    def patch(doc_id: int) -> Any:
        doc = db.get_or_404(Doc, doc_id)
        matched = check_if_match(doc)
        for key, value in (request.json or {}).items():
            setattr(doc, key, value)
        db.session.commit()
        return jsonify(matched=matched)

    @app.post("/docs/<int:doc_id>/form")
    def form(doc_id: int) -> Any:
        doc = db.get_or_404(Doc, doc_id)
        doc.expect_version(int(request.form["version"]))
        doc.title = request.form["title"]
        db.session.commit()
        return jsonify(body(doc))

    @app.post("/docs/<int:doc_id>/lock")
    def lock(doc_id: int) -> Any:
        doc = db.get_or_404(Doc, doc_id)
        timeout = request.args.get("timeout", type=float)
        with doc.lock(nowait=timeout is None, timeout=timeout):
            doc.title = "locked edit"
        return jsonify(body(doc))

    @app.post("/advisory")
    def advisory() -> Any:
        with advisory_lock("report", nowait=True):
            return jsonify(ok=True)

    register_error_handlers(app)
    return app


class _FreshContextClient(FlaskClient):
    """Runs each request in a thread of its own, so it gets its own app context and
    ``db.session`` (as in production) instead of sharing the test's."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(FlaskClient.open(self, *args, **kwargs))
            except BaseException as exc:  # re-raised in the test's thread
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]


@pytest.fixture()
def client(api: Flask) -> FlaskClient:
    """A test client whose requests each run with their own app context and session."""
    api.test_client_class = _FreshContextClient
    return api.test_client()


def _put(client: FlaskClient, doc_id: int, if_match: str | None, **values: Any) -> Any:
    headers = {"If-Match": if_match} if if_match is not None else {}
    return client.put(f"/docs/{doc_id}", json=values, headers=headers)


# -- etag_for / with_etag -----------------------------------------------------------


def test_etag_format(make_doc: Any) -> None:
    """The ETag is weak and names table, key and version."""
    doc = make_doc()
    assert etag_for(doc) == f'W/"doc:{doc.id}:0"'


def test_etag_follows_the_version(db: VersionedSQLAlchemy, make_doc: Any) -> None:
    """A committed change gives the record a new ETag."""
    doc = make_doc()
    doc.title = "changed"
    db.session.commit()
    assert etag_for(doc) == f'W/"doc:{doc.id}:1"'


def test_etag_encodes_awkward_keys(db: VersionedSQLAlchemy) -> None:
    """Key values are percent-encoded, so ``:``, ``,`` and quotes can't break the tag."""

    class Page(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "page"
        slug = db.Column(db.String(40), primary_key=True)
        lang = db.Column(db.String(5), primary_key=True)

    db.create_all()
    page = Page(slug='a:b,"c', lang="en")
    db.session.add(page)
    db.session.commit()
    assert etag_for(page) == 'W/"page:a%3Ab%2C%22c,en:0"'


def test_etag_of_unsaved_record_is_refused(Doc: Any) -> None:
    """A record that was never saved has no version to tag."""
    with pytest.raises(ChrononautException):
        etag_for(Doc(title="new"))


def test_etag_of_non_record_is_type_error() -> None:
    """Something that is not a mapped record is a ``TypeError``."""
    with pytest.raises(TypeError):
        etag_for(object())


def test_response_carries_etag(client: FlaskClient, make_doc: Any) -> None:
    """``with_etag`` sets the response's ``ETag`` header."""
    doc = make_doc()
    response = client.get(f"/docs/{doc.id}")
    assert response.status_code == 200
    assert response.headers["ETag"] == f'W/"doc:{doc.id}:0"'


# -- If-Match -------------------------------------------------------------------------


def test_matching_if_match_saves(client: FlaskClient, make_doc: Any, committed: Committed) -> None:
    """The ETag from GET lets the PUT through and the answer carries the new ETag."""
    doc = make_doc()
    etag = client.get(f"/docs/{doc.id}").headers["ETag"]
    response = _put(client, doc.id, etag, title="new")
    assert response.status_code == 200
    assert response.headers["ETag"] == f'W/"doc:{doc.id}:1"'
    assert committed("SELECT title, version FROM doc") == [{"title": "new", "version": 1}]


def test_strong_form_of_tag_matches(client: FlaskClient, make_doc: Any) -> None:
    """Clients that drop the ``W/`` prefix still match (weak comparison, documented)."""
    doc = make_doc()
    assert _put(client, doc.id, f'"doc:{doc.id}:0"', title="new").status_code == 200


def test_one_of_several_tags_matches(client: FlaskClient, make_doc: Any) -> None:
    """A list of tags matches when any of them is current."""
    doc = make_doc()
    header = f'W/"other:1:0", W/"doc:{doc.id}:0"'
    assert _put(client, doc.id, header, title="new").status_code == 200


def test_star_matches_existing_record(client: FlaskClient, make_doc: Any) -> None:
    """``If-Match: *`` matches any existing record."""
    doc = make_doc()
    assert _put(client, doc.id, "*", title="new").status_code == 200


def test_stale_if_match_is_412_with_changes(
    client: FlaskClient, other: Session, Doc: Any, make_doc: Any, committed: Committed
) -> None:
    """An old version in If-Match: 412, who changed which fields since, the current ETag."""
    doc = make_doc()
    etag = client.get(f"/docs/{doc.id}").headers["ETag"]
    _bob_edits(other, Doc, doc.id, title="bob's")
    response = _put(client, doc.id, etag, title="alice's")
    assert response.status_code == 412
    assert response.headers["ETag"] == f'W/"doc:{doc.id}:1"'
    body = response.get_json()
    changed = body["changes"][0].pop("changed")
    assert dt.datetime.fromisoformat(changed).tzinfo is not None
    assert body == {
        "error": "precondition_failed",
        "expected_version": 0,
        "current_version": 1,
        "changes": [{"version": 0, "user_id": "bob", "fields": ["title"]}],
    }
    assert committed("SELECT title FROM doc") == [{"title": "bob's"}]


def test_foreign_if_match_is_412(client: FlaskClient, make_doc: Any) -> None:
    """A tag of another record (or garbage) is a 412 without changes."""
    doc = make_doc()
    response = _put(client, doc.id, 'W/"doc:999:0"', title="x")
    assert response.status_code == 412
    assert response.get_json() == {
        "error": "precondition_failed",
        "expected_version": None,
        "current_version": 0,
        "changes": [],
    }


@pytest.mark.parametrize(
    "header",
    [
        'W/"doc:1:\u00b2"',
        '"doc:1:' + "9" * 5000 + '"',
        'W/"doc:1:2147483648"',
        'W/"doc:1:-1"',
        'W/"doc:1:"',
        "garbage",
        'W/"',
        '"doc:1:0\x00"',
        '"\'; DROP TABLE doc; --"',
        "W/" * 1000,
    ],
)
def test_malformed_if_match_is_412(client: FlaskClient, make_doc: Any, header: str) -> None:
    """Weak, garbled, huge or SQL-looking versions are a 412, never a 500."""
    doc = make_doc()
    response = _put(client, doc.id, header, title="x")
    assert response.status_code == 412
    assert response.get_json()["current_version"] == 0


def test_several_old_tags_explain_from_the_newest(
    client: FlaskClient, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Of several stale tags of the record, the 412 explains from the newest one."""
    doc = make_doc()
    for n in range(11):
        _bob_edits(other, Doc, doc.id, title=f"t{n}")
    header = f'W/"doc:{doc.id}:2", W/"doc:{doc.id}:9"'
    body = _put(client, doc.id, header, title="x").get_json()
    assert (body["expected_version"], body["current_version"]) == (9, 11)
    assert [c["version"] for c in body["changes"]] == [9, 10]


def test_required_argument_raises_428(app: Flask, make_doc: Any) -> None:
    """``check_if_match(record, required=True)`` refuses a request without the header."""
    doc = make_doc()
    with app.test_request_context(method="PATCH"), pytest.raises(PreconditionRequired):
        check_if_match(doc, required=True)


def test_precondition_failed_is_an_http_exception(
    db: VersionedSQLAlchemy, app: Flask, other: Session, Doc: Any, make_doc: Any
) -> None:
    """``check_if_match`` raises ``PreconditionFailed`` carrying the explained conflict."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="bob's")
    db.session.refresh(doc)
    with app.test_request_context(headers={"If-Match": f'W/"doc:{doc.id}:0"'}):
        with pytest.raises(PreconditionFailed) as caught:
            check_if_match(doc)
    assert caught.value.code == 412
    assert isinstance(caught.value.stale, StaleWriteError)
    assert caught.value.stale.expected_version == 0


def test_missing_if_match_on_required_view_is_428(
    client: FlaskClient, make_doc: Any, committed: Committed
) -> None:
    """A ``require_if_match`` view refuses a PUT without If-Match, before it runs."""
    doc = make_doc()
    response = _put(client, doc.id, None, title="x")
    assert response.status_code == 428
    assert response.get_json()["error"] == "precondition_required"
    assert committed("SELECT title FROM doc") == [{"title": "draft"}]


def test_get_on_required_view_needs_no_header(client: FlaskClient, make_doc: Any) -> None:
    """Safe methods pass ``require_if_match`` (that is where clients get the ETag)."""
    doc = make_doc()
    assert client.get(f"/docs/{doc.id}").status_code == 200


def test_if_match_optional_by_default(client: FlaskClient, make_doc: Any) -> None:
    """Outside ``require_if_match``, a request without If-Match is let through."""
    doc = make_doc()
    response = client.patch(f"/loose/{doc.id}", json={"title": "x"})
    assert response.status_code == 200
    assert response.get_json() == {"matched": None}


def test_config_requires_if_match(api: Flask, client: FlaskClient, make_doc: Any) -> None:
    """``CHRONONAUT_REQUIRE_IF_MATCH = True`` makes every unsafe request need the header."""
    doc = make_doc()
    api.config["CHRONONAUT_REQUIRE_IF_MATCH"] = True
    assert client.patch(f"/loose/{doc.id}", json={"title": "x"}).status_code == 428
    header = {"If-Match": etag_for(doc)}
    response = client.patch(f"/loose/{doc.id}", json={"title": "x"}, headers=header)
    assert response.get_json() == {"matched": 0}


def test_change_after_check_is_409(
    api: Flask, client: FlaskClient, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A change committed between the If-Match check and the commit is a 409, not lost."""
    doc = make_doc()
    api.config["HOOKS"]["between"] = lambda: _bob_edits(other, Doc, doc.id, body="bob's")
    response = _put(client, doc.id, etag_for(doc), title="alice's")
    assert response.status_code == 409
    body = response.get_json()
    assert (body["expected_version"], body["current_version"]) == (0, 1)
    assert [c["fields"] for c in body["changes"]] == [["body"]]


# -- 409 bodies -----------------------------------------------------------------------


def test_stale_form_post_is_409_with_exact_body(
    client: FlaskClient, other: Session, Doc: Any, make_doc: Any
) -> None:
    """The hidden-version form pattern: a stale version answers the SPEC's 409 body."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    _bob_edits(other, Doc, doc.id, body="b2", secret="another secret")
    response = client.post(f"/docs/{doc.id}/form", data={"version": "0", "title": "mine"})
    assert response.status_code == 409
    body = response.get_json()
    for change in body["changes"]:
        assert dt.datetime.fromisoformat(change.pop("changed")).tzinfo is not None
    assert body == {
        "error": "stale_write",
        "expected_version": 0,
        "current_version": 2,
        "changes": [
            {"version": 0, "user_id": "bob", "fields": ["title"]},
            {"version": 1, "user_id": "bob", "fields": ["body", "secret"]},
        ],
    }


def test_409_never_shows_hidden_values(
    client: FlaskClient, other: Session, Doc: Any, make_doc: Any
) -> None:
    """Neither the old nor the new value of a hidden column appears in the response."""
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, secret="the new secret")
    response = client.post(f"/docs/{doc.id}/form", data={"version": "0", "title": "mine"})
    assert response.status_code == 409
    assert response.get_json()["changes"][0]["fields"] == ["secret"]
    text = response.get_data(as_text=True)
    assert SECRET not in text
    assert "the new secret" not in text


def test_409_for_deleted_record(
    db: VersionedSQLAlchemy, app: Flask, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A record deleted meanwhile: ``current_version`` is null, the delete is listed."""
    doc = make_doc()
    with acting_as("bob"):
        other.delete(other.get(Doc, doc.id))
        other.commit()
    doc.title = "mine"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    with app.test_request_context():
        response, status = stale_write_response(caught.value)
    assert status == 409
    body = response.get_json()
    assert (body["expected_version"], body["current_version"]) == (0, None)
    assert [(c["version"], c["user_id"], c["fields"]) for c in body["changes"]] == [(0, "bob", [])]


def test_409_from_flush_names_fields_of_newest_change(
    db: VersionedSQLAlchemy, app: Flask, other: Session, Doc: Any, make_doc: Any
) -> None:
    """The newest change's fields are exact even when the row moved on again since."""
    doc = make_doc()
    doc_id = doc.id
    _bob_edits(other, Doc, doc_id, title="t1")
    doc.body = "mine"
    with pytest.raises(StaleWriteError) as caught:
        db.session.commit()
    _bob_edits(other, Doc, doc_id, body="later")  # after the error: not part of it
    with app.test_request_context():
        body = stale_write_response(caught.value)[0].get_json()
    assert [c["fields"] for c in body["changes"]] == [["title"]]


# -- 423 bodies -----------------------------------------------------------------------


@pytest.fixture()
def bob_holds_lock(
    app: Flask, db: VersionedSQLAlchemy, Doc: Any, make_doc: Any
) -> Iterator[tuple[int, threading.Event]]:
    """Bob holds the row lock of a document (in a thread) until the event is set."""
    doc_id = int(make_doc().id)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with app.app_context():
            session = db.session.session_factory()
            try:
                with acting_as("bob"), cast(Any, session.get(Doc, doc_id)).lock():
                    locked.set()
                    release.wait(10)
            finally:
                session.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    try:
        yield doc_id, release
    finally:
        release.set()
        thread.join(10)


def test_locked_is_423_with_holder(
    client: FlaskClient, bob_holds_lock: tuple[int, threading.Event]
) -> None:
    """``RecordLockedError`` answers 423 ``locked`` naming the holder."""
    doc_id, _ = bob_holds_lock
    response = client.post(f"/docs/{doc_id}/lock")
    assert response.status_code == 423
    body = response.get_json()
    assert body["error"] == "locked"
    holder = body["holder"]
    assert set(holder) == {"user_id", "pid", "since"}
    assert holder["user_id"] == "bob"
    assert isinstance(holder["pid"], int)


def test_lock_timeout_is_423(
    client: FlaskClient, bob_holds_lock: tuple[int, threading.Event]
) -> None:
    """``LockTimeoutError`` answers 423 ``lock_timeout`` naming the holder."""
    doc_id, _ = bob_holds_lock
    response = client.post(f"/docs/{doc_id}/lock?timeout=0.2")
    assert response.status_code == 423
    body = response.get_json()
    assert body["error"] == "lock_timeout"
    assert body["holder"]["user_id"] == "bob"


def test_advisory_lock_not_available_is_423(db: VersionedSQLAlchemy, client: FlaskClient) -> None:
    """``LockNotAvailableError`` from an advisory lock answers 423 ``locked``."""
    session = db.session.session_factory()
    try:
        with acting_as("bob"), advisory_lock("report", session=session):
            response = client.post("/advisory")
    finally:
        session.close()
    assert response.status_code == 423
    assert response.get_json()["error"] == "locked"


# -- overriding -----------------------------------------------------------------------


def test_html_app_overrides_by_registering_after(
    api: Flask, client: FlaskClient, other: Session, Doc: Any, make_doc: Any
) -> None:
    """A handler registered after ``register_error_handlers`` replaces the JSON one."""
    api.register_error_handler(StaleWriteError, lambda e: ("<h1>Conflict</h1>", 409))
    doc = make_doc()
    _bob_edits(other, Doc, doc.id, title="t1")
    response = client.post(f"/docs/{doc.id}/form", data={"version": "0", "title": "mine"})
    assert (response.status_code, response.get_data(as_text=True)) == (409, "<h1>Conflict</h1>")


def test_handlers_on_a_blueprint_only(app: Flask, db: VersionedSQLAlchemy) -> None:
    """Registered on a blueprint, the JSON handlers answer that blueprint's views only."""
    api = Blueprint("api", __name__)

    @api.post("/busy")
    def busy() -> Any:
        raise LockNotAvailableError("busy")

    @app.post("/busy")
    def busy_html() -> Any:
        raise LockNotAvailableError("busy")

    register_error_handlers(api)
    app.register_blueprint(api, url_prefix="/api")
    client = app.test_client()
    assert client.post("/api/busy").get_json() == {"error": "locked", "holder": None}
    with pytest.raises(LockNotAvailableError):  # TESTING: unhandled errors propagate
        client.post("/busy")
