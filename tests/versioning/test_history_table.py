"""SPEC §2 "Versioned models and history tables": the version column, the history
table's shape and naming, and the history class."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.dialects import postgresql

from chrononaut import ChrononautException, Versioned, VersionedSQLAlchemy, history_class


def _columns(db: VersionedSQLAlchemy, table: str, schema: str = "public") -> dict[str, Any]:
    """information_schema.columns rows of ``table``, by column name."""
    sql = sa.text(
        "SELECT column_name, data_type, is_nullable, column_default, datetime_precision "
        "FROM information_schema.columns WHERE table_schema = :s AND table_name = :t"
    )
    with db.engine.connect() as conn:
        return {r.column_name: r for r in conn.execute(sql, {"s": schema, "t": table})}


def _define(db: VersionedSQLAlchemy, namespace: dict[str, Any]) -> type[Any]:
    """Define a ``Versioned`` model named ``Bad`` from ``namespace`` (runs the metaclass fully)."""
    base: Any = db.Model
    return type(base)("Bad", (base, Versioned), dict(namespace))  # type: ignore[no-any-return]


def test_version_column_added(User: Any) -> None:
    """The mixin adds an Integer ``version`` column to the model's table."""
    column = User.__table__.c.version
    assert isinstance(column.type, sa.Integer)
    assert column.nullable is False


def test_version_column_not_null_in_database(db: VersionedSQLAlchemy, User: Any) -> None:
    """The created ``version`` column is NOT NULL in PostgreSQL."""
    assert _columns(db, "appuser")["version"].is_nullable == "NO"


def test_version_is_version_id_col(User: Any) -> None:
    """``version`` is the mapper's ``version_id_col``."""
    assert sa.inspect(User).version_id_col is User.__table__.c.version


def test_new_record_has_version_zero(make_user: Any) -> None:
    """A newly inserted record has ``version == 0``."""
    assert make_user().version == 0


def test_default_history_table_name(db: VersionedSQLAlchemy, User: Any) -> None:
    """The history table is ``<table>_history`` in the model's MetaData."""
    assert "appuser_history" in db.metadata.tables
    assert cast(Any, history_class(User)).__table__ is db.metadata.tables["appuser_history"]


def test_custom_history_table_name(db: VersionedSQLAlchemy) -> None:
    """``__chrononaut_tablename__`` names the history table."""

    class User(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "appuser"
        __chrononaut_tablename__ = "appuser_audit"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(80))

    assert cast(Any, history_class(User)).__table__.name == "appuser_audit"
    assert "appuser_history" not in db.metadata.tables
    db.create_all()
    assert set(_columns(db, "appuser_audit")) == {
        "id",
        "name",
        "version",
        "valid_from",
        "changed",
        "change_info",
    }


def test_history_table_created_by_create_all(db: VersionedSQLAlchemy, User: Any) -> None:
    """``create_all`` creates the history table in the database."""
    assert set(_columns(db, "appuser_history")) == {
        "id",
        "name",
        "email",
        "version",
        "valid_from",
        "changed",
        "change_info",
    }


def test_history_table_in_model_schema(db: VersionedSQLAlchemy) -> None:
    """A model in a schema gets its history table in the same schema."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS chron_other"))

    class Doc(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "doc"
        __table_args__ = {"schema": "chron_other"}
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(80))

    table = cast(Any, history_class(Doc)).__table__
    assert (table.schema, table.name) == ("chron_other", "doc_history")
    db.create_all()
    assert set(_columns(db, "doc_history", schema="chron_other")) == {
        "id",
        "title",
        "version",
        "valid_from",
        "changed",
        "change_info",
    }


def test_history_columns_exclude_hidden_untracked(User: Any) -> None:
    """The history table copies tracked columns only (no hidden/untracked columns)."""
    assert set(cast(Any, history_class(User)).__table__.c.keys()) == {
        "id",
        "name",
        "email",
        "version",
        "valid_from",
        "changed",
        "change_info",
    }


def test_history_columns_keep_types(User: Any) -> None:
    """Copied columns keep the original column types."""
    columns = cast(Any, history_class(User)).__table__.c
    assert isinstance(columns.id.type, sa.Integer)
    assert isinstance(columns.name.type, sa.String) and columns.name.type.length == 80
    assert isinstance(columns.email.type, sa.String) and columns.email.type.length == 255


def test_history_primary_key(User: Any) -> None:
    """The history primary key is the model's primary key plus ``version``."""
    pk = cast(Any, history_class(User)).__table__.primary_key.columns
    assert {c.name for c in pk} == {"id", "version"}


