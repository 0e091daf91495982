"""The ``chrononaut.retry`` logger never quotes SQL parameters (SPEC §2: hidden values)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chrononaut import Versioned, VersionedSQLAlchemy
from chrononaut.retry import retrying

HIDDEN = "hunter2-never-logged"


@pytest.fixture()
def Account(db: VersionedSQLAlchemy) -> type[Any]:
    """A versioned account with a hidden password column, row 1 committed."""

    class Account(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "retry_log_account"
        __chrononaut_hidden__ = ["password"]
        id = db.Column(db.Integer, primary_key=True)
        password = db.Column(db.String(50))

    db.create_all()
    db.session.add(Account(id=1, password="old"))
    db.session.commit()
    db.session.remove()
    return Account


@pytest.mark.parametrize("attempts", [1, 2])
def test_retry_lines_do_not_quote_parameters(
    db: VersionedSQLAlchemy,
    Account: Any,
    other: Session,
    caplog: pytest.LogCaptureFixture,
    attempts: int,
) -> None:
    """A serialization failure is logged by class and SQLSTATE, without the hidden value."""
    caplog.set_level(logging.DEBUG, logger="chrononaut.retry")
    session = db.session.session_factory()
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    try:
        first = True
        for attempt in retrying(session, attempts=attempts, backoff=0.001):
            with attempt:
                if not first:
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                account = session.get(Account, 1)
                assert account is not None
                if first:
                    first = False
                    cast(Any, other.get(Account, 1)).password = "changed"
                    other.commit()
                account.password = HIDDEN
                session.flush()
    except sa.exc.DBAPIError:
        assert attempts == 1
    finally:
        session.close()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "the retry logger said nothing"
    assert "40001" in text
    assert HIDDEN not in text and "parameters" not in text
