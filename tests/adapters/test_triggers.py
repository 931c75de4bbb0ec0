"""Capture triggers on real PostgreSQL, MariaDB and SQLite: install, reinstall, remove,
what they record, and the names they refuse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exnode.adapters import triggers
from exnode.adapters.sql import SqlAdapter
from exnode.adapters.triggers import TriggerError
from exnode.node.base.config import ResourceSpec
from exnode.plugins.builtin.sync.capture import SqlCaptureState, TriggerCapture

MYSQL_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"





def _engine(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if kind == "sqlite":
        return sa.create_engine(f"sqlite:///{tmp_path / 'biz.db'}")
    if kind == "postgresql":
        return sa.create_engine(request.getfixturevalue("pg_url"))
    return sa.create_engine(request.getfixturevalue("mariadb_url"))


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    e = _engine(request.param, request, tmp_path)
    yield e
    e.dispose()


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    e = _engine("postgresql", request, tmp_path)
    yield e
    e.dispose()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[sa.Engine]:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'biz.db'}")
    yield e
    e.dispose()


def make_table(engine: sa.Engine, name: str = "items", schema: str | None = None) -> sa.Table:
    t = sa.Table(name, sa.MetaData(),
                 sa.Column("region", sa.String(20), primary_key=True),
                 sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("v", sa.Integer), schema=schema)
    t.create(engine)
    return t


def exec_(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as c:
        for s in statements:
            c.exec_driver_sql(s)


def changes(engine: sa.Engine, schema: str | None = None) -> list[tuple[str, str, list]]:
    t = triggers.changes_table(schema)
    with engine.connect() as c:
        return [(tbl, op, json.loads(k)) for tbl, op, k in
                c.execute(sa.select(t.c.tbl, t.c.op, t.c.key).order_by(t.c.id))]


def trigger_count(engine: sa.Engine, table: str) -> int:
    """Capture triggers on ``table`` as the catalog lists them."""
    with engine.connect() as c:
        if engine.dialect.name == "postgresql":
            q = "SELECT count(*) FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) " \
                "AND NOT tgisinternal"
        elif engine.dialect.name == "sqlite":
            q = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"
        else:
            q = "SELECT count(*) FROM information_schema.TRIGGERS " \
                "WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = :t"
        return int(c.execute(sa.text(q), {"t": table}).scalar_one())


def test_install_twice_is_one_install(engine: sa.Engine) -> None:
    make_table(engine)
    assert not triggers.installed(engine, "items")
    triggers.install(engine, "items", ["region", "n"])
    n = trigger_count(engine, "items")
    triggers.install(engine, "items", ["region", "n"])
    assert triggers.installed(engine, "items")
    assert trigger_count(engine, "items") == n == (1 if engine.dialect.name == "postgresql"
                                                   else 3)
    exec_(engine, "INSERT INTO items VALUES ('north', 1, 10)")
    assert changes(engine) == [("items", "I", ["north", 1])]  # recorded once, not twice


def test_what_the_triggers_record(engine: sa.Engine) -> None:
    make_table(engine)
    triggers.install(engine, "items", ["region", "n"])
    exec_(engine, "INSERT INTO items VALUES ('north', 1, 10)",
          "INSERT INTO items VALUES ('south', 2, 20)",
          "UPDATE items SET v = 11 WHERE n = 1",
          "UPDATE items SET n = 3 WHERE n = 2",  # key change
          "UPDATE items SET region = 'NORTH' WHERE n = 1",  # key change in case only
          "DELETE FROM items WHERE n = 3")
    assert changes(engine) == [
        ("items", "I", ["north", 1]), ("items", "I", ["south", 2]),
        ("items", "U", ["north", 1]),
        ("items", "D", ["south", 2]), ("items", "I", ["south", 3]),
        ("items", "D", ["north", 1]), ("items", "I", ["NORTH", 1]),
        ("items", "D", ["south", 3]),
    ]


def test_flagged_transactions_are_not_recorded(engine: sa.Engine) -> None:
    make_table(engine)
    triggers.install(engine, "items", ["region", "n"])
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO exnode_applying VALUES ('tok')")
        c.exec_driver_sql("INSERT INTO items VALUES ('east', 1, 1)")
        c.exec_driver_sql("DELETE FROM exnode_applying")
    assert changes(engine) == []
    exec_(engine, "UPDATE items SET v = 2")  # the flag is gone with its row
    assert changes(engine) == [("items", "U", ["east", 1])]


def test_remove_keeps_the_change_table_unless_asked(engine: sa.Engine) -> None:
    make_table(engine)
    make_table(engine, "other")
    triggers.install(engine, "items", ["region", "n"])
    triggers.install(engine, "other", ["region", "n"])
    exec_(engine, "INSERT INTO items VALUES ('a', 1, 1)", "INSERT INTO other VALUES ('b', 1, 1)")
    triggers.remove(engine, "items")
    assert not triggers.installed(engine, "items") and triggers.installed(engine, "other")
    assert trigger_count(engine, "items") == 0
    triggers.remove(engine, "items")  # again: nothing to do, no error
    exec_(engine, "INSERT INTO items VALUES ('a', 2, 1)")  # no longer recorded
    assert [c[0] for c in changes(engine)] == ["items", "other"]

    triggers.remove(engine, "items", drop_changes=True)  # other still uses the table
    assert changes(engine) == [("other", "I", ["b", 1])]
    triggers.remove(engine, "other", drop_changes=True)
    assert not sa.inspect(engine).has_table(triggers.CHANGES)
    exec_(engine, "INSERT INTO other VALUES ('b', 2, 1)")  # writes still work
    triggers.install(engine, "other", ["region", "n"])  # and it comes back
    exec_(engine, "INSERT INTO other VALUES ('b', 3, 1)")
    assert changes(engine) == [("other", "I", ["b", 3])]


def test_reinstall_follows_a_new_key(engine: sa.Engine) -> None:
    make_table(engine)
    triggers.install(engine, "items", ["n"])
    exec_(engine, "INSERT INTO items VALUES ('a', 1, 1)")
    triggers.install(engine, "items", ["region", "n"])
    exec_(engine, "INSERT INTO items VALUES ('a', 2, 1)")
    assert [c[2] for c in changes(engine)] == [[1], ["a", 2]]


@pytest.mark.parametrize("bad", ["bad-name", "items; DROP TABLE x", '"items"', "1items",
                                 "", "a" * 64, "名字"])
def test_refuses_names_that_are_not_plain_identifiers(sqlite: sa.Engine, bad: str) -> None:
    make_table(sqlite)
    for call in (lambda: triggers.install(sqlite, bad, ["n"]),
                 lambda: triggers.remove(sqlite, bad),
                 lambda: triggers.installed(sqlite, bad),
                 lambda: triggers.install(sqlite, "items", [bad]),
                 lambda: triggers.install(sqlite, "items", ["n"], schema=bad)):
        with pytest.raises(TriggerError, match="not a plain identifier"):
            call()
    assert trigger_count(sqlite, "items") == 0


def test_refuses_what_cannot_work(sqlite: sa.Engine) -> None:
    make_table(sqlite)
    with pytest.raises(TriggerError, match="does not exist"):
        triggers.install(sqlite, "nope", ["id"])
    with pytest.raises(TriggerError, match="not a column"):
        triggers.install(sqlite, "items", ["id"])
    with pytest.raises(TriggerError, match="at least one key"):
        triggers.install(sqlite, "items", [])
    blobs = sa.Table("blobs", sa.MetaData(), sa.Column("k", sa.LargeBinary, primary_key=True))
    blobs.create(sqlite)
    with pytest.raises(TriggerError, match="binary"):
        triggers.install(sqlite, "blobs", ["k"])
    with pytest.raises(TriggerError, match="attached"):
        triggers.install(sqlite, "items", ["n"], schema="aux")
    triggers.install(sqlite, "items", ["n"], schema="main")  # main is the default
    assert triggers.installed(sqlite, "items")


def test_postgresql_table_in_another_schema(pg: sa.Engine, tmp_path: Path) -> None:
    exec_(pg, "CREATE SCHEMA biz")
    make_table(pg, schema="biz")
    make_table(pg)  # public.items: a different table of the same name
    triggers.install(pg, "items", ["region", "n"], schema="biz")
    triggers.install(pg, "items", ["region", "n"])
    assert triggers.installed(pg, "items", schema="biz") and triggers.installed(pg, "items")
    exec_(pg, "INSERT INTO biz.items VALUES ('x', 1, 1)", "INSERT INTO items VALUES ('y', 2, 2)")
    # Bookkeeping stays in the default schema, next to the adapter's marker tables.
    assert changes(pg, "public") == [("biz.items", "I", ["x", 1]), ("items", "I", ["y", 2])]
    spec = ResourceSpec(database="biz", table="items", schema="biz", key=["region", "n"])
    src = SqlAdapter(pg, "r", spec).open()
    state = SqlCaptureState(sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}"))
    cap = TriggerCapture("r", ["region", "n"], src, state, pg, "items", "biz")
    b = cap.capture(100)
    assert [(c.op, c.key) for c in b.changes] == [("upsert", ("x", 1))]
    cap.close()
    triggers.remove(pg, "items", schema="biz")
    assert not triggers.installed(pg, "items", schema="biz") and triggers.installed(pg, "items")
