"""The query download writers: each format round trip, the resume protocol after a
crash, the refusals, file modes and formula-injection prefixing. Real files in tmp_path;
xlsx files are read back with openpyxl when it is installed, else from the zip's XML."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import os
import re
import stat
import xml.etree.ElementTree as ET
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from exnode.node.base.errors import UsageError
from exnode.plugins.builtin.query import formats
from exnode.plugins.builtin.query.formats import FORMATS, Download, FormatError, resumable

FIELDS = ["id", "姓名", "备注", "生日", "登记时间", "金额", "照片"]
ROWS: list[tuple[Any, ...]] = [
    (1, "张三", None, dt.date(1990, 5, 17), dt.datetime(2024, 3, 1, 8, 30, 15),
     Decimal("1234.50"), b"\x00\x01\xfe\xff"),
    (2, '李四，"王五"\n第二行', "", dt.date(2000, 2, 29), dt.datetime(2024, 3, 1, 23, 59, 59),
     Decimal("0.10"), b""),
]


def chunked(n: int) -> list[tuple[Any, ...]]:
    return [(i, f"第{i}行", None, dt.date(2024, 1, 1) + dt.timedelta(days=i),
             dt.datetime(2024, 1, 1, 12, 0, 0), Decimal(i) / 4, bytes([i % 256]))
            for i in range(1, n + 1)]


def excel_serial(value: dt.date) -> float:
    """Days since Excel's epoch, as a date cell stores them."""
    if isinstance(value, dt.datetime):
        return (value - dt.datetime(1899, 12, 30)).total_seconds() / 86400
    return float((value - dt.date(1899, 12, 30)).days)


# -- reading xlsx back -------------------------------------------------------------------

class Cell(NamedTuple):
    value: Any  # str, float, bool or None; a date cell's value is its Excel serial
    date: bool = False
    bold: bool = False


def read_xlsx(path: Path) -> dict[str, list[list[Cell]]]:
    """Sheet name -> rows of cells, in sheet order."""
    try:
        import openpyxl
    except ImportError:
        return _read_xlsx_zip(path)
    from openpyxl.utils.datetime import to_excel

    sheets = {}
    for ws in openpyxl.load_workbook(path).worksheets:
        rows = []
        for row in ws.iter_rows():
            cells = []
            for c in row:
                v = c.value
                if c.is_date:
                    cells.append(Cell(float(to_excel(v)), date=True, bold=bool(c.font.b)))
                elif isinstance(v, int | float) and not isinstance(v, bool):
                    cells.append(Cell(float(v), bold=bool(c.font.b)))
                elif isinstance(v, str):  # openpyxl leaves inline strings escaped
                    cells.append(Cell(_unescape(v), bold=bool(c.font.b)))
                else:
                    cells.append(Cell(v, bold=bool(c.font.b)))
            rows.append(cells)
        sheets[ws.title] = rows
    return sheets


_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_PKG = "{http://schemas.openxmlformats.org/package/2006/relationships}"


def _read_xlsx_zip(path: Path) -> dict[str, list[list[Cell]]]:
    with zipfile.ZipFile(path) as z:
        rels = {r.get("Id"): r.get("Target")
                for r in ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
                .iter(f"{_PKG}Relationship")}
        styles = ET.fromstring(z.read("xl/styles.xml"))
        custom = {int(f.get("numFmtId")): f.get("formatCode")
                  for f in styles.iterfind("m:numFmts/m:numFmt", _NS)}
        bold_fonts = [f.find("m:b", _NS) is not None
                      for f in styles.iterfind("m:fonts/m:font", _NS)]
        xfs = []
        for xf in styles.iterfind("m:cellXfs/m:xf", _NS):
            fmt = int(xf.get("numFmtId", "0"))
            is_date = 14 <= fmt <= 22 or any(ch in custom.get(fmt, "") for ch in "ydh")
            xfs.append((is_date, bold_fonts[int(xf.get("fontId", "0"))]))
        shared = []
        if "xl/sharedStrings.xml" in z.namelist():
            shared = ["".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t"))
                      for si in ET.fromstring(z.read("xl/sharedStrings.xml"))]
        sheets = {}
        for sheet in ET.fromstring(z.read("xl/workbook.xml")).iterfind("m:sheets/m:sheet", _NS):
            target = rels[sheet.get(_REL)]
            xml = ET.fromstring(z.read(target[1:] if target.startswith("/") else "xl/" + target))
            rows = []
            for row in xml.iterfind("m:sheetData/m:row", _NS):
                cells: dict[int, Cell] = {}
                for c in row.iterfind("m:c", _NS):
                    col = _column(c.get("r"))
                    is_date, bold = xfs[int(c.get("s", "0"))]
                    kind, v = c.get("t"), c.findtext("m:v", None, _NS)
                    if kind == "inlineStr":
                        value: Any = _unescape(
                            "".join(t.text or "" for t in c.iter(f"{{{_NS['m']}}}t")))
                    elif kind == "s":
                        value = _unescape(shared[int(v or 0)])
                    elif kind == "b":
                        value = v == "1"
                    elif kind == "str":
                        value = v
                    else:
                        value = float(v) if v is not None else None
                    cells[col] = Cell(value, date=is_date and kind is None, bold=bold)
                width = max(cells, default=-1) + 1
                rows.append([cells.get(i, Cell(None)) for i in range(width)])
            sheets[sheet.get("name")] = rows
    return sheets


