"""The holder's lease recorded in history by the flush's one lease check (issue 13).

When the holder's transaction did not take or renew the lease before the flush,
the check statement itself adds ``change_info["lease"]`` to the history rows the
flush wrote: one extra statement per flush per leased table, and the same JSON
``_Known.change_info()`` builds in Python.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa

from chrononaut import RecordLeasedError, Versioned, VersionedSQLAlchemy, acting_as, history_class
from chrononaut._leases import LEASE_TABLE, _from_row

UTC = dt.timezone.utc


@pytest.fixture()
def alice_leases(db: VersionedSQLAlchemy, Doc: Any) -> Callable[..., Any]:
    """Let alice lease records of Doc (committed) from a session of her own."""

    def take(*ids: int) -> list[Any]:
        session = db.session.session_factory()
        try:
            with acting_as("alice"):
                return [cast(Any, session.get(Doc, i)).lease() for i in ids]
        finally:
            session.close()

    return take


def _flush_statements(db: VersionedSQLAlchemy, statements: list[str], change: Any) -> int:
    """How many statements the flush of ``change()`` sends as alice, not counting
    the SELECTs that load expired attributes (the records were committed before)."""
    with acting_as("alice"):
        change()
        statements.clear()
        db.session.flush()
        sent = [s for s in statements if not s.lstrip().upper().startswith("SELECT")]
        db.session.commit()
    return len(sent)


def _lease_row(db: VersionedSQLAlchemy, id_: int) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT record_key, user_id, acquired_at, expires_at, note, took_over_from "
                f"FROM {LEASE_TABLE} WHERE record_key = :k"
            ),
            {"k": f"[{id_}]"},
        ).one()


def _recorded(db: VersionedSQLAlchemy, Doc: Any, id_: int) -> tuple[Any, str]:
    """The latest history row's change_info["lease"], as a value and as JSONB text."""
    table = cast(Any, history_class(Doc)).__table__
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.change_info["lease"], sa.cast(table.c.change_info["lease"], sa.Text))
            .where(table.c.id == id_)
            .order_by(table.c.version.desc())
            .limit(1)
        ).one()
    return row[0], row[1]


def _as_jsonb_text(db: VersionedSQLAlchemy, value: dict[str, Any]) -> str:
    """``value`` the way the former separate patch statement stored it (a JSONB parameter)."""
    with db.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT CAST(CAST(:v AS jsonb) AS text)"), {"v": json.dumps(value)}
        )
        return str(stored.scalar_one())


def test_unknown_lease_costs_one_statement(
    db: VersionedSQLAlchemy,
    Doc: Any,
    Plain: Any,
    alice_leases: Callable[..., Any],
    statements: list[str],
) -> None:
    """The holder's save with the lease unknown to the transaction sends one extra statement."""
    alice_leases(1)
    plain, doc = db.session.get(Plain, 1), db.session.get(Doc, 1)
    without = _flush_statements(db, statements, lambda: setattr(plain, "title", "p"))
    held = _flush_statements(db, statements, lambda: setattr(doc, "title", "d"))
    assert (without, held) == (1, 2)
    assert cast(Any, doc).versions()[-1].change_info["lease"]["user_id"] == "alice"


def test_unknown_lease_delete_costs_one_statement(
    db: VersionedSQLAlchemy,
    Doc: Any,
    Plain: Any,
    alice_leases: Callable[..., Any],
    statements: list[str],
) -> None:
    """The holder's delete with the lease unknown to the transaction sends one extra statement."""
    alice_leases(2)
    plain, doc = db.session.get(Plain, 2), db.session.get(Doc, 2)
    without = _flush_statements(db, statements, lambda: db.session.delete(plain))
    held = _flush_statements(db, statements, lambda: db.session.delete(doc))
    assert held == without + 1


def test_expired_record_delete_records_lease(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The holder's delete of an expired (not loaded) record records change_info["lease"]."""
    alice_leases(2)
    doc = db.session.get(Doc, 2)
    db.session.commit()  # expires doc: the flush loads its version
    with acting_as("alice"):
        db.session.delete(doc)
        db.session.commit()
    value, _ = _recorded(db, Doc, 2)
    assert value is not None and value["user_id"] == "alice"


def test_several_records_one_statement(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any], statements: list[str]
) -> None:
    """A flush of several held records and a free one sends one lease statement in all."""
    alice_leases(1, 2)
    docs = [db.session.get(Doc, i) for i in (1, 2, 3)]

    def change() -> None:
        for doc in docs:
            cast(Any, doc).title = "many"

    _flush_statements(db, statements, change)
    assert len([s for s in statements if LEASE_TABLE in s]) == 1
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE LEASE_DOC_HISTORY")]
    assert [_recorded(db, Doc, i)[0] is not None for i in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize(
    ("acquired", "expires", "took_over_from"),
    [
        (
            dt.datetime(2026, 3, 1, 10, 5, 0, tzinfo=UTC),
            dt.datetime(2999, 3, 1, 10, 20, 0, tzinfo=UTC),
            None,
        ),
        (
            dt.datetime(2026, 3, 1, 10, 5, 0, 120000, tzinfo=UTC),
            dt.datetime(2999, 3, 1, 10, 20, 7, 5, tzinfo=UTC),
            None,
        ),
        (
            dt.datetime(2026, 3, 1, 10, 5, 0, 999999, tzinfo=UTC),
            dt.datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC),
            "bob",
        ),
    ],
    ids=["whole-seconds", "fractions", "takeover"],
)
def test_recorded_lease_equals_python_change_info(
    db: VersionedSQLAlchemy,
    Doc: Any,
    alice_leases: Callable[..., Any],
    acquired: dt.datetime,
    expires: dt.datetime,
    took_over_from: str | None,
) -> None:
    """change_info["lease"] built in SQL equals _Known.change_info(), also as JSONB text."""
    alice_leases(1)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {LEASE_TABLE} SET acquired_at = :a, expires_at = :e, "
                f"took_over_from = :o WHERE record_key = '[1]'"
            ),
            {"a": acquired, "e": expires, "o": took_over_from},
        )
    expected = _from_row(_lease_row(db, 1)).change_info()
    # Another session time zone must not change what is recorded.
    db.session.execute(sa.text("SET LOCAL TIME ZONE 'Asia/Kathmandu'"))
    doc = db.session.get(Doc, 1)
    with acting_as("alice"):
        cast(Any, doc).title = "saved"
        db.session.commit()
    value, text = _recorded(db, Doc, 1)
    assert value == expected
    assert text == _as_jsonb_text(db, expected)
    assert ("took_over_from" in value) is (took_over_from is not None)


