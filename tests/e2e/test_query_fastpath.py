"""CSV downloads from a PostgreSQL holder (COPY writes the pages) with read-ahead, end
to end: b1 keeps ``cases`` in PostgreSQL (``held_at: owner``), b2 downloads it through
the center. The file must hold exactly the rows of the table, formatted as the row
path formats them (formula guard, CHAR padding, NULL, quotes and line breaks), and a
holder that restarts in the middle of a read-ahead must not lose or repeat a row."""

from __future__ import annotations

import csv
import io

import sqlalchemy as sa

from exnode.node.tools.cluster import wait_until
from exnode.plugins.builtin.query.formats import csv_cell

from ..helpers import db_rows

N = 95
TRICKY = ["=1+1", "+86", "-5", "@SUM(A1)", "\tTab", "\rCR", "a,b", 'say "hi"', "two\nlines",
          "crlf\r\nend", "", None, "' OR 1=1 --", "普通文本", "  spaced  "]


def _value(i: int) -> str | None:
    return TRICKY[(i // 3) % len(TRICKY)] if i % 3 == 0 else f"名{i}"


def _expected() -> list[list[str]]:
    rows = []
    for i in range(N):
        code = f"C{i:03d}"
        rows.append([csv_cell(f"K{i:04d}"), csv_cell(_value(i)), csv_cell(code.ljust(6)),
                     csv_cell(i - 40), csv_cell(i % 2 == 0)])
    return rows


def test_postgres_holder_csv_readahead_survives_holder_restart(make_star, system_broker,
                                                               pg_url):
    eng = sa.create_engine(pg_url)
    md = sa.MetaData()
    sa.Table("cases", md, sa.Column("id", sa.String(10), primary_key=True),
             sa.Column("note", sa.Text), sa.Column("code", sa.CHAR(6)),
             sa.Column("amount", sa.Integer), sa.Column("open", sa.Boolean))
    md.create_all(eng)
    with eng.begin() as c:
        c.execute(md.tables["cases"].insert(), [
            {"id": f"K{i:04d}", "note": _value(i), "code": f"C{i:03d}", "amount": i - 40,
             "open": i % 2 == 0} for i in range(N)])
    cat = {"name": "案件", "abstract": "测试用案件数据", "classification": "C01",
           "share": "unconditional", "held_at": "owner"}
    star = make_star(system_broker, node_settings={
        "b1": {"databases": {"db": {"url": pg_url}},
               "resources": {"cases": {"database": "db", "table": "cases", "key": ["id"],
                                       "owner": "b1", "catalog": cat}}},
        "b2": {}})
    star.up()
    wait_until(lambda: star.call("b2", "GET", "/catalog"), 60, what="the catalog at b2")
    r = star.cli("b2", "access", "request", "cases", "--service", "query", "--purpose", "t",
                 "--json")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(star.call("b1", "GET", "/access/grants")) == 1, 60,
               what="the grant at the holder")
    want = _expected()

    # (1) the CLI, pages of 7 rows: COPY pages, read ahead, written unparsed
    out = star.dir("b2") / "cases.csv"
    r = star.cli("b2", "query", "cases", "--page", "7", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    body = raw.split(b"\r\n", 1)[1]
    assert b"two\nlines" in body and b"crlf\r\nend" in body  # line breaks in values kept
    got = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert got[0] == ["id", "note", "code", "amount", "open"]
    assert got[1:] == want
    pages = db_rows(star, "b1", "SELECT status FROM exchange_log WHERE event = 'query'")
    assert sum(int(s.split()[0]) for (s,) in pages) == N  # no page past the end is logged
    assert len(pages) == -(-N // 7)

    # (2) the holder restarts while pages are read ahead: it has lost its place, and
    # the requester asks again with the key; every row still comes exactly once
    sock = star.socket("b2")
    from exnode.node.app.control import call

    body_ = {"resource": "cases", "as": "csv", "limit": 10, "timeout": 60}
    first = call(sock, "POST", "/query/page", body_, 70)
    assert first["n"] == 10 and not first["done"]
    chunks, after = [first["blob"]], first["last"]
    second = call(sock, "POST", "/query/page", {**body_, "after": after}, 70)  # read ahead
    chunks.append(second["blob"])
    after = second["last"]
    star.stop("b1")
    star.start("b1")
    star.wait_connected("b1")
    while True:
        page = call(sock, "POST", "/query/page", {**body_, "after": after}, 70)
        chunks.append(page["blob"])
        if page["done"]:
            break
        after = page["last"]
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode("utf-8"), newline="")))
    assert rows == want
    lost = db_rows(star, "b1", "SELECT count(*) FROM exchange_log WHERE event = 'query' "
                   "AND status = 'cursor-lost'")[0][0]
    assert lost >= 1  # the fallback was taken, not skipped by luck

    # (3) a verification batch larger than one part (PART_RECORDS) comes back whole and
    # in order: each record's answer is its own, across the parts
    from exnode.plugins.builtin.verification.service import PART_RECORDS

    m = 2 * PART_RECORDS + 5_000
    with eng.begin() as c:
        c.execute(md.tables["cases"].insert(), [
            {"id": f"V{i:06d}", "note": f"备注{i}", "code": "X", "amount": 0, "open": True}
            for i in range(m)])
    r = star.cli("b2", "access", "request", "cases", "--service", "verify", "--purpose", "t",
                 "--json")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(star.call("b1", "GET", "/access/grants")) == 2, 60,
               what="the verify grant at the holder")
    recs = [[f"V{i:06d}" if i % 11 else f"W{i:06d}", f"备注{i}" if i % 7 else "别的"]
            for i in range(m)]
    out3 = call(sock, "POST", "/verify", {"resource": "cases", "key": ["id"],
                                          "check": ["note"], "records": recs,
                                          "timeout": 120}, 150)
    assert out3["results"] == [[False, []] if i % 11 == 0 else [True, [i % 7 != 0]]
                               for i in range(m)]
    parts = db_rows(star, "b1", "SELECT count(*) FROM exchange_log WHERE event = 'verify'")
    assert parts[0][0] == 3
    eng.dispose()