def _unescape(text: str) -> str:
    """OOXML writes characters XML cannot hold (CR, control characters) as _xHHHH_."""
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def _column(ref: str) -> int:
    n = 0
    for ch in ref:
        if ch.isalpha():
            n = n * 26 + ord(ch.upper()) - 64
    return n - 1


def values(row: list[Cell], width: int) -> list[Any]:
    return [c.value for c in row] + [None] * (width - len(row))


# -- reading the other formats back ------------------------------------------------------

def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.reader(f))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ids(path: Path, fmt: str) -> list[int]:
    """The id column of a finished download, in file order."""
    if fmt == "csv":
        return [int(r[0]) for r in read_csv(path)[1:]]
    if fmt == "jsonl":
        return [r["id"] for r in read_jsonl(path)]
    return [int(r[0].value) for rows in read_xlsx(path).values() for r in rows[1:]]


def download(tmp_path: Path, fmt: str, rows: list[tuple[Any, ...]], **kw: Any) -> Path:
    path = tmp_path / f"out.{fmt}"
    d = Download.open(path, fmt, FIELDS, **kw)
    d.write(rows, cursor={"id": rows[-1][0]} if rows else None)
    assert d.finish() == len(rows)
    return path


# -- round trips ----------------------------------------------------------------------

def test_csv_round_trip(tmp_path: Path) -> None:
    path = download(tmp_path, "csv", ROWS)
    assert read_csv(path) == [
        FIELDS,
        ["1", "张三", "", "1990-05-17", "2024-03-01T08:30:15", "1234.50", "AAH+/w=="],
        ["2", '李四，"王五"\n第二行', "", "2000-02-29", "2024-03-01T23:59:59", "0.10", ""],
    ]
    raw = path.read_bytes()
    assert raw.startswith(",".join(FIELDS).encode("utf-8") + b"\r\n")  # RFC 4180 line ends
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == 3  # the quoted \n stays bare
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]  # part and sidecar are gone


@pytest.mark.parametrize("bom", [False, True])
def test_csv_bom_only_on_request(tmp_path: Path, bom: bool) -> None:
    raw = download(tmp_path, "csv", ROWS, bom=bom).read_bytes()
    assert raw.startswith(codecs.BOM_UTF8) is bom
    assert raw[3 if bom else 0:].startswith(b"id,")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = download(tmp_path, "jsonl", ROWS)
    assert read_jsonl(path) == [
        {"id": 1, "姓名": "张三", "备注": None, "生日": "1990-05-17",
         "登记时间": "2024-03-01T08:30:15", "金额": "1234.50", "照片": "AAH+/w=="},
        {"id": 2, "姓名": '李四，"王五"\n第二行', "备注": "", "生日": "2000-02-29",
         "登记时间": "2024-03-01T23:59:59", "金额": "0.10", "照片": ""},
    ]
    raw = path.read_bytes()
    assert "张三".encode() in raw and b"\\u" not in raw  # UTF-8, not ASCII escapes
    assert raw.count(b"\n") == 2 and not raw.startswith(codecs.BOM_UTF8)
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_xlsx_round_trip(tmp_path: Path) -> None:
    path = download(tmp_path, "xlsx", ROWS)
    sheets = read_xlsx(path)
    assert list(sheets) == ["Sheet1"]
    header, first, second = sheets["Sheet1"]
    assert [c.value for c in header] == FIELDS and all(c.bold for c in header)
    assert values(first, 7) == [1.0, "张三", None, excel_serial(dt.date(1990, 5, 17)),
                                pytest.approx(excel_serial(dt.datetime(2024, 3, 1, 8, 30, 15))),
                                1234.5, "AAH+/w=="]
    assert values(second, 7) == [2.0, '李四，"王五"\n第二行', None,
                                 excel_serial(dt.date(2000, 2, 29)),
                                 pytest.approx(excel_serial(dt.datetime(2024, 3, 1, 23, 59, 59))),
                                 0.1, None]
    assert first[3].date and first[4].date  # real date cells, not text
    assert not first[0].date and not first[1].bold
    assert sorted(os.listdir(tmp_path)) == ["out.xlsx"]  # no part, sidecar or spool files


