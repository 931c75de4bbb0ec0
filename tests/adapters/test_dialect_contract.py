"""The SQL dialect contract, run over every registered dialect that has a server on this
machine, and over the generic path (no dialect registered: the registry's fallback) on
SQLite and PostgreSQL.

Each case drives a real table through :class:`SqlAdapter` with the awkward types: a
composite key, decimals, timestamps with and without time zone, bytes, unicode text and
NULLs; upserts that insert and update (PostgreSQL's COPY path included), deletes, keyset
paging, key lists longer than one statement holds, column kinds, and capture triggers
where the dialect has them. A server that does not answer fails the case: these
servers run on this machine.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.mssql.base import MSDialect
from sqlalchemy.dialects.oracle.base import OracleDialect
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import DefaultDialect

from exnode.adapters import triggers
from exnode.adapters.dialects import (
    Dialect,
    DialectError,
    DialectRegistry,
    GenericDialect,
    MySQLDialect,
    PostgreSQLDialect,
    SQLiteDialect,
    builtin_dialects,
    default_registry,
)
from exnode.adapters.sql import SqlAdapter, row_hash
from exnode.adapters.triggers import TriggerError
from exnode.node.base.config import ResourceSpec
from exnode.node.base.errors import ExnodeError
from exnode.policies.changes import Change, ChangeBatch

UTC = dt.UTC
CST = dt.timezone(dt.timedelta(hours=8))

#: The server each dialect is tested on: the fixture giving its URL (tests/conftest.py
#: for PostgreSQL and MariaDB, a temporary file here for SQLite).
SERVERS: dict[str, str] = {"postgresql": "pg_url", "mysql": "mariadb_url",
                           "sqlite": "sqlite_url"}
#: Servers the generic path runs on as well.
GENERIC_ON = ("sqlite", "postgresql")

#: Every operation of the Dialect contract.
OPERATIONS = ("matches", "prepare_session", "column_kind", "fix_reflected_type",
              "typed_literal", "keyset_after", "keys_in", "keys_per_statement", "upsert",
              "write_rows", "delete_keys", "trigger_schema", "home_schema",
              "install_triggers", "remove_triggers", "triggers_installed", "any_triggers",
              "remove_bookkeeping")

TABLE = "contract"
KEY = ["region", "seq"]
DDL = {
    "postgresql": "CREATE TABLE contract (region varchar(20) NOT NULL, seq integer NOT NULL, "
                  "amount numeric(18,4), at_naive timestamp, at_tz timestamptz, "
                  "payload bytea, note text, flag boolean, score double precision, "
                  "day date, PRIMARY KEY (region, seq))",
    "mysql": "CREATE TABLE contract (region VARCHAR(20) NOT NULL, seq INT NOT NULL, "
             "amount DECIMAL(18,4), at_naive DATETIME(6), at_tz TIMESTAMP(6) NULL, "
             "payload BLOB, note TEXT, flag BOOL, score DOUBLE, day DATE, "
             "PRIMARY KEY (region, seq)) DEFAULT CHARSET=utf8mb4",
    "sqlite": "CREATE TABLE contract (region VARCHAR(20) NOT NULL, seq INTEGER NOT NULL, "
              "amount DECIMAL(18,4), at_naive DATETIME, at_tz DATETIME, payload BLOB, "
              "note TEXT, flag BOOLEAN, score DOUBLE, day DATE, PRIMARY KEY (region, seq))",
}
FIELDS = ["region", "seq", "amount", "at_naive", "at_tz", "payload", "note", "flag", "score",
          "day"]
# Distinct under every collation here (MariaDB's utf8mb4_unicode_ci folds case).
REGIONS = ["east", "west", "华北", "华南", "o'brien", "z\\q %s", "ümlaut"]
N = 1200  # more than one statement's worth of rows, and PostgreSQL's COPY threshold


# ---- cases ------------------------------------------------------------------------------------

@dataclass
class Case:
    dialect: str  # the name of the dialect the registry must pick
    server: str  # which DDL: postgresql, mysql or sqlite
    engine: Engine
    registry: DialectRegistry

    @property
    def d(self) -> Dialect:
        return self.registry.for_dialect(self.engine.dialect)

    def adapter(self) -> SqlAdapter:
        spec = ResourceSpec(database="db", table=TABLE, key=KEY)
        return SqlAdapter(self.engine, TABLE, spec, dialects=self.registry).open()


def _cases() -> list[Any]:
    out = [pytest.param((d.name, d.name), id=d.name) for d in default_registry
           if d.name in SERVERS]
    out += [pytest.param((GenericDialect.name, s), id=f"generic-on-{s}") for s in GENERIC_ON]
    return out


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'contract.db'}"


@pytest.fixture(params=_cases())
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    name, server = request.param
    url = request.getfixturevalue(SERVERS[server])  # fails, not skips, when down
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as e:
        engine.dispose()
        pytest.fail(f"the {server} server of this machine does not answer ({url}): {e}")
    registry = default_registry if name != GenericDialect.name else DialectRegistry()
    with engine.begin() as c:
        c.exec_driver_sql(DDL[server])
    yield Case(name, server, engine, registry)
    engine.dispose()


# ---- rows -------------------------------------------------------------------------------------

BASE = dt.datetime(2024, 3, 1, 8, 0, 0)


def make_row(i: int, version: int = 0) -> dict[str, Any]:
    """Row ``i`` (version 1 changes every non-key value, NULLs included)."""
    j = i + 7 * version
    naive = BASE + dt.timedelta(minutes=i // 7, microseconds=(i // 7) * 11)  # ties of 7
    at_naive: Any = naive
    if i % 7 == 3:  # the same instant, with a time zone: stored as UTC wall time
        at_naive = naive.replace(tzinfo=UTC).astimezone(CST)
    at_tz: Any = dt.datetime(2024, 6, 1, 12, tzinfo=CST) + dt.timedelta(seconds=j,
                                                                        microseconds=j)
    if j % 5 == 1:  # naive into a zone-aware column: read in naive_tz (UTC)
        at_tz = at_tz.astimezone(UTC).replace(tzinfo=None)
    amounts = [Decimal("-99999999999.9999"), Decimal("0.0001"), Decimal("0.0000")]
    row: dict[str, Any] = {
        "region": REGIONS[i % len(REGIONS)], "seq": i // len(REGIONS),
        "amount": amounts[i] if i < len(amounts) and not version
        else (Decimal(j * 7919 % 10**8).scaleb(-4) * (-1 if j % 4 == 0 else 1)),
        "at_naive": at_naive, "at_tz": at_tz,
        "payload": bytes(range(256)) if i == 0 else bytes([j % 256]) * (j % 40),
        "note": f"共享交换 😀 O'Brien \"q\" \\ %s 第{j}行" if j % 6 else "",
        "flag": j % 3 == 0, "score": j / 3 if j % 8 else -1e-300,
        "day": dt.date(1999, 12, 31) + dt.timedelta(days=j),
    }
    for n, name in enumerate(FIELDS[2:]):  # NULLs in every nullable column
        if (j + n) % 11 == 0:
            row[name] = None
    return row


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["region"], row["seq"])


def upserts(rows: list[dict[str, Any]]) -> list[Change]:
    return [Change("upsert", key(r), r) for r in rows]


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type; timestamps as instants (naive ones in UTC)."""
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return (a if a.tzinfo else a.replace(tzinfo=UTC)) \
            == (b if b.tzinfo else b.replace(tzinfo=UTC))
    return type(a) is type(b) and a == b