def test_takeover_recorded_then_cleared(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """The check records took_over_from in history and clears it on the lease row."""
    alice_leases(1)
    doc = db.session.get(Doc, 1)
    with acting_as("bob"):
        cast(Any, doc).lease(force=True)  # commits: the next transaction does not know it
        cast(Any, doc).title = "bob's"
        db.session.commit()
    value, _ = _recorded(db, Doc, 1)
    assert value["user_id"] == "bob" and value["took_over_from"] == "alice"
    assert _lease_row(db, 1).took_over_from is None


def test_known_lease_not_patched_again(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any], statements: list[str]
) -> None:
    """A history row that already has change_info["lease"] keeps it (the check adds none)."""
    (lease,) = alice_leases(1)
    doc = db.session.get(Doc, 1)
    with acting_as("alice"):
        renewed = cast(Any, doc).renew_lease(lease.token, commit=False)
        cast(Any, doc).title = "known"
        statements.clear()
        db.session.flush()
        assert len(statements) == 2
        db.session.commit()
    value, _ = _recorded(db, Doc, 1)
    assert value["expires_at"] == renewed.expires_at.astimezone(UTC).isoformat()


def test_refused_flush_with_own_record_writes_nothing(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any], new_session: Any
) -> None:
    """A flush refused for a foreign lease writes no history, also for the holder's own record."""
    alice_leases(1)
    other = new_session()
    with acting_as("bob"):
        cast(Any, other.get(Doc, 2)).lease()
    docs = [db.session.get(Doc, i) for i in (1, 2)]
    with acting_as("alice"):
        for doc in docs:
            cast(Any, doc).title = "both"
        with pytest.raises(RecordLeasedError, match=r"Doc\(2\)"):
            db.session.flush()
    db.session.rollback()
    table = cast(Any, history_class(Doc)).__table__
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
        titles = conn.execute(sa.text("SELECT title FROM lease_doc ORDER BY id")).scalars().all()
    assert titles == ["t1", "t2", "t3"]


def test_bulk_after_release_records_no_lease(
    db: VersionedSQLAlchemy, Doc: Any, alice_leases: Callable[..., Any]
) -> None:
    """A bulk UPDATE after the lease was released records no lease of an earlier flush."""
    doc = db.session.get(Doc, 1)
    with acting_as("alice"):
        lease = cast(Any, doc).lease(commit=False)  # known to the flush below
        cast(Any, doc).title = "while leased"
        db.session.commit()
        cast(Any, doc).release_lease(lease.token)
        db.session.execute(sa.update(Doc).where(Doc.id == 1).values(title="after"))
        db.session.commit()
    assert _recorded(db, Doc, 1)[0] is None
    assert "lease" in cast(Any, doc).versions()[-2].change_info


@pytest.mark.parametrize("count", [1, 2], ids=["one-record", "two-records"])
def test_composite_uuid_key_recorded(
    db: VersionedSQLAlchemy, new_session: Any, statements: list[str], count: int
) -> None:
    """A (text, uuid) key travels typed: the check records the lease for each record."""

    class Sheet(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "lease_sheet"
        __chrononaut_leases__ = True
        region = sa.Column(sa.String(10), primary_key=True)
        uid = sa.Column(sa.Uuid, primary_key=True)
        title = sa.Column(sa.String(50), nullable=False, default="")

    db.create_all()
    keys = [("eu", uuid.uuid4()) for _ in range(count)]
    db.session.add_all([Sheet(region=r, uid=u) for r, u in keys])
    db.session.commit()
    other = new_session()
    with acting_as("alice"):
        for key in keys:
            cast(Any, other.get(Sheet, key)).lease()
    sheets = [db.session.get(Sheet, key) for key in keys]
    with acting_as("alice"):
        for sheet in sheets:
            cast(Any, sheet).title = "saved"
        statements.clear()
        db.session.flush()
        assert len([s for s in statements if LEASE_TABLE in s]) == 1
        db.session.commit()
    for sheet in sheets:
        assert cast(Any, sheet).versions()[-1].change_info["lease"]["user_id"] == "alice"
