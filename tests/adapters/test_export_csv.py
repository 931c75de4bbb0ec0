"""The CSV fast path of query downloads, on the real PostgreSQL of this machine.

A PostgreSQL holder lets ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` write a page
(:meth:`SqlAdapter.export_page` with :func:`formats.sql_csv_cell`), and the query plugin
turns its LF record ends into CRLF (:func:`formats.crlf_lines`). Every other holder
formats :meth:`SqlAdapter.page`'s rows with :func:`formats.csv_body`. A requester cannot
tell which one wrote its file, so both must parse to the same cells: formula guard,
CHAR(n) padding, NULL, quotes, embedded line breaks, Chinese text and all. Then the
keyset walk, filters with injection-shaped values, the kinds the fast path refuses, and
:meth:`Download.write_csv`, which puts such a page on disk as it is.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from exnode.adapters.sql import SqlAdapter
from exnode.node.base.config import ResourceSpec
from exnode.plugins.builtin.query import formats
from exnode.plugins.builtin.query.formats import (
    SQL_CSV_KINDS,
    Download,
    crlf_lines,
    csv_body,
    resumable,
    sql_csv_cell,
)
from exnode.policies import filters

# ---- helpers ---------------------------------------------------------------------------


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """An engine on a throwaway database (``pg_url`` creates and drops it)."""
    e = sa.create_engine(pg_url)
    yield e
    e.dispose()


def spec(table: str, key: list[str], **kw: Any) -> ResourceSpec:
    return ResourceSpec(database="db", table=table, key=key, **kw)


def parse(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def cell(safe: bool) -> Any:
    """The ``cell`` the query plugin's holder hands to export_page."""
    return lambda col, kind: sql_csv_cell(col, kind, safe)


def fast_page(a: SqlAdapter, fields: list[str], safe: bool, where: Any = None,
              after: tuple[Any, ...] | None = None, limit: int = 100) \
        -> tuple[bytes, int, tuple[Any, ...] | None]:
    """What the holder sends on the fast path: export_page's body through crlf_lines."""
    out = a.export_page(fields, cell(safe), where, after, limit)
    assert out is not None, "export_page refused a table of SQL_CSV_KINDS columns"
    body, n, last = out
    return crlf_lines(body), n, last


def slow_page(a: SqlAdapter, fields: list[str], safe: bool, where: Any = None,
              after: tuple[Any, ...] | None = None, limit: int = 100) -> bytes:
    """What the holder sends on the row path: page()'s rows (key fields first) back in
    the asked order, through csv_body."""
    rows = a.page(fields, where, None, after, limit)
    sel = list(a.key) + [f for f in fields if f not in a.key]
    idx = [sel.index(f) for f in fields]
    return csv_body([tuple(r[i] for i in idx) for r in rows], safe)


def without_quoted(body: bytes) -> bytes:
    """The body with each quoted value replaced by Q: what is left are the record ends."""
    return re.sub(rb'"(?:[^"]|"")*"', b"Q", body)


# ---- the tricky table ------------------------------------------------------------------

STRINGS: list[str | None] = [
    None, "", "=1+2", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "a,b", 'say "hi"', '"',
    "line1\nline2", "line1\r\nline2", "a\rb", "end\n", "中文测试，逗号", "' OR 1=1 --",
    "\\' OR 1=1 --", "back\\slash", "\\.", " lead and trail ", "'quoted", "=中文",
    '=HYPERLINK("http://x")', "plain",
]
CHARS: list[str | None] = [None, "", "ab", "=x", "-1", "@", "\tx", "中文", "a,b", 'q"', "a\nb",
                           " x", "+"]  # all shorter than CHAR(6): the padding shows
INTS: list[int | None] = [None, 0, -5, 2_147_483_647, -2_147_483_648, 42]
NUMERICS: list[Decimal | None] = [None, Decimal("0.000"), Decimal("-12.345"),
                                  Decimal("999999999.999"), Decimal("1.500"), Decimal("NaN")]
# (as numeric(12,3) holds them: the database keeps the scale, so 1.5 reads back 1.500)
DATES: list[dt.date | None] = [None, dt.date(2024, 2, 29), dt.date(99, 1, 1),
                               dt.date(9999, 12, 31), dt.date(1970, 1, 1)]
