"""SPEC §2: PostgreSQL ORM upserts write history for the rows taking the update branch."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.dialects.postgresql import insert

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy, append_change_info

PLAIN = {"user_id": None, "remote_addr": None}


@pytest.fixture()
def pair(make_user: Any) -> list[Any]:
    """Two committed users: alice (id 1), bob (id 2), at version 0."""
    return [make_user(id=1, name="alice"), make_user(id=2, name="bob")]


def _versions(db: VersionedSQLAlchemy, User: Any) -> dict[int, int]:
    """The committed ``version`` of each user, read on a separate connection."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(User.__table__.c.id, User.__table__.c.version))
        return {row[0]: row[1] for row in rows}


def _summary(rows: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(r["id"], r["version"], r["name"]) for r in rows]


def _upsert(User: Any, rows: list[dict[str, Any]], **set_: Any) -> Any:
    statement = insert(User).values(rows)
    values = set_ or {"name": statement.excluded.name}
    return statement.on_conflict_do_update(index_elements=[User.id], set_=values)


def test_update_branch_writes_history(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A row taking the update branch gets a history row of its prior state and a bump."""
    db.session.execute(_upsert(User, [{"id": 1, "name": "zed", "email": "a@x"}]))
    db.session.commit()
    rows = history_rows("appuser_history")
    assert _summary(rows) == [(1, 0, "alice")]
    assert rows[0]["change_info"] == PLAIN
    assert _versions(db, User) == {1: 1, 2: 0}


def test_insert_branch_writes_nothing(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A row taking the insert branch writes no history and starts at version 0."""
    db.session.execute(_upsert(User, [{"id": 3, "name": "carol", "email": "c@x"}]))
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0, 3: 0}


