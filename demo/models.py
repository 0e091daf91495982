"""The demo's data: users who log in, and customer accounts whose changes are versioned.

:class:`Account` shows the three kinds of columns a :class:`chrononaut.Versioned`
model can have:

- tracked (``name``, ``contact_email``, ``plan``, ``credit_limit``): copied into
  ``demo_account_history`` with every change;
- hidden (``api_key``): a change is recorded as *changed*, its value never is;
- untracked (``view_count``): changes write no history and keep ``version``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from chrononaut import Versioned, VersionedSQLAlchemy, acting_as, rationale

__all__ = [
    "DEMO_USERS",
    "PLANS",
    "Account",
    "DemoLogin",
    "User",
    "db",
    "new_api_key",
    "seed",
]

db = VersionedSQLAlchemy()

if TYPE_CHECKING:
    # Flask-SQLAlchemy builds ``db.Model`` at run time; type checkers need a
    # static declarative base with the same mapping behaviour.
    from sqlalchemy.orm import DeclarativeBase

    class _Model(DeclarativeBase):
        pass
else:
    _Model = db.Model

#: The plans an account can be on, in display order.
PLANS = ("free", "pro", "enterprise")


@dataclass(frozen=True)
class DemoLogin:
    """A demo user's credentials, printed when the demo starts."""

    username: str
    password: str
    display_name: str


#: The two people who edit the demo's records.
DEMO_USERS = (
    DemoLogin("alice", "wonderland", "Alice Liddell"),
    DemoLogin("bob", "builder", "Bob Builder"),
)


def new_api_key() -> str:
    """A fresh random API key (the demo's secret, hidden column)."""
    return "sk-" + secrets.token_hex(12)


class User(UserMixin, _Model):  # type: ignore[misc]  # Flask-Login is untyped
    """Someone who can log in; not versioned."""

    __tablename__ = "demo_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(40), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(80))
    password_hash: Mapped[str] = mapped_column(sa.String(256))

    def set_password(self, password: str) -> None:
        """Store a salted hash of ``password``."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """Whether ``password`` is this user's password."""
        return check_password_hash(self.password_hash, password)


class Account(_Model, Versioned):
    """A customer account; every tracked or hidden change is kept in history."""

    __tablename__ = "demo_account"
    __chrononaut_leases__ = True  # edit leases: demo/leases.py
    __chrononaut_hidden__ = ["api_key"]
    __chrononaut_untracked__ = ["view_count"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    contact_email: Mapped[str] = mapped_column(sa.String(200))
    plan: Mapped[str] = mapped_column(sa.String(20))
    credit_limit: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    api_key: Mapped[str] = mapped_column(sa.String(80))
    view_count: Mapped[int] = mapped_column(default=0, server_default="0")


#: The fields users edit, with their labels; all tracked except ``api_key`` (hidden).
EDITABLE_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("contact_email", "Contact e-mail"),
    ("plan", "Plan"),
    ("credit_limit", "Credit limit"),
    ("api_key", "API key"),
)

_SEED_ACCOUNTS = (
    ("Acme Rockets Ltd", "billing@acme.example", "pro", Decimal("5000.00")),
    ("Globex Corporation", "accounts@globex.example", "enterprise", Decimal("25000.00")),
    ("Initech", "finance@initech.example", "free", Decimal("0.00")),
)


def seed() -> bool:
    """Create the demo users and accounts when there are none; needs an app context.

    One account gets an edit by alice straight away, so its history page has
    something to show before anyone has logged in.

    :returns: whether anything was created.
    """
    if db.session.scalar(sa.select(sa.func.count()).select_from(User)):
        return False
    users = []
    for login in DEMO_USERS:
        user = User(username=login.username, display_name=login.display_name)
        user.set_password(login.password)
        users.append(user)
    db.session.add_all(users)
    accounts = [
        Account(
            name=name, contact_email=email, plan=plan, credit_limit=limit, api_key=new_api_key()
        )
        for name, email, plan, limit in _SEED_ACCOUNTS
    ]
    db.session.add_all(accounts)
    db.session.commit()

    globex = accounts[1]
    with acting_as(users[0].id), rationale("Annual credit review: limit raised"):
        globex.credit_limit = Decimal("30000.00")
        db.session.commit()
    return True
