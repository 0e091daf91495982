"""Import, prune and history on a model keyed by two columns."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from chrononaut import Versioned, VersionedSQLAlchemy
from chrononaut.maintenance._activity import import_activity
from chrononaut.maintenance._cli import history_command
from chrononaut.maintenance._retention import prune

from .test_activity import ACTIVITY_DDL


@pytest.fixture()
def Item(db: VersionedSQLAlchemy) -> type[Any]:
    """Items keyed by (tenant, number); item ("a", 1) changed three times."""

    class Item(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "item"
        tenant = db.Column(db.String(10), primary_key=True)
        number = db.Column(db.Integer, primary_key=True)
        label = db.Column(db.Text)

    db.create_all()
    items = [Item(tenant="a", number=1, label="l0"), Item(tenant="b", number=1, label="x")]
    db.session.add_all(items)
    db.session.commit()
    for n in range(1, 4):
        items[0].label = f"l{n}"
        db.session.commit()
    return Item


def test_prune_keeps_last_per_composite_key(db: VersionedSQLAlchemy, Item: type[Any]) -> None:
    """``keep_last`` counts per (tenant, number)."""
    prune(db.engine, [Item], keep_last=1, batch_size=1)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT tenant, number, version FROM item_history")).all()
    assert [tuple(r) for r in rows] == [("a", 1, 2)]


def test_history_command_takes_one_value_per_key_column(
    app: Flask, db: VersionedSQLAlchemy, Item: type[Any]
) -> None:
    """``history Item a 1`` finds the record by both key columns."""
    result = app.test_cli_runner().invoke(history_command, ["Item", "a", "1"])
    assert result.exit_code == 0, result.output
    assert "Item a, 1: current version 3" in result.stdout
    assert "label: 'l2' -> 'l3'" in result.stdout


def test_import_with_composite_key(db: VersionedSQLAlchemy, Item: type[Any]) -> None:
    """Activity keys with two columns are matched to the live row and history."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(ACTIVITY_DDL)
        conn.exec_driver_sql(
            """
            INSERT INTO chrononaut_activity (table_name, changed, version, key, data,
                                             user_info, extra_info)
            VALUES
             ('item', '2020-01-01 00:00:00+00', 0, '{"tenant": "b", "number": 1}',
              '{"tenant": "b", "number": 1, "label": "w"}', '{}', '{}'),
             ('item', '2020-02-01 00:00:00+00', 1, '{"tenant": "b", "number": 1}',
              '{"tenant": "b", "number": 1, "label": "x"}', '{}', '{}');
            """
        )
    try:
        summary = import_activity(db.engine, [Item])
        assert summary.keys == 1
        item = db.session.get(Item, ("b", 1))
        assert item is not None
        assert item.version == 1
        assert [(v.version, v.label) for v in item.versions()] == [(0, "w")]
    finally:
        db.session.remove()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE chrononaut_activity")
