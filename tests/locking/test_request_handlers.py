"""The request-handler pattern end to end: a locked record becomes HTTP 423 naming the holder."""

from __future__ import annotations

from typing import Any

from flask import Flask

from chrononaut import acting_as, register_error_handlers


def test_locked_record_answers_423_with_the_holder(
    app: Flask, db: Any, Counter: Any, new_session: Any
) -> None:
    """A handler using lock(nowait=True) on a held row answers 423 with the holder's user."""
    register_error_handlers(app)

    @app.post("/counters/<int:pk>/bump")
    def bump(pk: int) -> dict[str, int]:
        rec = db.get_or_404(Counter, pk)
        with rec.lock(nowait=True):
            rec.n += 1
        return {"n": rec.n}

    client = app.test_client()
    holder = new_session()
    with acting_as("wendy"), holder.get(Counter, 1).lock():
        response = client.post("/counters/1/bump")
    assert response.status_code == 423
    body = response.get_json()
    assert body["error"] == "locked"
    assert body["holder"]["user_id"] == "wendy"
    ok = client.post("/counters/1/bump")
    assert ok.status_code == 200 and ok.get_json() == {"n": 1}


def test_lock_timeout_answers_423_lock_timeout(
    app: Flask, db: Any, Counter: Any, new_session: Any
) -> None:
    """A handler using lock(timeout=...) answers 423 "lock_timeout" when it runs out."""
    register_error_handlers(app)

    @app.post("/counters/<int:pk>/slow")
    def slow(pk: int) -> dict[str, int]:
        rec = db.get_or_404(Counter, pk)
        with rec.lock(timeout=0.05):
            rec.n += 1
        return {"n": rec.n}

    holder = new_session()
    with acting_as("xena"), holder.get(Counter, 2).lock():
        response = app.test_client().post("/counters/2/slow")
    assert response.status_code == 423
    assert response.get_json()["error"] == "lock_timeout"
    assert response.get_json()["holder"]["user_id"] == "xena"
