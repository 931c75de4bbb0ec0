"""Capture strategies on real PostgreSQL, MariaDB and SQLite: every change is captured
exactly once across cycles, nothing exnode applied comes back, NOTIFY wakes capture."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exnode.adapters import triggers
from exnode.adapters.sql import SqlAdapter
from exnode.node.base.config import CaptureSpec, ResourceSpec
from exnode.node.kernel.state import make_engine
from exnode.plugins.builtin.sync.capture import (
    APPLIED_DELETE,
    CaptureError,
    IncrementalCapture,
    SnapshotCapture,
    SqlCaptureState,
    TriggerCapture,
    decode_key,
    encode_key,
    make_capture,
)
from exnode.policies.changes import Change, ChangeBatch

MYSQL_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"
T0 = datetime(2024, 5, 1, 8, 0, 0)


# --- fixtures -----------------------------------------------------------------------





@dataclass
class DB:
    name: str
    engine: sa.Engine  # the business database
    state: SqlCaptureState  # capture state in a state DB
    state_engine: sa.Engine


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    state_engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    if kind == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'biz.db'}")
    elif kind == "postgresql":
        engine = sa.create_engine(request.getfixturevalue("pg_url"))
        state_engine.dispose()
        state_engine = engine  # a PostgreSQL state DB: same database, own tables
    else:
        engine = sa.create_engine(request.getfixturevalue("mariadb_url"))
    yield DB(kind, engine, SqlCaptureState(state_engine), state_engine)
    engine.dispose()
    state_engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    yield from _open(request.param, request, tmp_path)


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    yield from _open(request.param, request, tmp_path)


@pytest.fixture
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    yield from _open("sqlite", request, tmp_path)


@pytest.fixture
def mariadb_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    yield from _open("mariadb", request, tmp_path)


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    yield from _open("postgresql", request, tmp_path)


ITEMS = sa.Table(
    "items", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(50)),
    sa.Column("qty", sa.Integer),
    sa.Column("updated_at", sa.DateTime),
)


def make_items(db: DB, n: int) -> None:
    ITEMS.create(db.engine)
    with db.engine.begin() as c:
        if n:
            c.execute(ITEMS.insert(), [{"id": i, "name": f"item {i}", "qty": i,
                                        "updated_at": T0} for i in range(1, n + 1)])


def adapter(db: DB, table: str = "items", key: tuple[str, ...] = ("id",)) -> SqlAdapter:
    spec = ResourceSpec(database="biz", table=table, key=list(key))
    return SqlAdapter(db.engine, "items", spec).open()


def commit(db: DB, strategy: Any, batch: ChangeBatch) -> None:
    """What the daemon does: the checkpoint goes into its own state-DB transaction."""
    with db.state_engine.begin() as conn:
        strategy.commit(batch.checkpoint, conn)


def ops(batch: ChangeBatch) -> list[tuple[str, tuple[Any, ...]]]:
    return sorted((c.op, c.key) for c in batch.changes)


def sql(db: DB, *statements: str) -> None:
    with db.engine.begin() as c:
        for s in statements:
            c.exec_driver_sql(s)


# --- keys as bytes ------------------------------------------------------------------


def test_key_encoding_round_trips_and_sorts_like_the_values() -> None:
    rnd = random.Random(7)
    ints = [0, 1, -1, 255, 256, -256, 2**63, -(2**63), 2**70, -(2**70)] + \
        [rnd.randint(-10**12, 10**12) for _ in range(200)]
    decs = [Decimal(x) for x in ("0", "1.5", "1.50", "-1.5", "-1.25", "-1.2", "10", "1E+3",
                                 "0.001", "-0.001", "123456789.123456789", "-99")] + \
        [Decimal(rnd.randint(-10**6, 10**6)) / Decimal(10 ** rnd.randint(0, 5))
         for _ in range(200)]
    strs = ["", "a", "a\x00", "a\x00b", "ab", "b", "中文", "Z"] + \
        ["".join(rnd.choice("ab\x00é中") for _ in range(rnd.randint(0, 5))) for _ in range(200)]
    floats = [0.0, -0.5, 0.5, 1e300, -1e300, 3.25, -3.25]
    stamps = [datetime(2024, 1, 1) + timedelta(seconds=rnd.randint(0, 10**8),
                                               microseconds=rnd.randint(0, 999999))
              for _ in range(100)]
    for values in (ints, decs, strs, floats, stamps):
        for v in values:
            assert decode_key(encode_key((v,))) == (v,)
        by_value = sorted(set(values))
        assert sorted(by_value, key=lambda v: encode_key((v,))) == by_value
    mixed = (None, True, 7, "x\x00y", b"\x00\x01", Decimal("-2.5"), 2.5, date(2024, 2, 29),
             datetime(2024, 2, 29, 1, 2, 3, 4), datetime(2024, 2, 29, 1, 2, tzinfo=UTC),
             uuid.UUID(int=5))
    assert decode_key(encode_key(mixed)) == mixed
    pairs = sorted({(rnd.randint(0, 3), rnd.choice("abc")) for _ in range(50)})
    assert sorted(pairs, key=encode_key) == pairs
    assert str(decode_key(encode_key((Decimal("1E+3"),)))[0]) == "1000"
    with pytest.raises(CaptureError):
        encode_key((object(),))


# --- snapshot -----------------------------------------------------------------------


def test_snapshot_captures_each_change_exactly_once(db: DB) -> None:
    make_items(db, 5)
    cap = SnapshotCapture("items", ["id"], adapter(db), db.state, chunk_rows=2)
    first = cap.capture(1000)
    assert first.initial
    assert ops(first) == [("upsert", (i,)) for i in range(1, 6)]
    assert cap.capture(1000).changes == first.changes  # nothing committed: same again
    commit(db, cap, first)
    empty = cap.capture(1000)
    assert len(empty) == 0 and not empty.initial
    commit(db, cap, empty)

    sql(db, "UPDATE items SET qty = 20 WHERE id = 2", "DELETE FROM items WHERE id = 3",
        "INSERT INTO items (id, name, qty) VALUES (6, 'item 6', 6)")
    b = cap.capture(1000)
    assert ops(b) == [("delete", (3,)), ("upsert", (2,)), ("upsert", (6,))]
    assert {c.key: c.row["qty"] for c in b.changes if c.row} == {(2,): 20, (6,): 6}
    assert ops(cap.capture(1000)) == ops(b)
    commit(db, cap, b)
    assert len(cap.capture(1000)) == 0

    sql(db, "DELETE FROM items")  # every stored key is gone
    gone = cap.capture(1000)
    assert ops(gone) == [("delete", (i,)) for i in (1, 2, 4, 5, 6)]
    commit(db, cap, gone)
    assert len(cap.capture(1000)) == 0


def test_snapshot_pass_resumes_across_small_batches(db: DB) -> None:
    make_items(db, 30)
    state = SqlCaptureState(db.state_engine, batch_rows=5)  # stored hashes paged by 5
    cap = SnapshotCapture("items", ["id"], adapter(db), state, chunk_rows=4)
    seen: list[tuple[str, tuple[Any, ...]]] = []
    for _ in range(20):
        b = cap.capture(7)
        assert len(b) <= 7
        seen += [(c.op, c.key) for c in b.changes]
        commit(db, cap, b)
        if not b.changes:
            break
        assert b.initial
    assert sorted(seen) == [("upsert", (i,)) for i in range(1, 31)]

    with db.engine.begin() as c:
        c.execute(ITEMS.delete().where(ITEMS.c.id.in_([1, 2, 15, 29, 30])))
        c.execute(ITEMS.update().where(ITEMS.c.id.in_([3, 10, 16, 28])).values(qty=-1))
        c.execute(ITEMS.insert(), [{"id": 40, "name": "new"}, {"id": 0, "name": "first"}])
    seen = []
    for _ in range(20):
        b = cap.capture(3)
        seen += [(c.op, c.key) for c in b.changes]
        commit(db, cap, b)
        if not b.changes:
            break
    assert sorted(seen) == sorted([("delete", (k,)) for k in (1, 2, 15, 29, 30)]
                                  + [("upsert", (k,)) for k in (0, 3, 10, 16, 28, 40)])


def test_snapshot_memory_stays_bounded(sqlite_db: DB) -> None:
    db = sqlite_db
    ITEMS.create(db.engine)
    n = 20_000
    with db.engine.begin() as c:
        c.execute(ITEMS.insert(), [{"id": i, "name": f"item number {i}", "qty": i,
                                    "updated_at": T0} for i in range(n)])
    src = adapter(db)
    state = SqlCaptureState(db.state_engine, batch_rows=1000)
    cap = SnapshotCapture("items", ["id"], src, state, chunk_rows=500)
    for _ in range(10):
        b = cap.capture(5000)
        assert len(b) <= 5000
        commit(db, cap, b)  # the empty one too: it ends the pass
        if not b.changes:
            break
    sql(db, f"UPDATE items SET qty = -1 WHERE id = {n - 7}")

    tracemalloc.start()
    try:
        b = cap.capture(5000)
        _, pass_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = [r for chunk in src.read_chunks(500) for r in chunk]
        _, table_size = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ops(b) == [("upsert", (n - 7,))] and len(whole) == n
    assert pass_peak < table_size / 4, (pass_peak, table_size)


def test_snapshot_when_the_database_sorts_keys_otherwise(mariadb_db: DB) -> None:
    # MariaDB's utf8mb4_general_ci sorts 'a' < 'B'; the stored keys sort 'B' < 'a'.
    db = mariadb_db
    codes = sa.Table("codes", sa.MetaData(),
                     sa.Column("code", sa.String(20), primary_key=True),
                     sa.Column("v", sa.Integer))
    codes.create(db.engine)
    names = ["b", "A", "c", "B2", "a1", "Z", "y", "aa", "AB", "Zz", "m", "M1"]
    with db.engine.begin() as c:
        c.execute(codes.insert(), [{"code": n, "v": i} for i, n in enumerate(names)])
    src = adapter(db, "codes", ("code",))
    in_db_order = [r["code"] for chunk in src.read_chunks(100) for r in chunk]
    assert in_db_order != sorted(in_db_order)  # the point of this test
    cap = SnapshotCapture("codes", ["code"], src, db.state, chunk_rows=3)
    b = cap.capture(1000)
    assert sorted(k for _, (k,) in ops(b)) == sorted(names)
    commit(db, cap, b)
    assert len(cap.capture(1000)) == 0  # no spurious deletes or upserts

    sql(db, "DELETE FROM codes WHERE code = 'a1'", "UPDATE codes SET v = 99 WHERE code = 'Z'",
        "INSERT INTO codes VALUES ('B1', 1)")
    seen = []
    for _ in range(10):
        b = cap.capture(2)
        seen += ops(b)
        commit(db, cap, b)
        if not b.changes:
            break
    assert sorted(seen) == [("delete", ("a1",)), ("upsert", ("B1",)), ("upsert", ("Z",))]


def test_snapshot_skips_what_exnode_applied(sqlite_db: DB) -> None:
    db = sqlite_db
    make_items(db, 4)
    src = adapter(db)
    applied: dict[tuple[Any, ...], bytes] = {}
    cap = SnapshotCapture("items", ["id"], src, db.state, applied_hashes=applied)
    commit(db, cap, cap.capture(100))

    row2 = {"id": 2, "name": "from center", "qty": 200, "updated_at": T0}
    src.apply(ChangeBatch("items", [Change("upsert", (2,), row2), Change("delete", (3,))]),
              "pkg-1", "center")
    applied[(2,)] = src.row_hash(row2)
    applied[(3,)] = APPLIED_DELETE
    # The same state seen without the lookup: these would be captured.
    plain = SnapshotCapture("items", ["id"], src, db.state)
    assert ops(plain.capture(100)) == [("delete", (3,)), ("upsert", (2,))]
    b = cap.capture(100)
    assert len(b) == 0
    commit(db, cap, b)  # the stored hashes move on anyway
    assert len(plain.capture(100)) == 0

    sql(db, "UPDATE items SET qty = 201 WHERE id = 2")  # a local change after the apply
    assert ops(cap.capture(100)) == [("upsert", (2,))]


# --- incremental --------------------------------------------------------------------


def test_incremental_captures_each_change_exactly_once(db: DB) -> None:
    make_items(db, 3)
    cap = IncrementalCapture("items", ["id"], "updated_at", adapter(db), db.state)
    b = cap.capture(100)
    assert b.initial and ops(b) == [("upsert", (1,)), ("upsert", (2,)), ("upsert", (3,))]
    commit(db, cap, b)
    assert cap.watermark() == (T0, (3,))
    empty = cap.capture(100)
    assert len(empty) == 0 and not empty.initial
    commit(db, cap, empty)
    assert cap.watermark() == (T0, (3,))

    t1 = T0 + timedelta(minutes=1)
    with db.engine.begin() as c:
        c.execute(ITEMS.update().where(ITEMS.c.id == 2).values(qty=22, updated_at=t1))
        c.execute(ITEMS.insert().values(id=4, name="four", qty=4, updated_at=t1))
        c.execute(ITEMS.insert().values(id=5, name="no stamp", qty=5))  # NULL: never
    b = cap.capture(100)
    assert [(c.key, c.row["qty"]) for c in b.changes if c.row] == [((2,), 22), ((4,), 4)]
    assert ops(cap.capture(100)) == ops(b)
    commit(db, cap, b)
    assert len(cap.capture(100)) == 0


def test_incremental_ties_on_the_watermark(db: DB) -> None:
    make_items(db, 7)  # all share updated_at = T0
    cap = IncrementalCapture("items", ["id"], "updated_at", adapter(db), db.state)
    seen: list[int] = []
    sizes = []
    for _ in range(10):
        b = cap.capture(3)
        sizes.append(len(b))
        seen += [c.key[0] for c in b.changes]
        commit(db, cap, b)
        if not b.changes:
            break
    assert seen == list(range(1, 8)) and sizes == [3, 3, 1, 0]
    with db.engine.begin() as c:  # same stamp, later key: still found
        c.execute(ITEMS.insert().values(id=8, name="eight", qty=8, updated_at=T0))
    assert ops(cap.capture(3)) == [("upsert", (8,))]


def test_incremental_needs_its_column_among_the_fields(sqlite_db: DB) -> None:
    make_items(sqlite_db, 2)
    spec = ResourceSpec(database="biz", table="items", key=["id"], fields=["id", "name"])
    src = SqlAdapter(sqlite_db.engine, "items", spec).open()
    cap = IncrementalCapture("items", ["id"], "updated_at", src, sqlite_db.state)
    with pytest.raises(CaptureError, match="watermark column 'updated_at'"):
        cap.capture(10)


def test_incremental_skips_what_exnode_applied(sqlite_db: DB) -> None:
    db = sqlite_db
    make_items(db, 2)
    src = adapter(db)
    applied: dict[tuple[Any, ...], bytes] = {}
    cap = IncrementalCapture("items", ["id"], "updated_at", src, db.state,
                             applied_hashes=lambda keys: {k: applied[k] for k in keys
                                                          if k in applied})
    commit(db, cap, cap.capture(100))
    t1 = T0 + timedelta(hours=1)
    row = {"id": 1, "name": "center", "qty": 10, "updated_at": t1}
    src.apply(ChangeBatch("items", [Change("upsert", (1,), row)]), "pkg-2", "center")
    applied[(1,)] = src.row_hash(row)
    b = cap.capture(100)
    assert len(b) == 0 and b.checkpoint  # skipped, but the watermark moves past it
    commit(db, cap, b)
    assert cap.watermark() == (t1, (1,))


# --- trigger ------------------------------------------------------------------------


def trigger_capture(db: DB, src: SqlAdapter | None = None) -> TriggerCapture:
    triggers.install(db.engine, "items", ["id"])
    return TriggerCapture("items", ["id"], src or adapter(db), db.state, db.engine, "items")


def change_rows(db: DB) -> int:
    with db.engine.connect() as c:
        return int(c.exec_driver_sql("SELECT count(*) FROM exnode_changes").scalar_one())


def test_trigger_captures_each_change_exactly_once(db: DB) -> None:
    make_items(db, 3)
    cap = trigger_capture(db)
    try:
        assert len(cap.capture(100)) == 0  # rows from before the install are not changes
        sql(db, "INSERT INTO items (id, name, qty) VALUES (4, 'four', 4)",
            "UPDATE items SET qty = 11 WHERE id = 1", "DELETE FROM items WHERE id = 2")
        b = cap.capture(100)
        assert [(c.op, c.key) for c in b.changes] == [("upsert", (4,)), ("upsert", (1,)),
                                                      ("delete", (2,))]
        assert b.changes[1].row is not None and b.changes[1].row["qty"] == 11
        assert [(c.op, c.key) for c in cap.capture(100).changes] == \
            [(c.op, c.key) for c in b.changes]  # not committed: the same again
        commit(db, cap, b)
        assert change_rows(db) == 3
        assert len(cap.capture(100)) == 0
        assert change_rows(db) == 0  # consumed rows purged
        sql(db, "UPDATE items SET qty = 12 WHERE id = 1")
        b = cap.capture(100)
        assert ops(b) == [("upsert", (1,))]
        commit(db, cap, b)
        assert cap.purge() == 1 and cap.purge() == 0
        assert len(cap.capture(100)) == 0
    finally:
        cap.close()


def test_trigger_batches_split_by_limit(db: DB) -> None:
    make_items(db, 0)
    cap = trigger_capture(db)
    with db.engine.begin() as c:
        c.execute(ITEMS.insert(), [{"id": i, "name": str(i)} for i in range(1, 11)])
    seen: list[int] = []
    for _ in range(6):
        b = cap.capture(4)
        assert len(b) <= 4
        seen += [c.key[0] for c in b.changes]
        commit(db, cap, b)
        if not b.changes:
            break
    assert seen == list(range(1, 11))
    cap.close()


def test_trigger_collapses_changes_of_one_key(db: DB) -> None:
    make_items(db, 4)
    cap = trigger_capture(db)
    sql(db, *[f"UPDATE items SET qty = {q} WHERE id = 1" for q in (5, 6, 7, 8)],
        "INSERT INTO items (id, name) VALUES (9, 'brief')", "DELETE FROM items WHERE id = 9",
        "UPDATE items SET qty = 40 WHERE id = 4")
    # Row 4 then disappears without a change row (as if exnode deleted it): the
    # recorded update must turn into a delete.
    with db.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO exnode_applying VALUES ('x')")
        c.exec_driver_sql("DELETE FROM items WHERE id = 4")
        c.exec_driver_sql("DELETE FROM exnode_applying")
    b = cap.capture(100)
    assert [(c.op, c.key) for c in b.changes] == [("upsert", (1,)), ("delete", (9,)),
                                                  ("delete", (4,))]
    assert b.changes[0].row is not None and b.changes[0].row["qty"] == 8
    commit(db, cap, b)
    assert len(cap.capture(100)) == 0
    cap.close()


def test_trigger_key_change_is_a_delete_and_an_insert(db: DB) -> None:
    make_items(db, 2)
    cap = trigger_capture(db)
    sql(db, "UPDATE items SET id = 100 WHERE id = 1")
    b = cap.capture(100)
    assert [(c.op, c.key) for c in b.changes] == [("delete", (1,)), ("upsert", (100,))]
    cap.close()


def test_trigger_keys_of_other_types(db: DB) -> None:
    # Dates and decimals travel through the change table as JSON text; the batch must
    # carry them with their column types again.
    prices = sa.Table("prices", sa.MetaData(),
                      sa.Column("day", sa.Date, primary_key=True),
                      sa.Column("amount", sa.Numeric(10, 2), primary_key=True),
                      sa.Column("note", sa.String(20)))
    prices.create(db.engine)
    d1, d2 = date(2024, 5, 1), date(2024, 5, 2)
    with db.engine.begin() as c:
        c.execute(prices.insert(), [{"day": d1, "amount": Decimal("1.50"), "note": "a"},
                                    {"day": d2, "amount": Decimal("7.25"), "note": "b"}])
    triggers.install(db.engine, "prices", ["day", "amount"])
    src = adapter(db, "prices", ("day", "amount"))
    cap = TriggerCapture("prices", ["day", "amount"], src, db.state, db.engine, "prices")
    with db.engine.begin() as c:
        c.execute(prices.update().where(prices.c.day == d1).values(note="changed"))
        c.execute(prices.delete().where(prices.c.day == d2))
    b = cap.capture(100)
    assert [(c.op, c.key) for c in b.changes] == [("upsert", (d1, Decimal("1.50"))),
                                                  ("delete", (d2, Decimal("7.25")))]
    assert all(isinstance(v, date) and not isinstance(v, datetime)
               for v in (b.changes[0].key[0], b.changes[1].key[0]))
    assert isinstance(b.changes[1].key[1], Decimal)
    assert b.changes[0].row is not None and b.changes[0].row["note"] == "changed"
    cap.close()


def test_trigger_ignores_what_exnode_applies(db: DB) -> None:
    make_items(db, 3)
    src = adapter(db)
    cap = trigger_capture(db, src)
    # The real applier: it holds an exnode_applying row while it writes.
    row = {"id": 1, "name": "from center", "qty": 100, "updated_at": T0}
    assert src.apply(ChangeBatch("items", [Change("upsert", (1,), row),
                                           Change("upsert", (7,), {**row, "id": 7}),
                                           Change("delete", (2,))]),
                     "pkg-9", "center") == "applied"
    assert len(cap.capture(100)) == 0 and change_rows(db) == 0
    # A transaction of our own holding the flag row: not captured either.
    with db.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO exnode_applying VALUES ('t1')")
        c.exec_driver_sql("UPDATE items SET qty = 300 WHERE id = 3")
        c.exec_driver_sql("DELETE FROM exnode_applying")
    assert len(cap.capture(100)) == 0
    # The same change without the flag is captured.
    sql(db, "UPDATE items SET qty = 301 WHERE id = 3")
    assert ops(cap.capture(100)) == [("upsert", (3,))]
    cap.close()


def _short_lock_waits(db: DB, conn: sa.Connection) -> None:
    """Make a blocked statement fail in seconds instead of hanging the test."""
    if db.name == "mariadb":
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 3")
    else:
        conn.exec_driver_sql("SET lock_timeout = '3s'")


def test_trigger_flag_blocks_nobody(server_db: DB) -> None:
    # Writers go on while exnode applies, the applier goes on while writers have open
    # transactions, and only the applier's own writes are left out.
    db = server_db
    make_items(db, 3)
    cap = trigger_capture(db)
    biz, applier, other = db.engine.connect(), db.engine.connect(), db.engine.connect()
    try:
        for c in (biz, applier, other):
            _short_lock_waits(db, c)
        biz.exec_driver_sql("UPDATE items SET qty = 30 WHERE id = 3")  # stays open
        applier.exec_driver_sql("INSERT INTO exnode_applying VALUES ('t2')")
        applier.exec_driver_sql("UPDATE items SET qty = 10 WHERE id = 1")
        other.exec_driver_sql("UPDATE items SET qty = 20 WHERE id = 2")
        other.commit()
        applier.exec_driver_sql("DELETE FROM exnode_applying")
        applier.commit()
        biz.commit()
    finally:
        for c in (biz, applier, other):
            c.close()
    assert ops(cap.capture(100)) == [("upsert", (2,)), ("upsert", (3,))]
    cap.close()


def test_trigger_change_committed_late_is_not_lost(server_db: DB) -> None:
    # A takes a change id first but commits after B: a high-water mark would skip it.
    db = server_db
    make_items(db, 0)
    cap = trigger_capture(db)
    a = db.engine.connect()
    try:
        a.exec_driver_sql("INSERT INTO items (id, name) VALUES (1, 'slow')")
        sql(db, "INSERT INTO items (id, name) VALUES (2, 'fast')")
        b = cap.capture(100)
        assert ops(b) == [("upsert", (2,))]
        commit(db, cap, b)
        a.commit()
    finally:
        a.close()
    b = cap.capture(100)
    assert ops(b) == [("upsert", (1,))]
    commit(db, cap, b)
    assert len(cap.capture(100)) == 0
    cap.close()


def test_trigger_capture_needs_its_triggers(sqlite_db: DB) -> None:
    make_items(sqlite_db, 1)
    cap = TriggerCapture("items", ["id"], adapter(sqlite_db), sqlite_db.state,
                         sqlite_db.engine, "items")
    with pytest.raises(CaptureError, match="not installed"):
        cap.capture(10)


def test_postgresql_notify_wakes_wait(pg_db: DB) -> None:
    db = pg_db
    make_items(db, 1)
    other = sa.Table("other", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    other.create(db.engine)
    triggers.install(db.engine, "other", ["id"])
    cap = trigger_capture(db)
    try:
        assert len(cap.capture(100)) == 0  # also starts listening
        assert cap.wait(0.2) is False  # nothing happened: times out
        sql(db, "INSERT INTO other VALUES (1)")
        assert cap.wait(0.3) is False  # another table's notice does not wake us

        def write() -> None:
            time.sleep(0.3)
            sql(db, "UPDATE items SET qty = 5 WHERE id = 1")

        t = threading.Thread(target=write)
        start = time.monotonic()
        t.start()
        woke = cap.wait(30)
        elapsed = time.monotonic() - start
        t.join()
        assert woke is True and elapsed < 20
        assert ops(cap.capture(100)) == [("upsert", (1,))]
        # A change made while nobody waits is queued and wakes the next wait at once.
        sql(db, "UPDATE items SET qty = 6 WHERE id = 1", "UPDATE items SET qty = 7 WHERE id = 1")
        assert cap.wait(30) is True
        assert cap.wait(0.1) is False  # queued notices of one burst were drained
    finally:
        cap.close()


def test_wait_without_notify_sleeps(sqlite_db: DB) -> None:
    make_items(sqlite_db, 1)
    cap = trigger_capture(sqlite_db)
    start = time.monotonic()
    assert cap.wait(0.05) is False
    assert time.monotonic() - start >= 0.04


def test_make_capture_builds_the_configured_strategy(sqlite_db: DB) -> None:
    db = sqlite_db
    make_items(db, 1)
    src = adapter(db)

    def spec(**cap: Any) -> ResourceSpec:
        return ResourceSpec(database="biz", table="items", key=["id"],
                            capture=CaptureSpec(**cap))

    assert isinstance(make_capture("r", spec(), src, db.state), SnapshotCapture)
    inc = make_capture("r", spec(strategy="incremental", column="updated_at"), src, db.state)
    assert isinstance(inc, IncrementalCapture) and inc.column == "updated_at"
    trg = make_capture("r", spec(strategy="trigger"), src, db.state)
    assert isinstance(trg, TriggerCapture) and trg.engine is db.engine
