"""A separate process that increments a counter under ``record.lock()``.

Run as ``python lock_tally_worker.py <database url> <count> <user>``; the test
module imports :class:`Tally` to create the table. Plain SQLAlchemy (no Flask),
through ``versioned_session``.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chrononaut import Versioned, acting_as, versioned_session


class Base(DeclarativeBase):
    """This worker's own metadata."""


class Tally(Base, Versioned):
    """The shared counter."""

    __tablename__ = "lock_tally"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


def main(url: str, count: int, user: str) -> None:
    """Increment row 1 ``count`` times, each in its own locked transaction."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    factory = versioned_session(sessionmaker(engine))
    with factory() as session:
        tally = session.get(Tally, 1)
        assert tally is not None
        for _ in range(count):
            with acting_as(user), tally.lock():
                tally.n += 1
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