def test_history_generated_column_types(User: Any) -> None:
    """``version`` is Integer, ``changed`` timestamptz, ``change_info`` JSONB."""
    columns = cast(Any, history_class(User)).__table__.c
    assert isinstance(columns.version.type, sa.Integer)
    assert isinstance(columns.changed.type, sa.DateTime) and columns.changed.type.timezone
    assert isinstance(columns.change_info.type, postgresql.JSONB)


def test_history_generated_column_types_in_database(db: VersionedSQLAlchemy, User: Any) -> None:
    """In PostgreSQL, ``changed`` is timestamptz(6) and ``change_info`` is jsonb."""
    columns = _columns(db, "appuser_history")
    assert columns["version"].data_type == "integer"
    assert columns["changed"].data_type == "timestamp with time zone"
    assert columns["changed"].datetime_precision == 6
    assert columns["change_info"].data_type == "jsonb"


def test_generated_columns_carry_info(User: Any) -> None:
    """The generated history columns are marked in ``Column.info["chrononaut"]``."""
    columns = cast(Any, history_class(User)).__table__.c
    for name in ("version", "changed", "change_info"):
        assert "chrononaut" in columns[name].info, name


def test_history_columns_drop_constraints_and_defaults(db: VersionedSQLAlchemy) -> None:
    """Copied columns have no unique constraint, default, server default or NOT NULL."""

    class Thing(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "thing"
        id = db.Column(db.Integer, primary_key=True)
        code = db.Column(db.String(20), unique=True, nullable=False)
        status = db.Column(db.String(20), default="new", server_default="new", nullable=False)
        created = db.Column(db.DateTime(timezone=True), server_default=sa.func.now())

    table = cast(Any, history_class(Thing)).__table__
    for name in ("code", "status", "created"):
        column = table.c[name]
        assert not column.unique, name
        assert column.default is None, name
        assert column.server_default is None, name
        assert column.nullable, name
    assert not [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
    db.create_all()
    in_db = _columns(db, "thing_history")
    for name in ("code", "status", "created"):
        assert in_db[name].column_default is None, name
        assert in_db[name].is_nullable == "YES", name


def test_history_class_matches_mapper(User: Any) -> None:
    """``history_class(User)`` is ``User.__history_mapper__.class_``."""
    assert history_class(User) is User.__history_mapper__.class_


def test_history_class_maps_history_table(User: Any) -> None:
    """The history class is mapped to the history table."""
    assert sa.inspect(history_class(User)).local_table is cast(Any, history_class(User)).__table__


def test_alembic_autogenerate_sees_history_table(db: VersionedSQLAlchemy, User: Any) -> None:
    """Alembic autogenerate finds the history table in the model's MetaData."""
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE appuser_history"))
        diffs = compare_metadata(MigrationContext.configure(conn), db.metadata)
    added = [d[1].name for d in diffs if d[0] == "add_table"]
    assert added == ["appuser_history"]


def test_alembic_autogenerate_clean_after_create_all(db: VersionedSQLAlchemy, User: Any) -> None:
    """After ``create_all`` Alembic autogenerate finds no difference."""
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []


@pytest.mark.parametrize("attr", ["__chrononaut_hidden__", "__chrononaut_untracked__"])
def test_unknown_column_name_rejected(db: VersionedSQLAlchemy, attr: str) -> None:
    """An unknown name in hidden/untracked raises ``ChrononautException`` at class definition."""
    from chrononaut import ChrononautException

    namespace = {
        "__tablename__": "bad",
        "id": sa.Column(sa.Integer, primary_key=True),
        "name": sa.Column(sa.String(80)),
        attr: ["nosuchcolumn"],
    }
    with pytest.raises(ChrononautException, match="nosuchcolumn"):
        _define(db, namespace)


@pytest.mark.parametrize("attr", ["__chrononaut_hidden__", "__chrononaut_untracked__"])
def test_primary_key_name_rejected(db: VersionedSQLAlchemy, attr: str) -> None:
    """A primary-key column in hidden/untracked raises ``ChrononautException`` when defined."""
    from chrononaut import ChrononautException

    namespace = {
        "__tablename__": "bad",
        "id": sa.Column(sa.Integer, primary_key=True),
        "name": sa.Column(sa.String(80)),
        attr: ["id"],
    }
    with pytest.raises(ChrononautException, match=r"\bid\b"):
        _define(db, namespace)


def test_overlapping_names_rejected(db: VersionedSQLAlchemy) -> None:
    """A column both hidden and untracked raises ``ChrononautException`` at class definition."""
    from chrononaut import ChrononautException

    with pytest.raises(ChrononautException, match=r"\bname\b"):

        class Bad(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = "bad"
            __chrononaut_hidden__ = ["name"]
            __chrononaut_untracked__ = ["name"]
            id = db.Column(db.Integer, primary_key=True)
            name = db.Column(db.String(80))


def test_own_version_column_refused(db: VersionedSQLAlchemy) -> None:
    """A Versioned model that defines a ``version`` column of its own is refused."""
    from chrononaut import ChrononautException

    with pytest.raises(ChrononautException, match="version"):

        class Mine(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = "mine"
            id = db.Column(db.Integer, primary_key=True)
            version = db.Column(db.Integer)


@pytest.mark.parametrize("name", ["version", "valid_from"])
@pytest.mark.parametrize("style", ["db.Column", "mapped_column"])
def test_own_column_named_like_managed_under_other_key_refused(
    db: VersionedSQLAlchemy, name: str, style: str
) -> None:
    """A column *named* ``version``/``valid_from`` under another attribute key is
    refused with ChrononautException; later flushes of other models still work."""
    from sqlalchemy.orm import mapped_column

    from chrononaut import ChrononautException

    make = db.Column if style == "db.Column" else mapped_column
    with pytest.raises(ChrononautException, match=name):

        class Mine(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = f"mine_{name}"
            id = db.Column(db.Integer, primary_key=True)
            mine = make(name, db.Integer)

    class Fine(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = f"fine_{name}_{style.replace('.', '_')}"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(20))

    db.create_all()
    record = Fine(id=1, title="a")
    db.session.add(record)
    db.session.commit()
    record.title = "b"
    db.session.commit()
    assert [v.title for v in record.versions()] == ["a"]


def test_history_indexes_by_default(User: Any) -> None:
    """A base history table has the (key, changed), changed and legacy indexes, no GiST."""
    table = cast(Any, history_class(User)).__table__
    names = {index.name for index in table.indexes}
    assert names == {
        f"ix_{table.name}_changed",
        f"ix_{table.name}_ended",
        f"ix_{table.name}_legacy",
    }


def test_range_index_opt_in(db: VersionedSQLAlchemy) -> None:
    """``__chrononaut_range_index__ = True`` adds the GiST index over the range, created
    by ``create_all``."""

    class Ledger(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __chrononaut_range_index__ = True
        id = db.Column(db.Integer, primary_key=True)

    db.create_all()
    table = cast(Any, history_class(Ledger)).__table__
    found = sa.inspect(db.engine).get_indexes(table.name)
    assert f"ix_{table.name}_range" in {index["name"] for index in found}
    with db.engine.connect() as conn:
        method = conn.execute(
            sa.text(
                "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                "WHERE c.relname = :name"
            ),
            {"name": f"ix_{table.name}_range"},
        ).scalar()
    assert method == "gist"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_range_index_must_be_bool(db: VersionedSQLAlchemy, value: Any) -> None:
    """A ``__chrononaut_range_index__`` that is not a bool is refused at class definition."""
    with pytest.raises(ChrononautException, match="__chrononaut_range_index__"):

        class Ledger(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __chrononaut_range_index__ = value
            id = db.Column(db.Integer, primary_key=True)

        sa.orm.configure_mappers()


def test_range_index_autogenerate_clean(db: VersionedSQLAlchemy) -> None:
    """After ``create_all``, Alembic autogenerate finds nothing to change for a model
    with the GiST range index (its expression index compares equal)."""

    class Ledger(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __chrononaut_range_index__ = True
        id = db.Column(db.Integer, primary_key=True)
        amount = db.Column(db.Integer)

    db.create_all()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []


def test_range_index_on_subclass_refused(db: VersionedSQLAlchemy) -> None:
    """A subclass setting ``__chrononaut_range_index__`` is refused: only the root class's
    history table has the range."""

    class Asset(db.Model, Versioned):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "asset"}

    with pytest.raises(ChrononautException, match="set it on Asset"):

        class Building(Asset):
            __chrononaut_range_index__ = True
            id = db.Column(db.Integer, db.ForeignKey(Asset.id), primary_key=True)
            __mapper_args__ = {"polymorphic_identity": "building"}

        sa.orm.configure_mappers()


@pytest.mark.parametrize("configure_first", [False, True])
def test_untyped_foreign_key_to_a_later_table(
    db: VersionedSQLAlchemy, configure_first: bool
) -> None:
    """A foreign key without a type of its own, to a table defined after its class:
    the history copy takes the referenced column's type (create_all works, with
    or without the mappers configured first)."""

    class Player(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "fk_player"
        id = db.Column(db.Integer, primary_key=True)
        team_id = db.Column(db.ForeignKey("fk_team.id"))

    class Team(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "fk_team"
        id = db.Column(db.BigInteger, primary_key=True)

    if configure_first:
        sa.orm.configure_mappers()
    db.create_all()
    history = cast(Any, history_class(Player)).__table__
    assert isinstance(history.c.team_id.type, sa.BigInteger)
    db.session.add_all([Team(id=1), Team(id=2)])
    db.session.flush()
    player = Player(id=1, team_id=1)
    db.session.add(player)
    db.session.commit()
    player.team_id = 2
    db.session.commit()
    assert [h.team_id for h in player.versions()] == [1]


def test_own_version_id_col_refused(db: VersionedSQLAlchemy) -> None:
    """A model's own ``version_id_col`` in __mapper_args__ is refused at class
    definition (Versioned would replace it, leaving the model's counter unmaintained)."""
    from chrononaut import ChrononautException

    with pytest.raises(ChrononautException, match="version_id_col"):

        class Counted(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = "own_counter"
            id = db.Column(db.Integer, primary_key=True)
            rev = db.Column(db.Integer, nullable=False)
            __mapper_args__ = {"version_id_col": rev}


def test_concrete_inheritance_refused(db: VersionedSQLAlchemy) -> None:
    """A concrete-table subclass of a Versioned model is refused at class definition."""
    from chrononaut import ChrononautException

    class Employee(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "conc_employee"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(20))

    with pytest.raises(ChrononautException, match="concrete"):

        class Manager(Employee):
            __tablename__ = "conc_manager"
            id = db.Column(db.Integer, primary_key=True)
            name = db.Column(db.String(20))
            __mapper_args__ = {"concrete": True}


def test_abstract_concrete_base_refused() -> None:
    """Versioned with SQLAlchemy's AbstractConcreteBase is refused at class definition.

    In a process of its own: the refused class leaves a ``before_configured``
    listener of SQLAlchemy's on the global ``Mapper`` (AbstractConcreteBase's), which
    SQLAlchemy 2.0 then calls on every configuration of the process.
    """
    import subprocess
    import sys

    code = (
        "from sqlalchemy.ext.declarative import AbstractConcreteBase\n"
        "from sqlalchemy.orm import DeclarativeBase\n"
        "from chrononaut import ChrononautException, Versioned\n"
        "class Base(DeclarativeBase): pass\n"
        "try:\n"
        "    class Staff(Versioned, AbstractConcreteBase, Base): pass\n"
        "except ChrononautException as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "concrete" in done.stdout


@pytest.mark.parametrize("length", [56, 63])
def test_history_table_name_beyond_63_bytes_refused(db: VersionedSQLAlchemy, length: int) -> None:
    """A table whose ``<table>_history`` would pass PostgreSQL's 63-byte limit is
    refused with a pointer to ``__chrononaut_tablename__``, which fixes it."""
    from chrononaut import ChrononautException

    name = "t" * length
    with pytest.raises(ChrononautException, match="__chrononaut_tablename__"):

        class Long(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = name
            id = db.Column(db.Integer, primary_key=True)

    class Named(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "n" * length
        __chrononaut_tablename__ = "named_history"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String(10))

    db.create_all()
    record = Named(id=1, title="a")
    db.session.add(record)
    db.session.commit()
    record.title = "b"
    db.session.commit()
    assert [v.title for v in cast(Any, record).versions()] == ["a"]


def test_column_prefix_refused(db: VersionedSQLAlchemy) -> None:
    """``column_prefix`` would rename Chrononaut's own attributes: refused clearly."""
    from chrononaut import ChrononautException

    with pytest.raises(ChrononautException, match="column_prefix"):

        class Prefixed(db.Model, Versioned):  # type: ignore[name-defined,misc]
            __tablename__ = "prefixed"
            __mapper_args__ = {"column_prefix": "_"}
            id = db.Column(db.Integer, primary_key=True)


def test_single_table_subclass_history_class_has_parent_table(db: VersionedSQLAlchemy) -> None:
    """history_class(SingleTableSub).__table__ is the shared history table, as
    Sub.__table__ is the shared table."""

    class Pet(db.Model, Versioned):  # type: ignore[name-defined,misc]
        __tablename__ = "sti_pet_t"
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(10))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "pet"}

    class Dog(Pet):
        bark = db.Column(db.String(10), nullable=True)
        __mapper_args__ = {"polymorphic_identity": "dog"}

    assert cast(Any, history_class(Dog)).__table__ is cast(Any, history_class(Pet)).__table__
    assert cast(Any, history_class(Dog)).__table__.name == "sti_pet_t_history"
