"""SPEC §3: what goes into ``change_info`` — actor, remote address, extra info,
configuration, and suppressing versioning."""

from __future__ import annotations

import sys
import threading
from typing import Any, cast

import pytest
from flask import Flask
from flask_login import LoginManager, UserMixin, login_user

from chrononaut import (
    ChrononautException,
    Versioned,
    VersionedSQLAlchemy,
    acting_as,
    append_change_info,
    extra_change_info,
    rationale,
    suppress_versioning,
)

PLAIN = {"user_id": None, "remote_addr": None}


class LoginUser(UserMixin):  # type: ignore[misc]  # Flask-Login ships no type hints
    """A Flask-Login user with a given id."""

    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _rename(db: VersionedSQLAlchemy, user: Any, name: str) -> dict[str, Any]:
    """Rename ``user``, commit, and return the new history row's change_info."""
    user.name = name
    db.session.commit()
    return user.previous_version().change_info  # type: ignore[no-any-return]


# the acting user


def test_acting_as_sets_user_id(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``acting_as`` sets ``user_id`` (as a string) of rows written in the block."""
    user = make_user()
    with acting_as(42):
        info = _rename(db, user, "bob")
    assert info == {"user_id": "42", "remote_addr": None}


def test_acting_as_remote_addr(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``acting_as(..., remote_addr=...)`` records the address."""
    user = make_user()
    with acting_as("svc", remote_addr="10.1.2.3"):
        info = _rename(db, user, "bob")
    assert info == {"user_id": "svc", "remote_addr": "10.1.2.3"}


def test_acting_as_nested(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Nested ``acting_as`` blocks: the inner wins and the outer is restored on exit."""
    user = make_user()
    with acting_as("outer"):
        with acting_as("inner"):
            inner = _rename(db, user, "bob")
        outer = _rename(db, user, "carol")
    after = _rename(db, user, "dave")
    assert (inner["user_id"], outer["user_id"], after["user_id"]) == ("inner", "outer", None)


def test_acting_as_restored_on_exception(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``acting_as`` restores the previous actor when its block raises."""
    user = make_user()
    with pytest.raises(RuntimeError), acting_as("x"):
        raise RuntimeError
    assert _rename(db, user, "bob") == PLAIN


def test_acting_as_applies_at_flush(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """The actor is the one active when the change is flushed."""
    user = make_user()
    user.name = "bob"
    with acting_as("flusher"):
        db.session.flush()
    db.session.commit()
    assert user.previous_version().change_info["user_id"] == "flusher"


def _with_login_manager(app: Flask) -> LoginManager:
    manager = LoginManager()
    manager.init_app(app)
    manager.user_loader(lambda user_id: LoginUser(user_id))
    return manager


def test_flask_login_current_user(app: Flask, db: VersionedSQLAlchemy, make_user: Any) -> None:
    """In a request, the logged-in Flask-Login user and ``remote_addr`` are recorded."""
    _with_login_manager(app)
    user = make_user()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        login_user(LoginUser("u-17"))
        info = _rename(db, user, "bob")
    assert info == {"user_id": "u-17", "remote_addr": "203.0.113.9"}


def test_flask_login_anonymous(app: Flask, db: VersionedSQLAlchemy, make_user: Any) -> None:
    """In a request without a logged-in user, ``user_id`` is null and ``remote_addr`` set."""
    _with_login_manager(app)
    user = make_user()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        info = _rename(db, user, "bob")
    assert info == {"user_id": None, "remote_addr": "203.0.113.9"}


def test_acting_as_beats_flask_login(app: Flask, db: VersionedSQLAlchemy, make_user: Any) -> None:
    """An ``acting_as`` block wins over Flask-Login's ``current_user``."""
    _with_login_manager(app)
    user = make_user()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        login_user(LoginUser("u-17"))
        with acting_as("admin"):
            info = _rename(db, user, "bob")
    assert info["user_id"] == "admin"


def test_flask_login_via_test_client(
    app: Flask, db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A request through the test client records the request-loaded user and address."""
    manager = LoginManager()
    manager.init_app(app)
    manager.request_loader(
        lambda request: (
            LoginUser(request.headers["X-User"]) if "X-User" in request.headers else None
        )
    )
    user_id = make_user().id

    @app.post("/rename/<name>")
    def rename(name: str) -> str:
        cast(Any, db.session.get(User, user_id)).name = name
        db.session.commit()
        return "ok"

    response = app.test_client().post(
        "/rename/bob", headers={"X-User": "u-5"}, environ_base={"REMOTE_ADDR": "198.51.100.4"}
    )
    assert response.status_code == 200
    user = db.session.get(User, user_id)
    assert user is not None
    assert user.previous_version().change_info == {"user_id": "u-5", "remote_addr": "198.51.100.4"}


def test_flask_login_unconfigured(app: Flask, db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Flask-Login installed but not configured for the app does not break a commit."""
    assert not hasattr(app, "login_manager")
    user = make_user()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        info = _rename(db, user, "bob")
    assert info == {"user_id": None, "remote_addr": "203.0.113.9"}


def test_flask_login_unconfigured_test_client(
    app: Flask, db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """A request to an app without a LoginManager commits versioned changes fine."""
    user_id = make_user().id

    @app.post("/rename")
    def rename() -> str:
        cast(Any, db.session.get(User, user_id)).name = "bob"
        db.session.commit()
        return "ok"

    response = app.test_client().post("/rename", environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert response.status_code == 200
    user = db.session.get(User, user_id)
    assert user is not None
    assert user.previous_version().change_info == {"user_id": None, "remote_addr": "198.51.100.4"}


def test_flask_login_absent(
    app: Flask, db: VersionedSQLAlchemy, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Flask-Login importable, a commit in a request records a null user."""
    monkeypatch.setitem(sys.modules, "flask_login", None)
    user = make_user()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.9"}):
        info = _rename(db, user, "bob")
    assert info == {"user_id": None, "remote_addr": "203.0.113.9"}


def test_fetch_current_user_id_override(db: VersionedSQLAlchemy, history_rows: Any) -> None:
    """A model's ``_fetch_current_user_id`` classmethod supplies the acting user."""

    class Job(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "job"
        id = db.Column(db.Integer, primary_key=True)
        state = db.Column(db.String(20))

        @classmethod
        def _fetch_current_user_id(cls) -> str | None:
            return "worker-3"

    db.create_all()
    job = Job(state="new")
    db.session.add(job)
    db.session.commit()
    job.state = "done"
    db.session.commit()
    [row] = history_rows("job_history")
    assert row["change_info"] == {"user_id": "worker-3", "remote_addr": None}


# extra_change_info / rationale / append_change_info


def test_extra_change_info(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Rows written inside ``extra_change_info`` carry the info in ``extra``."""
    user = make_user()
    with extra_change_info(ticket="T-1", batch=3):
        info = _rename(db, user, "bob")
    assert info == {**PLAIN, "extra": {"ticket": "T-1", "batch": 3}}


def test_extra_absent_when_empty(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``extra`` is absent when there is no extra info."""
    user = make_user()
    with extra_change_info():
        info = _rename(db, user, "bob")
    assert "extra" not in info


def test_extra_change_info_nested_merge(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Nested ``extra_change_info`` blocks merge, the inner block winning."""
    user = make_user()
    with extra_change_info(a=1, b=1), extra_change_info(b=2, c=2):
        info = _rename(db, user, "bob")
    assert info["extra"] == {"a": 1, "b": 2, "c": 2}


def test_extra_change_info_restored_on_exit(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """After an inner block exits, the outer values apply again."""
    user = make_user()
    with extra_change_info(a=1, b=1):
        with extra_change_info(b=2):
            pass
        info = _rename(db, user, "bob")
    assert info["extra"] == {"a": 1, "b": 1}


def test_extra_change_info_restored_on_exception(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """An inner block that raises restores the outer values."""
    user = make_user()
    with extra_change_info(a=1):
        with pytest.raises(RuntimeError), extra_change_info(a=2, b=2):
            raise RuntimeError
        info = _rename(db, user, "bob")
    assert info["extra"] == {"a": 1}


def test_extra_change_info_gone_after_block(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Changes flushed after the block carry no ``extra``."""
    user = make_user()
    with extra_change_info(a=1):
        pass
    assert _rename(db, user, "bob") == PLAIN


def test_extra_change_info_applies_at_flush(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """The info is that of the block active when the row is flushed."""
    user = make_user()
    user.name = "bob"
    with extra_change_info(flushed="inside"):
        db.session.flush()
    db.session.commit()
    assert user.previous_version().change_info["extra"] == {"flushed": "inside"}


def test_rationale(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``rationale(text)`` puts ``{"rationale": text}`` in ``extra``."""
    user = make_user()
    with rationale("GDPR request #12"):
        info = _rename(db, user, "bob")
    assert info == {**PLAIN, "extra": {"rationale": "GDPR request #12"}}


def test_rationale_merges_with_extra(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``rationale`` nests with ``extra_change_info`` like any block."""
    user = make_user()
    with extra_change_info(ticket="T-1"), rationale("fix typo"):
        info = _rename(db, user, "bob")
    assert info["extra"] == {"ticket": "T-1", "rationale": "fix typo"}


def test_append_change_info_next_row(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``append_change_info`` puts info into the record's next history row."""
    user = make_user()
    append_change_info(user, source="import")
    assert _rename(db, user, "bob") == {**PLAIN, "extra": {"source": "import"}}


def test_append_change_info_only_next_row(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``append_change_info`` does not affect later history rows."""
    user = make_user()
    append_change_info(user, source="import")
    _rename(db, user, "bob")
    assert _rename(db, user, "carol") == PLAIN


def test_append_change_info_only_that_record(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``append_change_info`` does not affect other records changed in the same flush."""
    alice = make_user(name="alice")
    bob = make_user(name="bob")
    append_change_info(alice, source="import")
    alice.name = "alice2"
    bob.name = "bob2"
    db.session.commit()
    assert alice.previous_version().change_info["extra"] == {"source": "import"}
    assert bob.previous_version().change_info == PLAIN


def test_append_change_info_amid_plain_rows(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Rows of one flush share the plain document only when they have no info of their own."""
    users = [make_user(name=f"u{i}") for i in range(4)]
    append_change_info(users[1], source="import")
    with extra_change_info(ticket="T-2"):
        for user in users:
            user.name += "x"
        db.session.commit()
    infos = [user.previous_version().change_info for user in users]
    assert infos[1] == {**PLAIN, "extra": {"ticket": "T-2", "source": "import"}}
    assert infos[0] == infos[2] == infos[3] == {**PLAIN, "extra": {"ticket": "T-2"}}


def test_append_change_info_waits_for_change(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Info appended before an untracked-only change waits for the next history row."""
    user = make_user()
    append_change_info(user, source="import")
    user.login_count = 9
    db.session.commit()
    assert _rename(db, user, "bob")["extra"] == {"source": "import"}


def test_append_change_info_with_block(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Appended info merges with the active ``extra_change_info`` block."""
    user = make_user()
    append_change_info(user, source="import")
    with extra_change_info(ticket="T-1"):
        info = _rename(db, user, "bob")
    assert info["extra"] == {"source": "import", "ticket": "T-1"}


def _rename_in_thread(app: Flask, db: VersionedSQLAlchemy, User: Any, user_id: int) -> None:
    """Rename the user in another thread, with its own app context and session."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with app.app_context():
                cast(Any, db.session.get(User, user_id)).name = "from-thread"
                db.session.commit()
                db.session.remove()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors == []


def test_extra_change_info_not_shared_across_threads(
    app: Flask, db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """An ``extra_change_info`` block in one thread does not reach another thread's changes."""
    user = make_user()
    with extra_change_info(who="main"):
        _rename_in_thread(app, db, User, user.id)
    db.session.expire_all()
    assert user.previous_version().change_info == PLAIN


def test_acting_as_not_shared_across_threads(
    app: Flask, db: VersionedSQLAlchemy, make_user: Any, User: Any
) -> None:
    """An ``acting_as`` block in one thread does not set the actor of another thread."""
    user = make_user()
    with acting_as("main-user"):
        _rename_in_thread(app, db, User, user.id)
    db.session.expire_all()
    assert user.previous_version().change_info == PLAIN


# configuration


@pytest.fixture()
def db_with_config(request: pytest.FixtureRequest, app: Flask) -> Any:
    """A ``db`` created after the indirect parameter (a dict) was put into the app config."""
    app.config.update(request.param)
    return request.getfixturevalue("db")


def _extra_func() -> dict[str, Any]:
    return {"source": "config", "ticket": "CFG"}


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_EXTRA_CHANGE_INFO_FUNC": _extra_func}], indirect=True
)
def test_extra_change_info_func(db_with_config: Any, make_user: Any) -> None:
    """``CHRONONAUT_EXTRA_CHANGE_INFO_FUNC`` output is merged into ``extra``."""
    user = make_user()
    assert _rename(db_with_config, user, "bob") == {
        **PLAIN,
        "extra": {"source": "config", "ticket": "CFG"},
    }


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_EXTRA_CHANGE_INFO_FUNC": _extra_func}], indirect=True
)
def test_extra_change_info_func_loses_to_block(db_with_config: Any, make_user: Any) -> None:
    """Context-manager values win over ``CHRONONAUT_EXTRA_CHANGE_INFO_FUNC``."""
    user = make_user()
    with extra_change_info(ticket="T-9"):
        info = _rename(db_with_config, user, "bob")
    assert info["extra"] == {"source": "config", "ticket": "T-9"}


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_require_extra_change_info_raises(db_with_config: Any, make_user: Any) -> None:
    """With ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO``, a change flushed outside a block raises."""
    with rationale("setup"):
        user = make_user()
    user.name = "bob"
    with pytest.raises(ChrononautException):
        db_with_config.session.flush()


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_require_extra_change_info_writes_nothing(
    db_with_config: Any, make_user: Any, history_rows: Any, User: Any
) -> None:
    """A change refused for missing extra info leaves nothing written."""
    with rationale("setup"):
        user = make_user(name="alice")
    user.name = "bob"
    with pytest.raises(ChrononautException):
        db_with_config.session.commit()
    db_with_config.session.rollback()
    assert history_rows("appuser_history") == []
    assert db_with_config.session.get(User, user.id).name == "alice"


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_require_extra_change_info_delete(db_with_config: Any, make_user: Any) -> None:
    """With ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO``, a delete flushed outside a block raises."""
    with rationale("setup"):
        user = make_user()
    db_with_config.session.delete(user)
    with pytest.raises(ChrononautException):
        db_with_config.session.flush()


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_require_extra_change_info_satisfied(db_with_config: Any, make_user: Any) -> None:
    """With ``CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO``, a change inside a block commits."""
    with rationale("setup"):
        user = make_user()
    with rationale("rename"):
        info = _rename(db_with_config, user, "bob")
    assert info["extra"] == {"rationale": "rename"}


# suppress_versioning


def test_suppress_versioning_no_history(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """Changes flushed inside ``suppress_versioning`` write no history."""
    user = make_user()
    with suppress_versioning():
        user.name = "bob"
        user.password = "p2"
        db.session.commit()
    assert history_rows("appuser_history") == []


def test_suppress_versioning_keeps_version(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """Changes flushed inside ``suppress_versioning`` do not bump ``version``."""
    user = make_user()
    with suppress_versioning():
        user.name = "bob"
        db.session.commit()
    assert (user.name, user.version) == ("bob", 0)


def test_suppress_versioning_ends_with_block(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """After the block, changes are versioned again."""
    user = make_user(name="alice")
    with suppress_versioning():
        user.name = "bob"
        db.session.commit()
    user.name = "carol"
    db.session.commit()
    assert [(h.version, h.name) for h in user.versions()] == [(0, "bob")]
    assert user.version == 1


def test_suppress_versioning_delete(
    db: VersionedSQLAlchemy, make_user: Any, history_rows: Any
) -> None:
    """A delete flushed inside ``suppress_versioning`` writes no history."""
    user = make_user()
    with suppress_versioning():
        db.session.delete(user)
        db.session.commit()
    assert history_rows("appuser_history") == []


def test_append_change_info_as_with_block(db: VersionedSQLAlchemy, make_user: Any) -> None:
    """``with append_change_info(record, ...):`` (Chrononaut 0.2-0.4 style) records
    the info for the record's next history row, as the plain call does."""
    user = make_user(name="alice")
    with append_change_info(user, reason="Extra object info"):
        user.name = "bob"
    db.session.commit()
    assert user.previous_version().change_info["extra"] == {"reason": "Extra object info"}
