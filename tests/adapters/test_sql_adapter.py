"""SQL adapter on the real PostgreSQL, MariaDB and SQLite of this machine.

Timestamps are compared as instants: a naive value (MariaDB DATETIME, SQLite) is UTC,
the adapter's default ``naive_tz``. Every other value must come back with the same
type and an equal value.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from exnode.adapters.dialects import GenericDialect
from exnode.adapters.rowcodec import decode_batch, encode_batch
from exnode.adapters.sql import (
    APPLIED_TABLE,
    APPLYING_TABLE,
    ApplyError,
    SchemaMismatch,
    SqlAdapter,
    ensure_marker_tables,
    row_hash,
)
from exnode.node.base.config import ResourceSpec
from exnode.policies.changes import Change, ChangeBatch

UTC = dt.UTC
CST = dt.timezone(dt.timedelta(hours=8))
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


# ---- databases ------------------------------------------------------------------------------




@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bureau.db'}"


URL_FIXTURE = {"postgresql": "pg_url", "mariadb": "mariadb_url", "sqlite": "sqlite_url"}


def _engine(request: pytest.FixtureRequest, kind: str) -> Engine:
    engine = sa.create_engine(request.getfixturevalue(URL_FIXTURE[kind]))
    request.addfinalizer(engine.dispose)
    return engine


@pytest.fixture(params=list(URL_FIXTURE))
def db(request: pytest.FixtureRequest) -> tuple[str, Engine]:
    return request.param, _engine(request, request.param)


@pytest.fixture
def all_dbs(request: pytest.FixtureRequest) -> dict[str, Engine]:
    return {kind: _engine(request, kind) for kind in URL_FIXTURE}


# ---- the people table ------------------------------------------------------------------------

COLUMNS: dict[str, dict[str, str]] = {
    "postgresql": {"id": "integer PRIMARY KEY", "name": "varchar(100) NOT NULL",
                   "birth": "date", "updated_at": "timestamptz", "amount": "numeric(18,4)",
                   "active": "boolean", "photo": "bytea", "notes": "text",
                   "nick": "varchar(50)", "score": "double precision", "big": "bigint",
                   "opens": "time"},
    "mariadb": {"id": "INT PRIMARY KEY", "name": "VARCHAR(100) NOT NULL", "birth": "DATE",
                "updated_at": "DATETIME(6)", "amount": "DECIMAL(18,4)", "active": "BOOL",
                "photo": "BLOB", "notes": "LONGTEXT", "nick": "VARCHAR(50)",
                "score": "DOUBLE", "big": "BIGINT", "opens": "TIME(6)"},
    "sqlite": {"id": "INTEGER PRIMARY KEY", "name": "VARCHAR(100) NOT NULL",
               "birth": "DATE", "updated_at": "DATETIME", "amount": "DECIMAL(18,4)",
               "active": "BOOLEAN", "photo": "BLOB", "notes": "TEXT", "nick": "VARCHAR(50)",
               "score": "DOUBLE", "big": "BIGINT", "opens": "TIME"},
}
FIELDS = list(COLUMNS["postgresql"])


def make_people(engine: Engine, kind: str, name: str = "people", skip: tuple[str, ...] = (),
                primary_key: bool = True) -> None:
    cols = [f"{c} {t if primary_key else t.replace(' PRIMARY KEY', '')}"
            for c, t in COLUMNS[kind].items() if c not in skip]
    tail = " DEFAULT CHARSET=utf8mb4" if kind == "mariadb" else ""
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {name} ({', '.join(cols)}){tail}")


def sample_rows(n: int) -> list[dict[str, Any]]:
    """Edge values first, then ordinary rows."""
    rows: list[dict[str, Any]] = [
        dict(id=1, name="张三", birth=dt.date(1990, 2, 28),
             updated_at=dt.datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=CST),
             amount=Decimal("12.3400"), active=True, photo=bytes(range(256)),
             notes="共享交换长文本" * 150_000, nick=None, score=0.1, big=2**63 - 1,
             opens=dt.time(8, 30, 0, 123456)),
        dict(id=2, name="", birth=dt.date(1900, 1, 1),
             updated_at=dt.datetime(1970, 1, 1, tzinfo=UTC),
             amount=Decimal("-99999999999.9999"), active=False, photo=b"", notes="",
             nick="", score=-1e-300, big=-(2**63), opens=dt.time(0, 0)),
        dict(id=3, name="李四 O'Brien \"q\" \\ %s", birth=None, updated_at=None, amount=None,
             active=None, photo=None, notes=None, nick=None, score=None, big=None,
             opens=None),
    ]
    for i in range(4, n + 1):
        rows.append(dict(
            id=i, name=f"用户{i}", birth=dt.date(2000, 1, 1) + dt.timedelta(days=i),
            updated_at=dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=i,
                                                                          microseconds=i),
            amount=(Decimal(i) / 7).quantize(Decimal("0.0001")), active=i % 2 == 0,
            photo=bytes([i % 256]) * i, notes=f"备注 {i}", nick=None if i % 3 else f"n{i}",
            score=i / 3, big=i * 10**12, opens=dt.time(i % 24, i % 60)))
    return rows


def seed(engine: Engine, kind: str, rows: list[dict[str, Any]], name: str = "people") -> None:
    """Insert directly (not through the adapter): naive UTC where the column is naive."""
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    if kind != "postgresql":
        rows = [{k: (v.astimezone(UTC).replace(tzinfo=None)
                     if isinstance(v, dt.datetime) and v.tzinfo else v)
                 for k, v in r.items()} for r in rows]
    with engine.begin() as c:
        c.execute(table.insert(), rows)


def spec(**kw: Any) -> ResourceSpec:
    kw.setdefault("key", ["id"])
    if "query" not in kw:
        kw.setdefault("table", "people")
    return ResourceSpec(database="db", **kw)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return (a if a.tzinfo else a.replace(tzinfo=UTC)) \
            == (b if b.tzinfo else b.replace(tzinfo=UTC))
    return type(a) is type(b) and a == b


def assert_same_row(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for f in want:
        assert same(got[f], want[f]), f"{f}: {got[f]!r:.80} != {want[f]!r:.80}"


def count(engine: Engine, table: str = "people") -> int:
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()


# ---- reading ----------------------------------------------------------------------------------

def test_read_chunks_in_key_order_and_resume(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    rows = sample_rows(25)
    seed(engine, kind, rows)
    a = SqlAdapter(engine, "people", spec()).open()
    assert a.fields == FIELDS and a.key == ["id"]

    chunks = list(a.read_chunks(10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    got = [r for c in chunks for r in c]
    assert [r["id"] for r in got] == list(range(1, 26))
    for g, w in zip(got, rows, strict=True):
        assert_same_row(g, w)
    assert type(got[0]["active"]) is bool and type(got[0]["score"]) is float
    assert type(got[0]["opens"]) is dt.time and type(got[0]["amount"]) is Decimal
    assert got[0]["amount"] == Decimal("12.3400") and got[2]["name"] == rows[2]["name"]

    resumed = [r["id"] for c in a.read_chunks(10, after=(12,)) for r in c]
    assert resumed == list(range(13, 26))
    assert list(a.read_chunks(10, after=(25,))) == []
    assert [len(c) for c in a.read_chunks(5)] == [5] * 5  # no empty chunk at the end


def test_read_since_pages_through_ties(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    t0 = dt.datetime(2024, 5, 1, 10, tzinfo=UTC)
    t1, t2 = t0 + dt.timedelta(seconds=1), t0 + dt.timedelta(seconds=2)
    stamps = {1: t0, 2: t1, 3: t1, 4: t1, 5: t1, 6: t2, 7: t2, 8: None}
    rows = sample_rows(8)
    for r in rows:
        r["updated_at"] = stamps[r["id"]]
    seed(engine, kind, rows)
    a = SqlAdapter(engine, "people", spec()).open()

    seen: list[int] = []
    value, key = None, None
    for _ in range(10):
        page = a.read_since("updated_at", value, key, 2)
        if not page:
            break
        assert len(page) <= 2
        seen += [r["id"] for r in page]
        value, key = page[-1]["updated_at"], a.key_of(page[-1])
    assert seen == [1, 2, 3, 4, 5, 6, 7]  # each once, in (watermark, key) order; NULL never

    # No key: every row at the watermark again (>=), and the watermark may come with a
    # time zone even where the column has none.
    again = [r["id"] for r in a.read_since("updated_at", t1.astimezone(CST), None, 100)]
    assert again == [2, 3, 4, 5, 6, 7]
    after_4 = [r["id"] for r in a.read_since("updated_at", t1, (4,), 100)]
    assert after_4 == [5, 6, 7]
    with pytest.raises(SchemaMismatch, match="no column 'changed_at'"):
        a.read_since("changed_at", None, None, 10)


def test_fetch_by_keys(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    rows = sample_rows(2500)  # more keys than one IN list holds
    seed(engine, kind, rows)
    a = SqlAdapter(engine, "people", spec()).open()
    got = a.fetch([(1,), (3,), (999,), (5000,)])
    assert set(got) == {(1,), (3,), (999,)}
    assert_same_row(got[(1,)], rows[0])
    assert_same_row(got[(999,)], rows[998])
    assert len(a.fetch([(i,) for i in range(1, 2601)])) == 2500
    assert a.fetch([]) == {}


# ---- applying ---------------------------------------------------------------------------------

def upserts(rows: list[dict[str, Any]]) -> list[Change]:
    return [Change("upsert", (r["id"],), r) for r in rows]


def test_apply_upserts_deletes_once(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    rows = sample_rows(10)
    seed(engine, kind, rows)
    a = SqlAdapter(engine, "people", spec()).open()

    changed = dict(rows[2], name="王五", amount=Decimal("-0.0001"),
                   updated_at=dt.datetime(2025, 1, 1, 9, 30, tzinfo=CST))
    new = dict(sample_rows(11)[10], notes="新行")
    batch = ChangeBatch("people", [*upserts([changed, new]), Change("delete", (4,)),
                                   Change("delete", (999,))])
    assert a.apply(batch, "pkg-1", "bureau-a") == "applied"
    now = a.fetch([(3,), (4,), (11,)])
    assert set(now) == {(3,), (11,)}
    assert_same_row(now[(3,)], changed)
    assert_same_row(now[(11,)], new)
    assert count(engine) == 10
    assert a.applied("pkg-1") and not a.applied("pkg-2")

    before = a.checksum()
    other = ChangeBatch("people", [Change("delete", (1,)),
                                   *upserts([dict(rows[4], name="不该写入")])])
    assert a.apply(other, "pkg-1", "bureau-a") == "duplicate"
    assert a.checksum() == before and count(engine) == 10

    with engine.connect() as c:
        marker = c.execute(sa.text(f"SELECT origin, resource, row_count "
                                   f"FROM {APPLIED_TABLE}")).all()
        assert [tuple(m) for m in marker] == [("bureau-a", "people", 4)]
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {APPLYING_TABLE}")).scalar_one() == 0


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_concurrent_apply_of_one_package_writes_once(request: pytest.FixtureRequest,
                                                     kind: str) -> None:
    engine = _engine(request, kind)
    make_people(engine, kind)
    adapters = [SqlAdapter(engine, "people", spec()).open() for _ in range(4)]
    batch = ChangeBatch("people", upserts(sample_rows(3000)[3:]))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: a.apply(batch, "pkg-race", "b1"), adapters))
    assert sorted(results) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert count(engine) == 2997
    with engine.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {APPLIED_TABLE}")).scalar_one() == 1


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])  # SQLite ignores lengths
def test_refused_batch_rolls_back(request: pytest.FixtureRequest, kind: str) -> None:
    engine = _engine(request, kind)
    make_people(engine, kind)
    rows = sample_rows(6)
    a = SqlAdapter(engine, "people", spec()).open()
    batch = ChangeBatch("people", upserts([*rows[:5], dict(rows[5], name="长" * 101)]))
    with pytest.raises(ApplyError, match="package pkg-long was not applied") as err:
        a.apply(batch, "pkg-long", "b1")
    assert not err.value.transient
    assert count(engine) == 0 and not a.applied("pkg-long")
    with engine.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {APPLYING_TABLE}")).scalar_one() == 0


def test_apply_keeps_change_order(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    base = sample_rows(60)
    seed(engine, kind, base[59:60])  # id 60 exists
    a = SqlAdapter(engine, "people", spec()).open()
    r50, r51, r52, r60 = base[49], base[50], base[51], base[59]
    batch = ChangeBatch("people", [
        *upserts([r50]), Change("delete", (50,)),                      # gone again
        *upserts([dict(r51, name="x"), dict(r51, name="y")]),          # last one wins
        *upserts([r52]), Change("delete", (52,)), *upserts([dict(r52, name="back")]),
        Change("delete", (60,)), *upserts([dict(r60, name="z")]),
    ])
    assert a.apply(batch, "pkg-order", "b1") == "applied"
    got = a.fetch([(50,), (51,), (52,), (60,)])
    assert set(got) == {(51,), (52,), (60,)}
    assert (got[(51,)]["name"], got[(52,)]["name"], got[(60,)]["name"]) == ("y", "back", "z")


TRIGGERS = {
    "postgresql": [
        "CREATE FUNCTION log_change() RETURNS trigger AS $$ BEGIN "
        "IF NOT EXISTS (SELECT 1 FROM exnode_applying) THEN "
        "INSERT INTO change_log VALUES (NEW.id); END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER people_log AFTER INSERT OR UPDATE ON people "
        "FOR EACH ROW EXECUTE FUNCTION log_change()"],
    "mariadb": [
        f"CREATE TRIGGER people_log_{op} AFTER {op} ON people FOR EACH ROW BEGIN "
        "IF NOT EXISTS (SELECT 1 FROM exnode_applying) THEN "
        "INSERT INTO change_log VALUES (NEW.id); END IF; END" for op in ("INSERT", "UPDATE")],
    "sqlite": [
        f"CREATE TRIGGER people_log_{op} AFTER {op} ON people "
        "WHEN NOT EXISTS (SELECT 1 FROM exnode_applying) "
        "BEGIN INSERT INTO change_log VALUES (NEW.id); END" for op in ("INSERT", "UPDATE")],
}


def test_capture_triggers_do_not_see_the_applier(db: tuple[str, Engine]) -> None:
    """The contract with trigger capture: changes made by apply() are not logged."""
    kind, engine = db
    make_people(engine, kind)
    ensure_marker_tables(engine)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE change_log (id INTEGER)")
        for ddl in TRIGGERS[kind]:
            c.exec_driver_sql(ddl)
    rows = sample_rows(3)
    seed(engine, kind, rows[:1])                                   # a local change
    a = SqlAdapter(engine, "people", spec()).open()
    batch = ChangeBatch("people", upserts([dict(rows[0], name="远端"), rows[1]]))
    assert a.apply(batch, "pkg-trig", "center") == "applied"
    with engine.begin() as c:
        c.execute(sa.text("UPDATE people SET nick = 'local' WHERE id = 2"))  # local again
        logged = c.execute(sa.text("SELECT id FROM change_log ORDER BY id")).scalars().all()
    assert logged == [1, 2]
    assert a.fetch([(1,)])[(1,)]["name"] == "远端"


def test_schema_mismatch_missing_column_writes_nothing(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    make_people(engine, kind, "people_copy", skip=("nick",))
    rows = sample_rows(6)
    seed(engine, kind, rows[:3], "people_copy")
    a = SqlAdapter(engine, "people", spec(target_table="people_copy")).open()
    before = count(engine, "people_copy")
    batch = ChangeBatch("people", [Change("delete", (1,)), *upserts(rows[3:])])
    with pytest.raises(SchemaMismatch) as err:
        a.apply(batch, "pkg-bad", "b1")
    msg = str(err.value)
    assert "'people'" in msg and "'people_copy'" in msg and "'nick'" in msg
    assert "\n" not in msg
    assert count(engine, "people_copy") == before
    assert not a.applied("pkg-bad")


@pytest.mark.parametrize("field,value", [("big", "abc"), ("birth", dt.datetime(2024, 1, 1)),
                                         ("active", "yes"), ("name", 5),
                                         ("amount", "12.5"), ("photo", "not bytes")])
def test_schema_mismatch_incompatible_type_writes_nothing(
        db: tuple[str, Engine], field: str, value: Any) -> None:
    kind, engine = db
    make_people(engine, kind)
    rows = sample_rows(5)
    seed(engine, kind, rows[:2])
    a = SqlAdapter(engine, "people", spec()).open()
    before = a.checksum()
    bad = dict(rows[4], **{field: value})
    batch = ChangeBatch("people", [Change("delete", (1,)), *upserts([rows[2], bad])])
    with pytest.raises(SchemaMismatch, match=f"column '{field}' of table 'people'"):
        a.apply(batch, "pkg-type", "b1")
    assert a.checksum() == before
    assert not a.applied("pkg-type")


def test_schema_mismatch_when_opening(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    make_people(engine, kind, "people_nokey", primary_key=False)
    with pytest.raises(SchemaMismatch, match="resource 'r': table 'nope' does not exist"):
        SqlAdapter(engine, "r", spec(table="nope")).open()
    with pytest.raises(SchemaMismatch, match="table 'people' has no key field 'pid'"):
        SqlAdapter(engine, "r", spec(key=["pid"])).open()
    with pytest.raises(SchemaMismatch, match="table 'people' has no column 'ghost'"):
        SqlAdapter(engine, "r", spec(fields=["name", "ghost"])).open()
    # fields without the key still carry it, key first
    assert SqlAdapter(engine, "r", spec(fields=["name"])).open().fields == ["id", "name"]

    a = SqlAdapter(engine, "r", spec(target_table="people_nokey")).open()
    with pytest.raises(SchemaMismatch, match="no primary key or unique index on \\(id\\)"):
        a.apply(ChangeBatch("r", upserts(sample_rows(1))), "p", "b1")
    a = SqlAdapter(engine, "r", spec()).open()
    with pytest.raises(SchemaMismatch, match=r"column 'name' .* NOT NULL"):
        a.apply(ChangeBatch("r", [Change("upsert", (7,), {"id": 7, "nick": "x"})]), "p", "b")
    assert count(engine) == 0


def test_query_resource_is_read_only(db: tuple[str, Engine]) -> None:
    kind, engine = db
    make_people(engine, kind)
    seed(engine, kind, sample_rows(9))
    a = SqlAdapter(engine, "q", spec(query="SELECT id, name FROM people WHERE id <= 7;")).open()
    assert a.fields == ["id", "name"]
    chunks = list(a.read_chunks(3, after=(0,)))
    assert [[r["id"] for r in c] for c in chunks] == [[1, 2, 3], [4, 5, 6], [7]]
    assert chunks[1][0]["name"] == "用户4"
    assert set(a.fetch([(2,), (8,)])) == {(2,)}
    with pytest.raises(SchemaMismatch, match="cannot receive changes"):
        a.apply(ChangeBatch("q", upserts([{"id": 1, "name": "x"}])), "p", "b1")
    with pytest.raises(SchemaMismatch, match="the query has no key field 'pid'"):
        SqlAdapter(engine, "q", spec(query="SELECT id FROM people", key=["pid"])).open()


def test_composite_key_and_portable_statements(db: tuple[str, Engine]) -> None:
    kind, engine = db
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE readings (region VARCHAR(10) NOT NULL, seq INTEGER "
                          "NOT NULL, val VARCHAR(20), PRIMARY KEY (region, seq))")
    rows = [{"region": r, "seq": s, "val": f"{r}{s}"} for r in "abc" for s in range(1, 5)]
    seed(engine, kind, rows, "readings")
    a = SqlAdapter(engine, "readings", spec(table="readings", key=["region", "seq"])).open()
    keys = [a.key_of(r) for c in a.read_chunks(5) for r in c]
    assert keys == [(r["region"], r["seq"]) for r in rows]
    assert [a.key_of(r) for c in a.read_chunks(5, after=("b", 2)) for r in c] == keys[6:]
    assert set(a.fetch([("a", 1), ("c", 4), ("z", 1)])) == {("a", 1), ("c", 4)}
    batch = ChangeBatch("readings", [
        Change("delete", ("a", 1)), Change("delete", ("b", 2)),
        Change("upsert", ("d", 1), {"region": "d", "seq": 1, "val": "new"}),
        Change("upsert", ("c", 4), {"region": "c", "seq": 4, "val": "changed"})])
    assert a.apply(batch, "pkg-c", "b1") == "applied"
    now = {a.key_of(r): r["val"] for c in a.read_chunks(100) for r in c}
    assert len(now) == 11 and ("a", 1) not in now and ("b", 2) not in now
    assert now[("d", 1)] == "new" and now[("c", 4)] == "changed"
    assert dict(a.key_hashes()).keys() == now.keys()

    # The generic path (Oracle, SQL Server) is plain Core: run it on this database too.
    table = sa.Table("readings", sa.MetaData(), autoload_with=engine)
    cols = [table.c.region, table.c.seq]
    generic = GenericDialect()
    with engine.begin() as c:
        generic.upsert(c, table, ["region", "seq"], ["region", "seq", "val"],
                       [{"region": "d", "seq": 1, "val": "upd"},
                        {"region": "e", "seq": 9, "val": "ins"}])
        after = c.execute(sa.select(*cols).where(generic.keyset_after(cols, ["c", 3]))
                          .order_by(*cols)).all()
        found = c.execute(sa.select(table.c.val).where(
            generic.keys_in(cols, [("d", 1), ("e", 9), ("a", 2)]))
            .order_by(table.c.val)).scalars().all()
    assert [tuple(r) for r in after] == [("c", 4), ("d", 1), ("e", 9)]
    assert found == ["a2", "ins", "upd"]


# ---- across databases --------------------------------------------------------------------------

def test_cross_database_sync_and_checksums(all_dbs: dict[str, Engine]) -> None:
    for kind, engine in all_dbs.items():
        make_people(engine, kind)
    rows = sample_rows(40)
    seed(all_dbs["mariadb"], "mariadb", rows)
    ad = {kind: SqlAdapter(engine, "people", spec()).open() for kind, engine in all_dbs.items()}
    src = ad["mariadb"]

    for n, chunk in enumerate(src.read_chunks(7)):
        batch = ChangeBatch("people", [Change("upsert", src.key_of(r), r) for r in chunk],
                            initial=True)
        data = encode_batch(batch, src.fields)
        for kind in ("postgresql", "sqlite"):
            assert ad[kind].apply(decode_batch(data), f"pkg-{n}", "mariadb-bureau") == "applied"

    source_rows = [r for c in src.read_chunks(100) for r in c]
    for kind in ("postgresql", "sqlite"):
        got = [r for c in ad[kind].read_chunks(100) for r in c]
        assert len(got) == 40
        for g, w in zip(got, source_rows, strict=True):
            assert_same_row(g, w)
        for g, w in zip(got, rows, strict=True):
            assert_same_row(g, w)
    pg_first = ad["postgresql"].fetch([(1,)])[(1,)]["updated_at"]
    assert pg_first.tzinfo is not None and pg_first == rows[0]["updated_at"]

    sums = {kind: a.checksum() for kind, a in ad.items()}
    assert sums["mariadb"][0] == 40
    assert sums["mariadb"] == sums["postgresql"] == sums["sqlite"]

    with all_dbs["sqlite"].begin() as c:
        c.execute(sa.text("UPDATE people SET notes = 'changed' WHERE id = 2"))
    changed = ad["sqlite"].checksum()
    assert changed[0] == 40 and changed[1] != sums["mariadb"][1]
    theirs = dict(ad["sqlite"].key_hashes(chunk_rows=9))
    ours = dict(src.key_hashes())
    assert [k for k in ours if ours[k] != theirs.get(k)] == [(2,)]
    assert ad["postgresql"].checksum() == sums["mariadb"]


def test_exact_decimals_mariadb_to_postgresql(all_dbs: dict[str, Engine]) -> None:
    for kind in ("mariadb", "postgresql"):
        make_people(all_dbs[kind], kind)
    amounts = [Decimal("12345678901234.5678"), Decimal("-12345678901234.5678"),
               Decimal("0.0001"), Decimal("0.0000")]
    rows = [dict(r, amount=amt) for r, amt in zip(sample_rows(7)[3:], amounts, strict=True)]
    seed(all_dbs["mariadb"], "mariadb", rows)
    src = SqlAdapter(all_dbs["mariadb"], "people", spec()).open()
    dst = SqlAdapter(all_dbs["postgresql"], "people", spec()).open()
    chunk = next(src.read_chunks(10))
    data = encode_batch(ChangeBatch("people", upserts(chunk)), src.fields)
    assert dst.apply(decode_batch(data), "pkg-dec", "b1") == "applied"
    got = [r["amount"] for c in dst.read_chunks(10) for r in c]
    assert [str(x) for x in got] == [str(x) for x in amounts]
    assert src.checksum() == dst.checksum()


def test_pg_copy_path_50k(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(pg_url)
    try:
        make_people(engine, "postgresql")
        seed(engine, "postgresql", sample_rows(100))
        a = SqlAdapter(engine, "people", spec()).open()
        stamp = dt.datetime(2024, 6, 1, 12, tzinfo=CST)
        rows = [dict(id=i, name=f"居民{i}", birth=dt.date(1980, 1, 1), updated_at=stamp,
                     amount=Decimal(i).scaleb(-4), active=i % 2 == 1, photo=b"\x00\x01",
                     notes=None, nick="", score=i / 8, big=i << 32, opens=dt.time(9))
                 for i in range(1, 50_001)]
        caplog.set_level(logging.DEBUG, logger="exnode.adapters.dialects")
        started = time.monotonic()
        assert a.apply(ChangeBatch("people", upserts(rows)), "pkg-50k", "b1") == "applied"
        took = time.monotonic() - started
        assert any("COPY upsert of 50000 rows" in r.getMessage() for r in caplog.records)
        assert count(engine) == 50_000 and took < 30
        got = a.fetch([(1,), (77,), (50_000,)])
        assert_same_row(got[(1,)], rows[0])  # an existing row, updated
        assert_same_row(got[(77,)], rows[76])
        assert_same_row(got[(50_000,)], rows[-1])
        dels = ChangeBatch("people", [Change("delete", (i,)) for i in range(1, 20_001)])
        assert a.apply(dels, "pkg-50k-del", "b1") == "applied"
        assert count(engine) == 30_000
    finally:
        engine.dispose()


def test_row_hash_is_type_aware() -> None:
    h = [row_hash({"a": v}) for v in (1, 1.0, "1", True, Decimal(1), b"1", None, "")]
    assert len(set(h)) == len(h)
    assert row_hash({"a": Decimal("1.0")}) == row_hash({"a": Decimal("1.00")})
    assert row_hash({"a": Decimal("100")}) == row_hash({"a": Decimal("1E+2")})
    assert row_hash({"a": Decimal("0.00")}) == row_hash({"a": Decimal("-0")})
    assert row_hash({"a": Decimal("1.01")}) != row_hash({"a": Decimal("1.1")})
    naive = dt.datetime(2024, 1, 1, 0, 0)
    assert row_hash({"t": naive}) == row_hash({"t": dt.datetime(2024, 1, 1, 8, tzinfo=CST)})
    assert row_hash({"t": naive}) != row_hash({"t": dt.datetime(2024, 1, 1, 0, tzinfo=CST)})
    assert row_hash({"t": naive}, naive_tz=CST) == \
        row_hash({"t": dt.datetime(2024, 1, 1, 0, tzinfo=CST)})
    assert row_hash({"a": 1, "b": 2}) == row_hash({"b": 2, "a": 1})
    assert row_hash({"a": 1, "b": 2}) != row_hash({"a": 2, "b": 1})
    assert row_hash({"a": "x", "b": ""}) != row_hash({"a": "x", "b": None})
    assert row_hash({"ab": "c"}) != row_hash({"a": "bc"})


def test_checksum_counts_equal_rows(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    try:
        make_people(engine, "sqlite")
        a = SqlAdapter(engine, "q", spec(query="SELECT name FROM people", key=["name"])).open()
        assert a.checksum() == (0, bytes(16))
        seed(engine, "sqlite", [{"id": 1, "name": "同名"}, {"id": 2, "name": "同名"}])
        n, total = a.checksum()
        assert n == 2 and total != bytes(16)  # XOR would cancel the two equal rows
        one = int.from_bytes(a.row_hash({"name": "同名"}), "big")
        assert int.from_bytes(total, "big") == (2 * one) % (1 << 128)
    finally:
        engine.dispose()