def assert_rows(got: dict[tuple[Any, ...], dict[str, Any]],
                want: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    assert got.keys() == want.keys()
    for k, w in want.items():
        for f in FIELDS:
            assert same(got[k][f], w.get(f)), f"{k} {f}: {got[k][f]!r:.80} != {w.get(f)!r:.80}"


def checksum_of(rows: list[dict[str, Any]]) -> tuple[int, bytes]:
    total = sum(int.from_bytes(row_hash(r, FIELDS), "big") for r in rows)
    return len(rows), (total % (1 << 128)).to_bytes(16, "big")


def count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(sa.table(TABLE)))
                   .scalar_one())


def reflected(engine: Engine) -> sa.Table:
    return sa.Table(TABLE, sa.MetaData(), autoload_with=engine)


# ---- the contract -----------------------------------------------------------------------------

def test_the_registry_picks_the_dialect_and_its_column_kinds(case: Case) -> None:
    a = case.adapter()
    assert a.dialect is case.d and a.dialect.name == case.dialect
    assert a.fields == FIELDS
    zoned = case.server == "postgresql"  # elsewhere both columns are naive
    want = {"region": ("str", False), "seq": ("int", False), "amount": ("decimal", False),
            "at_naive": ("datetime", False), "at_tz": ("datetime", zoned),
            "payload": ("bytes", False), "note": ("str", False), "flag": ("bool", False),
            "score": ("float", False), "day": ("date", False)}
    table = reflected(case.engine)
    for col in table.c:
        case.d.fix_reflected_type(col)
        assert case.d.column_kind(col.type) == want[col.key], col.key
        if isinstance(col.type, sa.Float):
            assert not col.type.asdecimal, "floats must read as floats"
    with case.engine.connect() as c:
        case.d.prepare_session(c)
        case.d.prepare_session(c)  # again on the same connection: harmless
        if case.dialect == "mysql":
            assert c.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+00:00"


