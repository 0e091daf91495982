"""Naive instants and range boundaries after bulk statements (SPEC §2 time arguments)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa

from chrononaut import Versioned, VersionedSQLAlchemy, as_of


def test_boundaries_after_bulk_update(db: VersionedSQLAlchemy) -> None:
    """At a bulk UPDATE's ``changed`` the new version holds; a µs before, the old one;
    a naive instant is taken as UTC."""

    class Gauge(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "int_gauge"
        id = sa.Column(sa.Integer, primary_key=True)
        level = sa.Column(sa.Integer)

    db.create_all()
    db.session.add(Gauge(id=1, level=1))
    db.session.commit()
    db.session.execute(sa.update(Gauge).where(Gauge.id == 1).values(level=2))
    db.session.commit()
    gauge = cast(Any, db.session.get(Gauge, 1))
    changed = gauge.versions()[0].changed
    assert gauge.valid_from == changed
    before = changed - dt.timedelta(microseconds=1)
    naive = before.astimezone(dt.timezone.utc).replace(tzinfo=None)
    for at, level in ((changed, 2), (before, 1), (naive, 1)):
        Past = as_of(Gauge, at)
        assert db.session.scalars(sa.select(Past.level)).one() == level
        assert gauge.version_at(at).level == level
    assert gauge.version_at(changed) is gauge
