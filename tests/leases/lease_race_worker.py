"""A separate process that tries to take the edit lease of record 1.

Run as ``python lease_race_worker.py <database url> <user> <start at (epoch s)>``;
prints ``won`` or ``lost``. Plain SQLAlchemy (no Flask), through
``versioned_session``; the test module imports :class:`Page` to create the table.
"""

from __future__ import annotations

import sys
import time

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import RecordLeasedError, Versioned, acting_as, versioned_session


class Base(DeclarativeBase):
    """This worker's own metadata (with its own chrononaut_lease table)."""


class Page(Versioned, Base):
    """The contested record."""

    __tablename__ = "lease_race_page"
    __chrononaut_leases__ = True
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(default="")


def main(url: str, user: str, start_at: float) -> None:
    """Wait until ``start_at``, then try to lease Page 1 once."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    factory = versioned_session(sessionmaker(engine))
    with factory() as session:
        page = session.get(Page, 1)
        assert page is not None
        session.rollback()
        time.sleep(max(0.0, start_at - time.time()))
        try:
            with acting_as(user):
                page.lease()
        except RecordLeasedError:
            print("lost")
        else:
            print("won")
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