def test_upsert_insert_update_and_delete(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exnode.adapters.dialects")
    a = case.adapter()
    step = case.d.keys_per_statement(len(KEY))
    model = {key(r): r for r in (make_row(i) for i in range(N))}

    # 1. insert N rows (PostgreSQL: COPY; elsewhere several statements)
    assert a.apply(ChangeBatch(TABLE, upserts(list(model.values()))), "p1", "b1") == "applied"
    assert count(case.engine) == N
    assert_rows(a.fetch(list(model)), model)
    copied = any("COPY upsert" in r.getMessage() for r in caplog.records)
    assert copied == (case.dialect == "postgresql")  # COPY from PG_COPY_MIN_ROWS rows on

    # 2. update 1000 rows (every value changes, NULLs both ways) and insert 100 more
    changed = [make_row(i, version=1) for i in range(1000)]
    new = [make_row(i) for i in range(N, N + 100)]
    assert a.apply(ChangeBatch(TABLE, upserts(changed + new)), "p2", "b1") == "applied"
    model.update({key(r): r for r in changed + new})
    assert count(case.engine) == len(model)

    # 3. partial rows update only what they carry; key-only rows insert or keep; deletes
    #    of more keys than one statement holds, some of which do not exist
    rows = [make_row(i) for i in range(N + 100)]
    partial = [{"region": r["region"], "seq": r["seq"], "note": f"改 {i}"}
               for i, r in enumerate(rows[:30])]
    keys_only = [{"region": r["region"], "seq": r["seq"]} for r in rows[700:703]]
    keys_only += [{"region": "新区", "seq": 9000}, {"region": "east", "seq": 9001}]
    gone = [key(r) for r in rows[100:100 + step + 100]]
    missing = [("nowhere", n) for n in range(10)]
    batch = ChangeBatch(TABLE, [*upserts(partial), *upserts(keys_only),
                                *[Change("delete", k) for k in gone + missing]])
    assert a.apply(batch, "p3", "b1") == "applied"
    for p in partial:
        model[key(p)] = dict(model[key(p)], note=p["note"])
    for r in keys_only:
        model.setdefault(key(r), dict(r))
    for k in gone:
        del model[k]

    assert count(case.engine) == len(model)
    asked = list(model) + gone + missing
    assert len(asked) > 2 * step
    assert_rows(a.fetch(asked), model)  # several IN lists
    assert_rows({a.key_of(r): r for c in a.read_chunks(250) for r in c}, model)
    assert a.checksum() == checksum_of(list(model.values()))
    assert a.apply(batch, "p3", "b1") == "duplicate"


def test_keyset_paging_follows_the_databases_order(case: Case) -> None:
    a = case.adapter()
    assert a.apply(ChangeBatch(TABLE, upserts([make_row(i) for i in range(N)])),
                   "seed", "b1") == "applied"
    t = reflected(case.engine)
    with case.engine.connect() as c:
        by_key = [tuple(r) for r in c.execute(sa.select(t.c.region, t.c.seq)
                                              .order_by(t.c.region, t.c.seq))]
        by_watermark = [tuple(r) for r in c.execute(
            sa.select(t.c.region, t.c.seq).where(t.c.at_naive.is_not(None))
            .order_by(t.c.at_naive, t.c.region, t.c.seq))]
    assert len(by_key) == N

    chunks = list(a.read_chunks(97))
    assert [a.key_of(r) for c in chunks for r in c] == by_key
    assert [len(c) for c in chunks][:-1] == [97] * (len(chunks) - 1)
    assert [a.key_of(r) for c in a.read_chunks(100, after=by_key[499]) for r in c] \
        == by_key[500:]
    assert list(a.read_chunks(10, after=by_key[-1])) == []

    # (watermark, key) pages through ties of seven rows; NULL watermarks never come
    seen: list[tuple[Any, ...]] = []
    value, after = None, None
    while page := a.read_since("at_naive", value, after, 37):
        seen += [a.key_of(r) for r in page]
        value, after = page[-1]["at_naive"], a.key_of(page[-1])
    assert seen == by_watermark
    # no key: from the first row at the watermark on (>=), ties included
    stamps = {a.key_of(r): r["at_naive"] for c in a.read_chunks(500) for r in c}
    middle = stamps[by_watermark[300]]
    again = [a.key_of(r) for r in a.read_since("at_naive", middle, None, 10_000)]
    assert again == [k for k in by_watermark if stamps[k] >= middle]
    assert by_watermark[300] in again and len(again) < len(by_watermark) - 290


def test_key_lists_are_bounded_per_statement(case: Case) -> None:
    a = case.adapter()
    rows = [make_row(i) for i in range(N)]
    assert a.apply(ChangeBatch(TABLE, upserts(rows)), "seed", "b1") == "applied"
    step = case.d.keys_per_statement(len(KEY))
    assert 1 <= step < N and case.d.keys_per_statement(1) >= step
    t = reflected(case.engine)
    cols = [t.c.region, t.c.seq]
    keys = [key(r) for r in rows]
    with case.engine.connect() as c:
        case.d.prepare_session(c)
        # the most one statement may hold, composite and single-column
        assert c.execute(sa.select(sa.func.count()).select_from(t).where(
            case.d.keys_in(cols, keys[:step]))).scalar_one() == step
        one = sorted({k[1] for k in keys})[:case.d.keys_per_statement(1)]
        assert c.execute(sa.select(sa.func.count(sa.distinct(t.c.seq))).where(
            case.d.keys_in([t.c.seq], [(s,) for s in one]))).scalar_one() == len(one)
        lit = case.d.typed_literal(t.c.at_naive, dt.datetime(2030, 1, 1))
        assert c.execute(sa.select(sa.func.count()).select_from(t)
                         .where(t.c.at_naive < lit)).scalar_one() > 0
    assert len(a.fetch([*keys, ("none", 0)])) == N
    with case.engine.begin() as c:
        case.d.prepare_session(c)
        case.d.delete_keys(c, t, KEY, keys[: 2 * step + 3])
    assert count(case.engine) == N - 2 * step - 3


def changes(case: Case) -> list[tuple[str, str, list[Any]]]:
    t = triggers.changes_table(triggers.home_schema(case.engine, dialects=case.registry))
    with case.engine.connect() as c:
        return [(tbl, op, json.loads(k)) for tbl, op, k in
                c.execute(sa.select(t.c.tbl, t.c.op, t.c.key).order_by(t.c.id))]


def test_capture_triggers(case: Case) -> None:
    reg = case.registry
    if not case.d.supports_triggers:
        with pytest.raises(TriggerError, match="does not support"):
            triggers.install(case.engine, TABLE, KEY, dialects=reg)
        assert not triggers.installed(case.engine, TABLE, dialects=reg)
        triggers.remove(case.engine, TABLE, drop_changes=True, dialects=reg)  # no error
        return

    assert not triggers.installed(case.engine, TABLE, dialects=reg)
    triggers.install(case.engine, TABLE, KEY, dialects=reg)
    triggers.install(case.engine, TABLE, KEY, dialects=reg)  # replaces, does not add
    assert triggers.installed(case.engine, TABLE, dialects=reg)

    t = reflected(case.engine)
    where = sa.and_(t.c.region == "华北", t.c.seq == 9001)
    with case.engine.begin() as c:
        c.execute(t.insert().values(region="华北", seq=9001, note="本地", payload=b"\x00"))
        c.execute(t.update().where(where).values(note="本地修改", amount=None))
        c.execute(t.update().where(where).values(seq=9002))  # a key change
        c.execute(t.delete().where(t.c.seq == 9002))
    recorded = [(TABLE, "I", ["华北", 9001]), (TABLE, "U", ["华北", 9001]),
                (TABLE, "D", ["华北", 9001]), (TABLE, "I", ["华北", 9002]),
                (TABLE, "D", ["华北", 9002])]
    assert changes(case) == recorded

    # what exnode applies itself is not captured (and sent back)
    a = case.adapter()
    rows = [make_row(i) for i in range(N)]
    assert a.apply(ChangeBatch(TABLE, [*upserts(rows), Change("delete", key(rows[5]))]),
                   "p-trig", "center") == "applied"
    assert count(case.engine) == N - 1 and changes(case) == recorded
    with case.engine.begin() as c:
        c.execute(t.update().where(t.c.seq == 0, t.c.region == "east").values(note="x"))
    assert changes(case)[-1] == (TABLE, "U", ["east", 0])

    triggers.remove(case.engine, TABLE, dialects=reg)
    assert not triggers.installed(case.engine, TABLE, dialects=reg)
    triggers.remove(case.engine, TABLE, drop_changes=True, dialects=reg)
    home = triggers.home_schema(case.engine, dialects=reg)
    assert not sa.inspect(case.engine).has_table(triggers.CHANGES, schema=home)
    with case.engine.begin() as c:  # writes still work without the triggers
        c.execute(t.delete().where(t.c.seq == 0))


def test_every_builtin_dialect_has_a_server_here() -> None:
    names = [d.name for d in builtin_dialects()]
    assert set(names) <= set(SERVERS), "give the new dialect a server in SERVERS"
    assert [c.values[0][0] for c in _cases()].count(GenericDialect.name) == len(GENERIC_ON)


# ---- the registry (no database) ------------------------------------------------------------

def test_a_duplicate_name_is_refused() -> None:
    reg = DialectRegistry([PostgreSQLDialect()])

    class Other(SQLiteDialect):
        name = "postgresql"

    with pytest.raises(DialectError, match="'postgresql' is already registered") as err:
        reg.register(Other())
    assert isinstance(err.value, ExnodeError)
    with pytest.raises(DialectError, match="already registered"):
        reg.register(PostgreSQLDialect())
    with pytest.raises(DialectError, match="'generic' is already registered"):
        reg.register(GenericDialect())  # the fallback's name is taken too
    with pytest.raises(DialectError, match="not a Dialect"):
        reg.register("sqlite")  # type: ignore[arg-type]
    with pytest.raises(DialectError):
        DialectRegistry([*builtin_dialects(), MySQLDialect()])
    assert reg.names() == ["postgresql"]


def test_unknown_sqlalchemy_dialects_take_the_generic_path() -> None:
    for sa_dialect in (MSDialect(), OracleDialect(), DefaultDialect()):
        d = default_registry.for_dialect(sa_dialect)
        assert d is default_registry.fallback and type(d) is GenericDialect
        assert not d.matches(sa_dialect) and not d.supports_triggers
    # the generic dialect is the base class under its own name
    assert all(getattr(GenericDialect, op) is getattr(Dialect, op) for op in OPERATIONS)
    assert DialectRegistry().for_dialect(sa.create_engine("sqlite://").dialect).name \
        == "generic"


def test_lookup_order_and_names() -> None:
    engines = {u: sa.create_engine(u).dialect for u in (
        "sqlite://", "postgresql+psycopg://u@h/d", "mysql+pymysql://u@h/d",
        "mariadb+pymysql://u@h/d")}
    picked = [default_registry.for_dialect(d).name for d in engines.values()]
    assert picked == ["sqlite", "postgresql", "mysql", "mysql"]
    assert default_registry.names() == ["postgresql", "mysql", "sqlite"]
    assert "generic" in default_registry and "oracle" not in default_registry
    assert default_registry.get("mysql").name == "mysql"
    with pytest.raises(DialectError, match="no SQL dialect 'oracle'"):
        default_registry.get("oracle")

    class Tuned(SQLiteDialect):
        name = "sqlite-tuned"

    first = DialectRegistry([Tuned(), *builtin_dialects()])
    assert first.for_dialect(engines["sqlite://"]).name == "sqlite-tuned"
    later = DialectRegistry(builtin_dialects())

    def hook(register: Callable[[Dialect], None]) -> None:  # a plugin's dialect hook
        register(Tuned())

    hook(later.register)
    assert later.for_dialect(engines["sqlite://"]).name == "sqlite"
    assert later.names()[-1] == "sqlite-tuned"
    assert builtin_dialects()[0] is not builtin_dialects()[0]  # fresh instances


def recording(base: type[Dialect]) -> tuple[Dialect, Counter[str]]:
    """An instance of a subclass of ``base`` that counts the calls of each operation."""
    calls: Counter[str] = Counter()

    def wrap(op: str) -> Callable[..., Any]:
        def method(self: Dialect, *args: Any, **kw: Any) -> Any:
            calls[op] += 1
            return getattr(super(cls, self), op)(*args, **kw)
        return method

    cls = type("Recording", (base,), {"name": "recording",
                                      **{op: wrap(op) for op in OPERATIONS}})
    return cls(), calls


def test_the_adapter_and_triggers_ask_the_registered_dialect(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'rec.db'}")
    try:
        with engine.begin() as c:
            c.exec_driver_sql(DDL["sqlite"])
        d, calls = recording(SQLiteDialect)
        reg = DialectRegistry([d])
        case = Case("recording", "sqlite", engine, reg)
        a = case.adapter()
        assert a.dialect is d
        rows = [make_row(i) for i in range(20)]
        assert a.apply(ChangeBatch(TABLE, [*upserts(rows), Change("delete", key(rows[0]))]),
                       "p", "b") == "applied"
        list(a.read_chunks(5, after=key(rows[3])))
        a.read_since("at_naive", rows[4]["at_naive"], None, 5)
        a.fetch([key(r) for r in rows])
        triggers.install(engine, TABLE, KEY, schema="main", dialects=reg)
        assert triggers.installed(engine, TABLE, dialects=reg)
        triggers.remove(engine, TABLE, drop_changes=True, dialects=reg)
        assert set(OPERATIONS) - {"matches"} <= set(calls), set(OPERATIONS) - set(calls)
    finally:
        engine.dispose()