def test_multi_row_both_branches(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """Multi-row values: updated rows get history, unchanged and inserted rows don't."""
    rows = [
        {"id": 1, "name": "zed", "email": "a@x"},
        {"id": 2, "name": "bob", "email": "b@x"},
        {"id": 3, "name": "carol", "email": "c@x"},
    ]
    db.session.execute(_upsert(User, rows))
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    assert _versions(db, User) == {1: 1, 2: 0, 3: 0}


def test_conflict_on_unique_column(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A conflict target other than the primary key (a unique email) is captured."""
    statement = insert(User).values(id=9, name="zed", email="bob@example.com")
    statement = statement.on_conflict_do_update(
        index_elements=[User.email], set_={"name": statement.excluded.name}
    )
    db.session.execute(statement)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]
    assert _versions(db, User) == {1: 0, 2: 1}


def test_set_expression_on_old_row(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """set_ values computed from the existing row record the value before them."""
    statement = _upsert(User, [{"id": 1, "name": "x", "email": "a@x"}], name=User.name + "!")
    db.session.execute(statement)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]
    user: Any = db.session.get(User, 1)
    assert user.name == "alice!"


def test_untracked_only_no_bump(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """An update branch changing untracked columns only writes nothing."""
    statement = insert(User).values(id=1, name="alice", email="a@x", login_count=5)
    statement = statement.on_conflict_do_update(
        index_elements=[User.id], set_={"login_count": statement.excluded.login_count}
    )
    db.session.execute(statement)
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0}


def test_hidden_change_listed(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A hidden column changed by the update branch is listed, its value not stored."""
    statement = insert(User).values(id=2, name="bob", email="b@x", password="new")
    statement = statement.on_conflict_do_update(
        index_elements=[User.id], set_={"password": statement.excluded.password}
    )
    db.session.execute(statement)
    db.session.commit()
    [row] = history_rows("appuser_history")
    assert row["change_info"] == {**PLAIN, "hidden_cols_changed": ["password"]}
    assert "password" not in row


def test_where_excludes_rows(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """Rows the DO UPDATE's WHERE leaves alone get no history."""
    statement = insert(User).values([{"id": 1, "name": "z1"}, {"id": 2, "name": "z2"}])
    statement = statement.on_conflict_do_update(
        index_elements=[User.id],
        set_={"name": statement.excluded.name},
        where=User.name == "bob",
    )
    db.session.execute(statement)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]
    assert _versions(db, User) == {1: 0, 2: 1}


def test_do_nothing_writes_nothing(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """``on_conflict_do_nothing`` writes no history and bumps nothing."""
    statement = insert(User).values(id=1, name="zed").on_conflict_do_nothing()
    db.session.execute(statement)
    db.session.commit()
    assert history_rows("appuser_history") == []
    assert _versions(db, User) == {1: 0, 2: 0}


def test_returning_new_version(db: VersionedSQLAlchemy, pair: Any, User: Any) -> None:
    """RETURNING of an upsert gives the version after the statement."""
    statement = _upsert(User, [{"id": 1, "name": "zed"}, {"id": 5, "name": "e"}])
    rows = db.session.execute(statement.returning(User.id, User.version)).all()
    assert sorted(tuple(r) for r in rows) == [(1, 1), (5, 0)]
    db.session.commit()


def test_appended_info_on_upserted_row(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """``append_change_info`` of a loaded record reaches its upsert history row."""
    append_change_info(pair[0], note="n")
    db.session.execute(_upsert(User, [{"id": 1, "name": "zed"}, {"id": 2, "name": "z2"}]))
    db.session.commit()
    infos = [r["change_info"] for r in history_rows("appuser_history")]
    assert infos == [{**PLAIN, "extra": {"note": "n"}}, PLAIN]


def test_version_in_set_refused(db: VersionedSQLAlchemy, pair: Any, User: Any) -> None:
    """An upsert set_ assigning ``version`` is refused before any statement."""
    statement = insert(User).values(id=1, name="zed")
    statement = statement.on_conflict_do_update(index_elements=[User.id], set_={"version": 9})
    with pytest.raises(ChrononautException, match="version"):
        db.session.execute(statement)


def test_named_constraint_target(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A conflict target given as the primary key constraint's name is captured."""
    statement = insert(User).values(id=2, name="zed")
    statement = statement.on_conflict_do_update(
        constraint=User.__table__.primary_key.name or "appuser_pkey",
        set_={"name": statement.excluded.name},
    )
    db.session.execute(statement)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(2, 0, "bob")]


@pytest.mark.parametrize(
    "db_with_config", [{"CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO": True}], indirect=True
)
def test_required_info_refused(db_with_config: Any, User: Any) -> None:
    """With CHRONONAUT_REQUIRE_EXTRA_CHANGE_INFO an upsert outside a block is refused."""
    with pytest.raises(ChrononautException):
        db_with_config.session.execute(_upsert(User, [{"id": 1, "name": "x"}]))


@pytest.fixture()
def db_with_config(request: pytest.FixtureRequest, app: Flask) -> Any:
    """A ``db`` created after the indirect parameter (a dict) was put into the app config."""
    app.config.update(request.param)
    return request.getfixturevalue("db")


def test_default_unique_constraint_name(
    db: VersionedSQLAlchemy, pair: Any, User: Any, history_rows: Any
) -> None:
    """A unique column's default constraint name (``appuser_email_key``) is a target."""
    statement = insert(User).values(id=8, name="zed", email="alice@example.com")
    statement = statement.on_conflict_do_update(
        constraint="appuser_email_key", set_={"name": statement.excluded.name}
    )
    db.session.execute(statement)
    db.session.commit()
    assert _summary(history_rows("appuser_history")) == [(1, 0, "alice")]


class Shade(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.fixture()
def Paint(db: VersionedSQLAlchemy) -> Any:
    """A model with an enum, a nullable integer and a rounded numeric column."""

    class Paint(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "paint"
        id = db.Column(db.Integer, primary_key=True)
        shade = db.Column(sa.Enum(Shade, name="chron_test_shade"))
        qty = db.Column(db.Integer, nullable=True)
        amount = db.Column(db.Numeric(10, 2))

    db.create_all()
    db.session.add(Paint(id=1, shade=Shade.RED, qty=5, amount=Decimal("1.23")))
    db.session.commit()
    return Paint


@pytest.mark.parametrize(
    ("column", "value", "changes"),
    [
        ("shade", Shade.BLUE, True),
        ("qty", None, True),
        ("amount", Decimal("1.234"), False),  # rounds to the stored 1.23
        ("amount", Decimal("1.235"), True),
    ],
)
def test_set_values_compared_as_column_type(
    db: VersionedSQLAlchemy, Paint: Any, column: str, value: Any, changes: bool
) -> None:
    """Proposed values are compared as the column's type: enums and all-NULL columns
    work, and a value that rounds to the stored one is no change."""
    statement = insert(Paint).values([{"id": 1, column: value}])
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[Paint.id], set_={column: getattr(statement.excluded, column)}
        )
    )
    db.session.commit()
    paint = db.session.get(Paint, 1)
    assert paint is not None
    assert (paint.version, len(paint.versions())) == ((1, 1) if changes else (0, 0))
    paint.qty = 7
    db.session.commit()
    assert [h.version for h in paint.versions()] == ([0, 1] if changes else [0])


def test_collated_string_columns(db: VersionedSQLAlchemy) -> None:
    """Upserts and UPDATE by primary key of models with collated string columns
    (hidden too) work: the proposed values' casts carry no collation."""

    class Label(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "collated_label"
        __chrononaut_hidden__ = ["secret"]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(20, collation="C"))
        secret = db.Column(db.String(20, collation="C"))

    db.create_all()
    db.session.add(Label(id=1, name="a", secret="s"))
    db.session.commit()
    statement = insert(Label).values([{"id": 1, "name": "b"}])
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[Label.id], set_={"name": statement.excluded.name}
        )
    )
    db.session.execute(sa.update(Label), [{"id": 1, "secret": "t"}])
    db.session.commit()
    label = db.session.get(Label, 1)
    assert label is not None and (label.name, label.version) == ("b", 2)


@pytest.mark.parametrize(("value", "changes"), [(Decimal("1.234"), False), (Decimal("2"), True)])
def test_literal_set_value_compared_as_stored(
    db: VersionedSQLAlchemy, Paint: Any, value: Decimal, changes: bool
) -> None:
    """A literal in ``set_`` (not ``excluded``) is compared as the column stores it:
    one that rounds to the stored value is no change."""
    statement = insert(Paint).values([{"id": 1, "qty": 5}])
    db.session.execute(
        statement.on_conflict_do_update(index_elements=[Paint.id], set_={"amount": value})
    )
    db.session.commit()
    paint = db.session.get(Paint, 1)
    assert paint is not None
    assert (paint.version, len(paint.versions())) == ((1, 1) if changes else (0, 0))