BOOLS: list[bool | None] = [None, True, False]
UUIDS: list[uuid.UUID | None] = [None, uuid.UUID("12345678-1234-5678-1234-567812345678"),
                                 uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
TRICKY_FIELDS = ["part", "seq", "tx", "vc", "ch", "i", "n", "d", "b", "u"]
N_TRICKY = 2 * len(STRINGS)


def tricky_rows() -> list[dict[str, Any]]:
    """Every value of each list, in ever other combinations (the lists' lengths differ)."""
    rows = []
    for i in range(N_TRICKY):
        rows.append(dict(part=i % 3, seq=i, tx=STRINGS[i % len(STRINGS)],
                         vc=STRINGS[(i * 7 + 3) % len(STRINGS)], ch=CHARS[i % len(CHARS)],
                         i=INTS[i % len(INTS)], n=NUMERICS[i % len(NUMERICS)],
                         d=DATES[i % len(DATES)], b=BOOLS[i % len(BOOLS)],
                         u=UUIDS[i % len(UUIDS)]))
    return rows


@pytest.fixture
def tricky(engine: Engine) -> SqlAdapter:
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE tricky (part integer, seq integer, tx text, vc varchar(40), "
            "ch char(6), i integer, n numeric(12,3), d date, b boolean, u uuid, "
            "f double precision, ts timestamp, tz timestamptz, tm time, bin bytea, js jsonb, "
            "PRIMARY KEY (part, seq))")
        c.execute(sa.Table("tricky", sa.MetaData(), autoload_with=c).insert(),
                  tricky_rows())
    return SqlAdapter(engine, "tricky", spec("tricky", ["part", "seq"])).open()


def test_the_tricky_table_has_the_kinds_under_test(tricky: SqlAdapter) -> None:
    kinds = {f: tricky._cols[f].kind for f in TRICKY_FIELDS}
    assert kinds == {"part": "int", "seq": "int", "tx": "str", "vc": "str", "ch": "str",
                     "i": "int", "n": "decimal", "d": "date", "b": "bool", "u": "uuid"}
    assert set(kinds.values()) == SQL_CSV_KINDS
    # CHAR(6) comes back padded on the row path: that is what the fast path must match
    rows = tricky.page(["ch"], None, None, None, N_TRICKY)
    assert ("ab    " in {r[2] for r in rows}) and ("=x    " in {r[2] for r in rows})


ORDERS = [
    TRICKY_FIELDS,
    ["u", "ch", "tx", "seq", "n", "b", "d", "vc", "i", "part"],  # key fields not first
    ["vc", "ch", "tx"],  # no key field at all
]


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("fields", ORDERS, ids=["table", "shuffled", "no-key"])
def test_fast_path_parses_to_the_row_path_cells(tricky: SqlAdapter, fields: list[str],
                                                safe: bool) -> None:
    for limit in (N_TRICKY, 7):
        after: tuple[Any, ...] | None = None
        seen = 0
        for _ in range(N_TRICKY + 2):
            body, n, last = fast_page(tricky, fields, safe, after=after, limit=limit)
            want = parse(slow_page(tricky, fields, safe, after=after, limit=limit))
            got = parse(body)
            assert got == want, f"page after {after} (limit {limit})"
            assert n == len(got)
            seen += n
            if last is None:
                break
            after = last
        assert seen == N_TRICKY


@pytest.mark.parametrize("safe", [True, False])
def test_cells_are_what_the_guard_and_padding_say(tricky: SqlAdapter, safe: bool) -> None:
    """Not only equal to the row path: equal to what csv_cell makes of the values put in
    (CHAR(6) padded), so a bug shared by both paths shows too."""
    body, n, last = fast_page(tricky, TRICKY_FIELDS, safe, limit=N_TRICKY)
    assert (n, last) == (N_TRICKY, None)
    want = []
    for r in sorted(tricky_rows(), key=lambda r: (r["part"], r["seq"])):
        r = dict(r, ch=None if r["ch"] is None else r["ch"].ljust(6))
        want.append([formats.csv_cell(r[f], safe) for f in TRICKY_FIELDS])
    assert parse(body) == want
    guarded = {row[2] for row in want}
    assert ("'=1+2" in guarded) is safe and ("=1+2" in guarded) is not safe
    assert ("'\rx" in guarded) is safe and ("'\tx    " in {row[4] for row in want}) is safe
    assert "-5" in {row[5] for row in want}  # numbers are never guarded


def test_record_ends_are_crlf_and_quoted_breaks_stay(engine: Engine) -> None:
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE lines (id integer PRIMARY KEY, a text, b varchar(20))")
        c.exec_driver_sql("INSERT INTO lines VALUES (1, %(a)s, %(b)s), (2, 'plain', NULL), "
                          "(3, %(c)s, '\"')",
                          {"a": "line1\nline2", "b": "line1\r\nline2", "c": "cr\ronly"})
    a = SqlAdapter(engine, "lines", spec("lines", ["id"])).open()
    raw, n, last = a.export_page(["id", "a", "b"], cell(True), None, None, 10)  # type: ignore[misc]
    assert (n, last) == (3, None)
    assert raw.endswith(b"\n") and b"\r\n" not in without_quoted(raw)  # the database: LF
    body = crlf_lines(raw)
    assert b'"line1\nline2"' in body  # LF inside the quotes stays LF
    assert b'"line1\r\nline2"' in body and b"\r\r\n" not in body  # CRLF stays CRLF
    assert b'"cr\ronly"' in body
    ends = without_quoted(body)
    assert ends.count(b"\n") == ends.count(b"\r\n") == n  # every record ends in CRLF
    assert body.endswith(b"\r\n")
    assert parse(body) == [["1", "line1\nline2", "line1\r\nline2"], ["2", "plain", ""],
                           ["3", "cr\ronly", '"']]


# ---- keyset paging -----------------------------------------------------------------------

N_WALK = 1_000


@pytest.fixture(params=["composite", "single"])
def walk_table(request: pytest.FixtureRequest, engine: Engine) -> SqlAdapter:
    """N_WALK rows, the key either (part, seq) or id; inserted out of key order."""
    composite = request.param == "composite"
    key = ["part", "seq"] if composite else ["id"]
    with engine.begin() as c:
        if composite:
            c.exec_driver_sql("CREATE TABLE walk (part integer, seq integer, label text, "
                              "PRIMARY KEY (part, seq))")
        else:
            c.exec_driver_sql("CREATE TABLE walk (id integer PRIMARY KEY, label text)")
        rows = []
        for i in reversed(range(N_WALK)):
            label = f"={i}" if i % 10 == 0 else f"第{i}行"
            rows.append({"part": i % 4, "seq": i, "label": label} if composite
                        else {"id": i * 3, "label": label})
        c.execute(sa.Table("walk", sa.MetaData(), autoload_with=c).insert(), rows)
    return SqlAdapter(engine, "walk", spec("walk", key)).open()


def walk(a: SqlAdapter, limit: int, where: Any = None, safe: bool = True) \
        -> list[tuple[list[list[str]], int, tuple[Any, ...] | None]]:
    """Every page from the start, each (parsed records, nrows, last)."""
    fields = [*a.key, "label"]
    pages = []
    after: tuple[Any, ...] | None = None
    for _ in range(N_WALK + 2):
        body, n, last = fast_page(a, fields, safe, where=where, after=after, limit=limit)
        pages.append((parse(body), n, last))
        if last is None:
            return pages
        after = last
    raise AssertionError("the walk never reported its last page")


@pytest.mark.parametrize("limit", [100, 128, 1, 999, 1000, 1001])
def test_keyset_walk_returns_every_row_once_in_key_order(walk_table: SqlAdapter,
                                                         limit: int) -> None:
    a = walk_table
    width = len(a.key)
    with a.engine.connect() as c:
        cols = ", ".join(a.key)
        want = [tuple(r) for r in c.exec_driver_sql(f"SELECT {cols} FROM walk ORDER BY {cols}")]
    assert len(want) == N_WALK and want == sorted(want)
    pages = walk(a, limit)
    assert len(pages) == math.ceil(N_WALK / limit)  # no empty page after a full one
    got = []
    for n, (records, nrows, last) in enumerate(pages):
        assert nrows == len(records)
        keys = [tuple(int(v) for v in r[:width]) for r in records]
        final = n == len(pages) - 1
        if final:
            assert last is None
            assert nrows == N_WALK - limit * (len(pages) - 1) > 0
        else:
            assert nrows == limit
            assert last == keys[-1]  # the key handed back ends exactly the rows sent
            assert all(type(v) is int for v in last)
        got += keys
    assert got == want


def test_a_walk_with_a_filter_and_past_the_end(walk_table: SqlAdapter) -> None:
    a = walk_table
    field = "part" if a.key == ["part", "seq"] else "id"
    value = 2 if field == "part" else 2997
    op = "=" if field == "part" else "<="
    where = filters.compile([filters.parse(f"{field} {op} {value}")], a.source)
    pages = walk(a, 50, where=where)
    records = [r for p in pages for r in p[0]]
    assert len(records) == 250 if field == "part" else len(records) == 1000
    if field == "part":
        assert {r[0] for r in records} == {"2"}
        assert [int(r[1]) for r in records] == list(range(2, N_WALK, 4))
    assert len(pages) == 5 if field == "part" else len(pages) == 20
    # after the last key: an empty page that says it is the last
    last_key = tuple(int(v) for v in records[-1][:len(a.key)])
    body, n, last = fast_page(a, list(a.key), True, where=where, after=last_key, limit=50)
    assert (body, n, last) == (b"", 0, None)
    nothing = filters.compile([filters.parse("label = nobody")], a.source)
    assert fast_page(a, ["label"], True, where=nothing, limit=50) == (b"", 0, None)


def test_a_row_inserted_during_a_page_loses_no_row(walk_table: SqlAdapter,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The docstring: 'the key handed back always ends exactly the rows sent, even while
    the table changes'. A row inserted between the two statements of the first page,
    before that page's last key, must not push a row out of the walk."""
    a = walk_table
    composite = a.key == ["part", "seq"]
    original = a.dialect.export_csv
    inserted = []

    def insert_then_export(conn: Any, stmt: Any) -> Any:
        if not inserted:
            with a.engine.begin() as other:  # another session, committed at once
                row = ({"part": 0, "seq": -1, "label": "new"} if composite
                       else {"id": 1, "label": "new"})
                other.execute(sa.Table("walk", sa.MetaData(), autoload_with=other).insert(),
                              [row])
                inserted.append(row)
        return original(conn, stmt)

    monkeypatch.setattr(a.dialect, "export_csv", insert_then_export)
    pages = walk(a, 100)
    assert inserted
    width = len(a.key)
    keys = [tuple(int(v) for v in r[:width]) for p in pages for r in p[0]]
    with a.engine.connect() as c:
        cols = ", ".join(a.key)
        want = [tuple(r) for r in c.exec_driver_sql(f"SELECT {cols} FROM walk ORDER BY {cols}")]
    assert len(want) == N_WALK + 1
    assert sorted(set(keys)) == keys  # never twice, in key order
    missing = sorted(set(want) - set(keys) - {tuple(inserted[0][k] for k in a.key)})
    assert missing == [], f"rows the walk skipped: {missing[:5]}"


# ---- filters whose values look like SQL ---------------------------------------------------

NAMES = ["' OR 1=1 --", "alice", "' OR 1=1 --", "x' OR '1'='1", "\\' OR 1=1 --",
         "'; DROP TABLE people; --", "bob", "%s", "%(name)s", "' or 1=1 --"]


@pytest.fixture
def people(engine: Engine) -> SqlAdapter:
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE people (id integer PRIMARY KEY, name text)")
        c.execute(sa.text("INSERT INTO people VALUES (:id, :name)"),
                  [{"id": i, "name": n} for i, n in enumerate(NAMES, 1)])
    return SqlAdapter(engine, "people", spec("people", ["id"])).open()


@pytest.mark.parametrize(("text", "ids"), [
    ("name = \"' OR 1=1 --\"", [1, 3]),
    ("name = ''' OR 1=1 --'", [1, 3]),
    ("name = x' OR '1'='1", [4]),
    ("name = \"\\' OR 1=1 --\"", [5]),
    ("name = \"'; DROP TABLE people; --\"", [6]),
    ("name = %s", [8]),
    ("name = %(name)s", [9]),
    ("name in \"' OR 1=1 --\",bob", [1, 3, 7]),
    ("name like \"' OR%\"", [1, 3]),  # % is the wildcard; LIKE is case-sensitive
    ("name like \"' OR*\"", []),  # * is only a star
])
@pytest.mark.parametrize("safe", [True, False])
def test_an_injection_shaped_filter_matches_only_its_text(people: SqlAdapter, text: str,
                                                          ids: list[int], safe: bool) -> None:
    where = filters.compile([filters.parse(text)], people.source)
    body, n, last = fast_page(people, ["id", "name"], safe, where=where)
    got = parse(body)
    assert [int(r[0]) for r in got] == ids and n == len(ids) and last is None
    assert [r[1] for r in got] == [formats.csv_cell(NAMES[i - 1], safe) for i in ids]
    assert got == parse(slow_page(people, ["id", "name"], safe, where=where))
    with people.engine.connect() as c:  # nothing ran but the SELECT
        assert c.exec_driver_sql("SELECT count(*) FROM people").scalar_one() == len(NAMES)


def test_an_unclosed_quote_is_a_filter_error_not_sql() -> None:
    with pytest.raises(filters.FilterError, match="unclosed quote"):
        filters.parse("name = ' OR 1=1 --")


# ---- what the fast path refuses ------------------------------------------------------------

@pytest.mark.parametrize("field", ["f", "ts", "tz", "tm", "bin", "js"])
def test_a_kind_outside_sql_csv_kinds_makes_export_page_none(tricky: SqlAdapter,
                                                             field: str) -> None:
    assert tricky._cols[field].kind not in SQL_CSV_KINDS
    assert sql_csv_cell(tricky._cols[field].column, tricky._cols[field].kind) is None
    for fields in ([field], ["tx", field, "i"]):
        assert tricky.export_page(fields, cell(True), None, None, 10) is None
    assert tricky.export_page(["tx", "i"], cell(True), None, None, 10) is not None


def test_an_unknown_field_is_a_value_error(tricky: SqlAdapter) -> None:
    with pytest.raises(ValueError, match="unknown field ghost"):
        tricky.export_page(["tx", "ghost"], cell(True), None, None, 10)


def test_a_database_without_export_gives_none(tmp_path: Path) -> None:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with e.begin() as c:
            c.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            c.exec_driver_sql("INSERT INTO t VALUES (1, 'a')")
        a = SqlAdapter(e, "t", spec("t", ["id"])).open()
        assert a.export_page(["id", "name"], cell(True), None, None, 10) is None
        assert a.page(["id", "name"], None, None, None, 10) == [(1, "a")]
    finally:
        e.dispose()


# ---- crlf_lines --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "want"), [
    (b"", b""),
    (b"a,b\n1,2\n", b"a,b\r\n1,2\r\n"),
    (b"\n\n", b"\r\n\r\n"),
    (b'1,"say ""hi""",x\n2,"",y\n', b'1,"say ""hi""",x\r\n2,"",y\r\n'),
    (b'1,"a\nb"\n2,"c\r\nd"\n', b'1,"a\nb"\r\n2,"c\r\nd"\r\n'),
    (b'"x""\n""y"\n', b'"x""\n""y"\r\n'),  # doubled quotes around a quoted LF
    (b'"""",\n"\n"\n', b'"""",\r\n"\n"\r\n'),
    ('中,"文\n字"\n'.encode(), '中,"文\n字"\r\n'.encode()),
])
def test_crlf_lines(raw: bytes, want: bytes) -> None:
    got = crlf_lines(raw)
    assert got == want
    assert parse(got) == parse(raw)  # the same cells


