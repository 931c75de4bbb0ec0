"""A value the target column cannot keep exactly is never changed silently (issue 9):
SqlAdapter.apply raises Unstorable, naming each such change and why, before anything
is written; the other changes apply. A decimal into a TEXT column keeps every digit."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from exnode.adapters.sql import SqlAdapter, Unstorable
from exnode.node.base.config import ResourceSpec
from exnode.policies.changes import Change, ChangeBatch

EXACT = [Decimal("12345678.123456"), Decimal("123456789012.345"), Decimal("-0.000001"),
         Decimal("999999999.99")]
INEXACT = Decimal("12345678901234.567891")  # 20 significant digits


def _adapter(engine: sa.Engine) -> SqlAdapter:
    return SqlAdapter(engine, "prices", ResourceSpec(database="db", table="prices",
                                                      key=["id"])).open()


def _ups(rows: list[dict]) -> ChangeBatch:
    return ChangeBatch("prices", [Change("upsert", (r["id"],), r) for r in rows])


def test_sqlite_decimals_exact_or_unstorable(tmp_path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE prices (id INTEGER PRIMARY KEY, "
                          "price DECIMAL(20,6), as_text TEXT, n INTEGER)")
    ad = _adapter(eng)
    rows = [{"id": i, "price": p, "as_text": p, "n": 1} for i, p in enumerate(EXACT, 1)]
    rows.insert(1, {"id": 10, "price": INEXACT, "as_text": INEXACT, "n": 2})
    rows.append({"id": 11, "price": Decimal(1), "as_text": None, "n": 2**64})
    with pytest.raises(Unstorable) as err:
        ad.apply(_ups(rows), "pkg-1", "b1")
    assert err.value.reasons == {
        1: "price: 12345678901234.567891 cannot be stored exactly in SQLite column price "
           "(NUMERIC affinity: kept as an 8-byte REAL, about 15 significant digits)",
        5: "n: 18446744073709551616 cannot be stored in SQLite column n (64-bit INTEGER): "
           "it holds -9223372036854775808 to 9223372036854775807"}
    assert not err.value.transient and "package pkg-1 was not applied" in str(err.value)
    assert ad.fetch([(1,)]) == {}, "nothing is written when a row is unstorable"

    rest = [r for i, r in enumerate(rows) if i not in err.value.reasons]
    assert ad.apply(_ups(rest), "pkg-1", "b1") == "applied"
    got = ad.fetch([(r["id"],) for r in rest])
    for r in rest[:-1]:
        # read back as the same number (SQLAlchemy alone made 123456789012.345001 of it)
        assert got[(r["id"],)]["price"] == r["price"], r
        assert got[(r["id"],)]["as_text"] == str(r["price"])  # a decimal as its text
    # into a TEXT column, even 20 digits are kept, as text
    row = {"id": 12, "price": None, "as_text": INEXACT, "n": 0}
    assert ad.apply(_ups([row]), "pkg-2", "b1") == "applied"
    assert ad.fetch([(12,)])[(12,)]["as_text"] == "12345678901234.567891"


def test_postgresql_scale_precision_length_and_range(pg_url: str) -> None:
    eng = sa.create_engine(pg_url)
    try:
        with eng.begin() as c:
            c.exec_driver_sql("CREATE TABLE prices (id integer PRIMARY KEY, "
                              "price numeric(20,6), at timestamp(0), name varchar(8), "
                              "small smallint)")
        ad = _adapter(eng)
        ok = {"id": 1, "price": INEXACT, "at": dt.datetime(2024, 5, 1, 8, 0, 1),
              "name": "张三", "small": 7}
        bad = [dict(ok, id=2, price=Decimal("1.1234567")),
               dict(ok, id=3, at=dt.datetime(2024, 5, 1, 8, 0, 1, 500)),
               dict(ok, id=4, name="x" * 9), dict(ok, id=5, small=40000),
               dict(ok, id=6, price=Decimal("123456789012345.5"))]
        with pytest.raises(Unstorable) as err:
            ad.apply(_ups([ok, *bad]), "pkg-1", "b1")
        r = err.value.reasons
        assert sorted(r) == [1, 2, 3, 4, 5]
        assert "6 decimal places" not in r[1] and "7 decimal places, the column keeps 6" in r[1]
        assert "whole seconds" in r[2] and "at: 2024-05-01T08:00:01.000500" in r[2]
        assert r[3] == ("name (9 characters) is too long for PostgreSQL column name "
                        "(VARCHAR(8)): it keeps 8")
        assert "holds -32768 to 32767" in r[4] and "digits before the point" in r[5]
        assert ad.apply(_ups([ok]), "pkg-1", "b1") == "applied"
        assert ad.fetch([(1,)])[(1,)]["price"] == INEXACT  # PostgreSQL keeps all 20
    finally:
        eng.dispose()


def test_mariadb_datetime_without_fraction(mariadb_url: str) -> None:
    eng = sa.create_engine(mariadb_url)
    try:
        with eng.begin() as c:
            c.exec_driver_sql("CREATE TABLE prices (id INT PRIMARY KEY, "
                              "price DECIMAL(20,6), at DATETIME, at6 DATETIME(6))")
        ad = _adapter(eng)
        t = dt.datetime(2024, 5, 1, 8, 0, 1, 123456)
        rows = [{"id": 1, "price": INEXACT, "at": t.replace(microsecond=0), "at6": t},
                {"id": 2, "price": INEXACT, "at": t, "at6": t}]
        with pytest.raises(Unstorable) as err:
            ad.apply(_ups(rows), "pkg-1", "b1")
        assert list(err.value.reasons) == [1]
        assert "MariaDB/MySQL column at (DATETIME): it keeps whole seconds" \
            in err.value.reasons[1]
        assert ad.apply(_ups(rows[:1]), "pkg-1", "b1") == "applied"
        got = ad.fetch([(1,)])[(1,)]
        assert got["price"] == INEXACT and got["at6"] == t
    finally:
        eng.dispose()