def test_xlsx_continues_on_a_new_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "XLSX_SHEET_ROWS", 3)
    rows = chunked(7)
    path = tmp_path / "out.xlsx"
    d = Download.open(path, "xlsx", FIELDS)
    d.write(rows[:4], cursor=4)
    d.write(rows[4:], cursor=7)
    assert d.finish() == 7
    sheets = read_xlsx(path)
    assert list(sheets) == ["Sheet1", "Sheet2", "Sheet3"]
    for sheet in sheets.values():
        assert [c.value for c in sheet[0]] == FIELDS
    assert [[int(r[0].value) for r in s[1:]] for s in sheets.values()] == [
        [1, 2, 3], [4, 5, 6], [7]]
    assert sheets["Sheet3"][1][1].value == "第7行"


def test_xlsx_keeps_long_numbers_exact_as_text(tmp_path: Path) -> None:
    rows = [(110101199003071234, "x", None, None, None, Decimal("12345678901234567.89"), None)]
    (row,) = read_xlsx(download(tmp_path, "xlsx", rows))["Sheet1"][1:]
    assert row[0].value == "110101199003071234"
    assert row[5].value == "12345678901234567.89"


# -- resume -----------------------------------------------------------------------------

GARBAGE = {"csv": b'5,\xe7\xac\xac5\xe8\xa1\x8c,,2024-01-0', "jsonl": b'{"id": 5, "\xe5\xa7',
           "xlsx": b'[5, "\xe7\xac\xac5'}


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_a_crash_writes_every_row_once(tmp_path: Path, fmt: str) -> None:
    rows = chunked(6)
    path = tmp_path / f"out.{fmt}"
    part = path.with_name(path.name + ".part")
    d = Download.open(path, fmt, FIELDS, meta={"query": "people where age > 18"})
    d.write(rows[:2], cursor={"id": 2})
    d.write(rows[2:4], cursor={"id": 4})
    d.abort()  # what a killed process leaves: the files as they are, the lock gone

    state = resumable(path)
    assert state is not None
    assert (state["rows"], state["cursor"], state["bytes"]) == (4, {"id": 4}, part.stat().st_size)
    with open(part, "ab") as f:  # the third chunk was half written when the process died
        f.write(GARBAGE[fmt])

    d = Download.open(path, fmt, FIELDS, resume=True)
    assert (d.rows, d.cursor, d.meta) == (4, {"id": 4}, {"query": "people where age > 18"})
    assert part.stat().st_size == state["bytes"]  # the half chunk is cut off
    d.write(rows[4:], cursor={"id": 6})
    assert d.finish() == 6
    assert ids(path, fmt) == [1, 2, 3, 4, 5, 6]
    assert resumable(path) is None and sorted(os.listdir(tmp_path)) == [path.name]


def test_a_failed_write_keeps_the_rows_before_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rows = chunked(4)
    path = tmp_path / "out.csv"
    d = Download.open(path, "csv", FIELDS)
    d.write(rows[:2], cursor=2)

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats, "_write_state", disk_full)
    with pytest.raises(FormatError, match=r"No space left on device.*first 2 rows.*--resume"):
        d.write(rows[2:], cursor=4)
    monkeypatch.undo()
    state = resumable(path)
    assert state is not None and state["rows"] == 2
    assert (tmp_path / "out.csv.part").stat().st_size == state["bytes"]  # rolled back
    d = Download.open(path, "csv", FIELDS, resume=True)
    assert (d.rows, d.cursor) == (2, 2)
    d.write(rows[2:], cursor=4)
    d.finish()
    assert ids(path, "csv") == [1, 2, 3, 4]


def test_resume_with_nothing_cut_starts_afresh(tmp_path: Path) -> None:
    d = Download.open(tmp_path / "out.jsonl", "jsonl", FIELDS, resume=True)
    assert (d.rows, d.cursor, d.meta) == (0, None, {})
    d.write(ROWS, cursor=2)
    assert d.finish() == 2


def cut_download(tmp_path: Path, fmt: str = "csv", **kw: Any) -> Path:
    path = tmp_path / f"out.{fmt}"
    d = Download.open(path, fmt, FIELDS, **kw)
    d.write(ROWS[:1], cursor=1)
    d.abort()
    return path