def _write(rows: list[list[str]], end: str, quoting: int) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator=end, quoting=quoting).writerows(rows)
    return out.getvalue().encode("utf-8")


TEXT = st.text(alphabet=st.sampled_from(list('ab,"\n\r中 =\t')), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(TEXT, min_size=1, max_size=4), max_size=6))
def test_crlf_lines_is_the_csv_module_with_crlf(rows: list[list[str]]) -> None:
    """Every value quoted (as the database quotes any value with a quote, comma, CR or
    LF): LF-ended CSV through crlf_lines is the CRLF-ended CSV of the same rows."""
    lf = _write(rows, "\n", csv.QUOTE_ALL)
    assert crlf_lines(lf) == _write(rows, "\r\n", csv.QUOTE_ALL)


# ---- Download.write_csv ----------------------------------------------------------------------

FIELDS = ["id", "姓名", "备注"]


def chunk(first: int, last: int) -> bytes:
    return csv_body([(i, f"第{i}行", f"={i}\n二行") for i in range(first, last + 1)])


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("bom", [False, True])
def test_write_csv_then_finish_is_the_header_then_the_bytes(tmp_path: Path, bom: bool) -> None:
    path = tmp_path / "out.csv"
    d = Download.open(path, "csv", FIELDS, bom=bom)
    d.write_csv(chunk(1, 3), 3, cursor=[3])
    d.write_csv(b"", 0, cursor=[3])  # an empty page is no line
    d.write_csv(chunk(4, 5), 2, cursor=[5])
    assert (d.rows, d.cursor) == (5, [5])
    assert d.finish() == 5
    header = ("\ufeff" if bom else "").encode() + "id,姓名,备注\r\n".encode()
    assert path.read_bytes() == header + chunk(1, 3) + chunk(4, 5)
    assert read_csv(path)[1] == ["1", "第1行", "'=1\n二行"]
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_write_csv_and_write_interleave_in_order(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    d = Download.open(path, "csv", FIELDS)
    d.write([(1, "第1行", "=1\n二行")], cursor=[1])  # through the text writer
    d.write_csv(chunk(2, 3), 2, cursor=[3])  # raw bytes after it
    d.write([(4, "第4行", "=4\n二行")], cursor=[4])
    assert d.finish() == 4
    assert path.read_bytes() == "id,姓名,备注\r\n".encode() + chunk(1, 4)


def test_write_csv_resumes_after_the_last_chunk(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    part = path.with_name(path.name + ".part")
    d = Download.open(path, "csv", FIELDS, meta={"query": "q"})
    d.write_csv(chunk(1, 2), 2, cursor=[2])
    d.write_csv(chunk(3, 4), 2, cursor=[4])
    d.abort()
    state = resumable(path)
    assert state is not None
    assert (state["rows"], state["cursor"], state["bytes"]) == (4, [4], part.stat().st_size)
    with open(part, "ab") as f:  # the next page, half written when the process died
        f.write(chunk(5, 6)[:11])
    d = Download.open(path, "csv", FIELDS, meta={"query": "q"}, resume=True)
    assert (d.rows, d.cursor) == (4, [4])
    assert part.stat().st_size == state["bytes"]
    d.write_csv(chunk(5, 6), 2, cursor=[6])
    assert d.finish() == 6
    assert path.read_bytes() == "id,姓名,备注\r\n".encode() + chunk(1, 6)
    assert [r[0] for r in read_csv(path)[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_a_chunk_without_a_final_line_break_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    d = Download.open(path, "csv", FIELDS)
    d.write_csv(chunk(1, 1), 1, cursor=[1])
    size = (tmp_path / "out.csv.part").stat().st_size
    with pytest.raises(ValueError, match="must end with a line break"):
        d.write_csv(chunk(2, 2).rstrip(b"\r\n"), 1, cursor=[2])
    assert (d.rows, d.cursor) == (1, [1])  # nothing written, nothing recorded
    assert (tmp_path / "out.csv.part").stat().st_size == size
    d.write_csv(chunk(2, 2), 1, cursor=[2])  # and the download goes on
    assert d.finish() == 2
    assert [r[0] for r in read_csv(path)[1:]] == ["1", "2"]


@pytest.mark.parametrize("fmt", ["jsonl", "xlsx"])
def test_write_csv_on_another_format_is_refused(tmp_path: Path, fmt: str) -> None:
    d = Download.open(tmp_path / f"out.{fmt}", fmt, FIELDS)
    with pytest.raises(ValueError, match=f"a CSV chunk for a {fmt} download"):
        d.write_csv(chunk(1, 1), 1, cursor=[1])
    assert d.rows == 0
    d.abort()


def test_write_csv_after_finish_is_refused(tmp_path: Path) -> None:
    d = Download.open(tmp_path / "out.csv", "csv", FIELDS)
    d.finish()
    with pytest.raises(ValueError, match="is closed"):
        d.write_csv(chunk(1, 1), 1, cursor=[1])


def test_a_fast_page_goes_to_disk_as_the_holder_sent_it(tricky: SqlAdapter,
                                                       tmp_path: Path) -> None:
    """The whole chain: export_page, crlf_lines, write_csv, finish; the file reads back as
    the row path's download of the same rows."""
    fields = ORDERS[1]
    fast, slow = tmp_path / "fast.csv", tmp_path / "slow.csv"
    d = Download.open(fast, "csv", fields)
    after = None
    while True:
        body, n, last = fast_page(tricky, fields, True, after=after, limit=9)
        d.write_csv(body, n, cursor=list(last) if last else None)
        if last is None:
            break
        after = last
    assert d.finish() == N_TRICKY
    rows = tricky.page(fields, None, None, None, N_TRICKY)
    sel = list(tricky.key) + [f for f in fields if f not in tricky.key]
    d = Download.open(slow, "csv", fields)
    d.write([tuple(r[sel.index(f)] for f in fields) for r in rows], cursor=None)
    d.finish()
    assert read_csv(fast) == read_csv(slow)
    assert len(read_csv(fast)) == N_TRICKY + 1