@pytest.mark.parametrize(("fmt", "fields", "message"), [
    ("csv", [*FIELDS[:-1], "头像"], r"other fields \(not asked now: 照片; new: 头像\)"),
    ("csv", FIELDS[::-1], r"other fields \(in another order\)"),
    ("jsonl", FIELDS, r"is a csv download, not jsonl"),
])
def test_resume_with_other_settings_is_refused(tmp_path: Path, fmt: str, fields: list[str],
                                               message: str) -> None:
    path = cut_download(tmp_path)
    path_part = path.with_name("out.csv.part")
    size = path_part.stat().st_size
    with pytest.raises(FormatError, match=message) as e:
        Download.open(tmp_path / "out.csv", fmt, fields, resume=True)
    assert "\n" not in str(e.value) and "delete" in str(e.value)
    assert path_part.stat().st_size == size  # nothing touched


def test_resume_with_another_query_is_refused(tmp_path: Path) -> None:
    path = cut_download(tmp_path, meta={"query": "a", "limit": 10})
    with pytest.raises(FormatError, match="started with a different query;"):
        Download.open(path, "csv", FIELDS, meta={"query": "b", "limit": 10}, resume=True)
    d = Download.open(path, "csv", FIELDS, meta={"query": "a", "limit": 10}, resume=True)
    assert d.rows == 1
    d.abort()


def test_part_file_without_resume_is_refused(tmp_path: Path) -> None:
    path = cut_download(tmp_path)
    part = tmp_path / "out.csv.part"
    before = part.read_bytes()
    with pytest.raises(FormatError) as e:
        Download.open(path, "csv", FIELDS)
    assert str(e.value) == (f"{part} exists: a download was cut; add --resume to continue it, "
                            f"or delete {part}")
    assert isinstance(e.value, UsageError)
    assert part.read_bytes() == before


def test_part_file_without_its_sidecar_cannot_be_resumed(tmp_path: Path) -> None:
    path = cut_download(tmp_path)
    (tmp_path / "out.csv.part.json").unlink()
    assert resumable(path) is None
    with pytest.raises(FormatError, match=r"out\.csv\.part\.json is missing"):
        Download.open(path, "csv", FIELDS, resume=True)


def test_a_part_file_being_written_cannot_be_opened_twice(tmp_path: Path) -> None:
    path = cut_download(tmp_path)
    d = Download.open(path, "csv", FIELDS, resume=True)
    with pytest.raises(FormatError, match="being written by another download"):
        Download.open(path, "csv", FIELDS, resume=True)
    d.abort()


@pytest.mark.parametrize(("fmt", "where", "kw", "message"), [
    ("parquet", "out.x", {}, "unknown format 'parquet'"),
    ("csv", "missing/out.csv", {}, "directory .*missing does not exist"),
    ("jsonl", "out.jsonl", {"bom": True}, "--bom is for csv only"),
])
def test_bad_requests_are_format_errors(tmp_path: Path, fmt: str, where: str,
                                        kw: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Download.open(tmp_path / where, fmt, FIELDS, **kw)
    assert os.listdir(tmp_path) == []


# -- files and formulas -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_files_are_created_0600(tmp_path: Path, fmt: str) -> None:
    old = os.umask(0)  # so that only an explicit mode gives 0600
    try:
        path = tmp_path / f"out.{fmt}"
        d = Download.open(path, fmt, FIELDS)
        d.write(ROWS, cursor=2)
        for name in (f"out.{fmt}.part", f"out.{fmt}.part.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        d.finish()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


TRICKY = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "a=b", "安全"]


def formula_row(text: str) -> tuple[Any, ...]:
    return (-5, text, None, None, None, None, b"\xfb\xff")  # base64 of the bytes is "+/8="


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
@pytest.mark.parametrize("safe", [True, False])
def test_formula_injection_prefix(tmp_path: Path, fmt: str, safe: bool) -> None:
    path = download(tmp_path, fmt, [formula_row(t) for t in TRICKY], safe_formulas=safe)
    if fmt == "csv":
        got = [(r[0], r[1], r[6]) for r in read_csv(path)[1:]]
    else:
        got = [(r[0].value, r[1].value, r[6].value) for r in read_xlsx(path)["Sheet1"][1:]]
    number = "-5" if fmt == "csv" else -5.0
    expected = [("'" + t if safe and t[0] in "=+-@\t\r" else t) for t in TRICKY]
    assert got == [(number, t, "+/8=") for t in expected]
    assert expected[-2:] == ["a=b", "安全"]


def test_jsonl_is_never_prefixed(tmp_path: Path) -> None:
    path = download(tmp_path, "jsonl", [formula_row(t) for t in TRICKY])
    assert [r["姓名"] for r in read_jsonl(path)] == TRICKY

