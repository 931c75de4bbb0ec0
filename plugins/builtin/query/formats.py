"""Writing a query result to a file: ``exnode query RES ... --format csv|jsonl|xlsx -o FILE``.

A result can be millions of rows. They arrive in chunks (pages of a few thousand rows,
each a list of tuples in the order of ``fields``), and the download must survive being
cut: the process killed or the network gone half way. So this module has three rules.

Bounded memory. Rows go to disk as they arrive, to the part file ``FILE.part`` next to
the target, never into a list. CSV and JSON Lines are written in their final form. An
.xlsx file is a zip that can only be written whole, so for xlsx the part file holds JSON
Lines (one JSON array per row) and ``finish()`` converts it with XlsxWriter in
``constant_memory`` mode, which keeps one row in memory and spools each sheet to a
temporary file. Those files go in a private (0700) directory next to the target that
is removed afterwards, not in /tmp: /tmp is often a tmpfs (RAM), and the data may be
personal.

Resume (断点续传). The sidecar ``FILE.part.json`` holds the state after the last whole
chunk: format, fields, rows written, the byte length of the part file at that point,
the caller's ``cursor`` (JSON-able; for keyset pagination the key of the chunk's last
row) and the caller's ``meta`` (say, the query, so a resume can check it asks the same
thing). Each chunk is written, flushed and fsync'd to the part file *before* the sidecar
is replaced atomically (temporary file, fsync, ``os.replace``). After a crash the part
file is therefore as long as the sidecar says or longer, never shorter, and the extra
bytes are the half-written next chunk. ``open(resume=True)`` cuts the part file back to
the recorded length and hands the cursor back; the caller asks for the rows after it.
Every row ends up in the file exactly once. ``finish()`` moves the result into place with
``os.replace`` (so FILE is never half written) and deletes the sidecar; ``abort()``
closes and keeps both files for a later resume. A lock (flock) on the part file stops
two downloads writing the same file. Every file is created 0600: it may hold personal
data.

Formula injection (公式注入). A CSV cell such as ``=HYPERLINK(...)`` becomes a live
formula when the file is opened in Excel or WPS, so by default (``safe_formulas=True``)
a string that starts with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``
in CSV and xlsx (OWASP's advice; ``"-5"`` as a string becomes ``"'-5"``, numbers are not
touched). The xlsx writer always writes strings as string cells, never as formulas; the
prefix there protects the next person who saves the sheet as CSV. JSON Lines is data
for programs and is never changed. Base64 text of bytes cannot hold a formula and is not
prefixed.

Values, per format (CSV / JSON Lines / xlsx):

- ``None``: empty cell / ``null`` / empty cell (so in CSV and xlsx an empty string and
  ``None`` look the same).
- date, datetime, time: ISO 8601 text / ISO text / a date cell. Excel has no time zones:
  an aware datetime is written at its own wall-clock time, without the offset; dates
  before 1900 (which Excel cannot show) are written as ISO text.
- Decimal: plain digits, never an exponent / a JSON *string*, to stay exact / a number.
- bytes: base64 in all three.
- bool: ``true``/``false`` / JSON boolean / a boolean cell.
- int, float: as is. Excel keeps 15 significant digits, so in xlsx an int or Decimal
  with more (an 18-digit ID, say) is written as text rather than silently rounded.
  A float or Decimal that is NaN or infinite is the text ``NaN``/``Infinity``/
  ``-Infinity`` (JSON has no such numbers).
- dict, list (JSON columns): JSON text / nested JSON / JSON text.
- anything else (UUID, timedelta, ...): ``str(value)``.

CSV is RFC 4180 (``\\r\\n``, the csv module's quoting) in UTF-8 with a header row of the
field names; ``bom=True`` starts it with a UTF-8 BOM, without which Excel reads Chinese
as GBK. JSON Lines is one object ``{field: value}`` per line, UTF-8, not ASCII-escaped.
xlsx has a bold, frozen header row on every sheet and at most ``XLSX_SHEET_ROWS`` data
rows per sheet (Excel's 1,048,576 rows less the header); the rows after that continue on
``Sheet2``, ``Sheet3``... Excel cuts a cell at 32,767 characters; so does XlsxWriter.

Everything a user can cause (a bad format, a missing directory, a cut download, a full
disk) is a :class:`FormatError`, which the CLI prints as one line. A row of the wrong
length or a cursor that is not JSON-able is the caller's bug and raises ValueError or
TypeError before anything is written.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from exnode.node.base.errors import UsageError

FORMATS: Final = ("csv", "jsonl", "xlsx")

XLSX_SHEET_ROWS = 1_048_575
"""Data rows per xlsx sheet: Excel's 1,048,576 rows less the header row. A module
constant so that a test can make it small."""

XLSX_MAX_COLUMNS: Final = 16_384
XLSX_EXACT_DIGITS: Final = 15
"""Significant digits an Excel number keeps; longer ints and Decimals go in as text."""

STATE_VERSION: Final = 1
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
_EXCEL_FIRST_YEAR: Final = 1900
_MODE: Final = 0o600


class FormatError(UsageError):
    """A download cannot be written, continued or finished as asked."""


def part_path(path: Path) -> Path:
    """Where the rows of a download to ``path`` are written until ``finish()``."""
    return path.with_name(path.name + ".part")


def state_path(path: Path) -> Path:
    """The sidecar that holds the resume state of a download to ``path``."""
    return path.with_name(path.name + ".part.json")


def resumable(path: Path) -> dict[str, Any] | None:
    """The recorded state (format, fields, rows, bytes, cursor, meta, ...) of a cut
    download to ``path``, or None when there is no part file with a sidecar."""
    if not part_path(path).exists() or not state_path(path).exists():
        return None
    return _read_state(path)


class Download:
    """One file being written from a stream of row chunks. Make it with :meth:`open`;
    then :meth:`write` each chunk, then :meth:`finish` (or :meth:`abort` to stop and
    keep what is there for a resume). A failed write closes the download as
    :meth:`abort` does: open it again with ``resume=True``."""

    rows: int
    """Rows written so far; after a resume, the rows that were already there."""
    cursor: Any
    """The cursor recorded with the last chunk written (None at the start)."""
    meta: dict[str, Any]
    """What the caller asked to keep with the download (after a resume: as recorded)."""

    def __init__(self, path: Path, state: dict[str, Any], fh: IO[bytes]) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.fmt: str = state["format"]
        self.fields: list[str] = list(state["fields"])
        self.rows = state["rows"]
        self.cursor = state["cursor"]
        self.meta = state["meta"]
        self._state = state
        self._raw = fh
        self._text: io.TextIOWrapper | None = io.TextIOWrapper(
            fh, encoding="utf-8", newline="", write_through=False)
        self._csv = csv.writer(self._text, lineterminator="\r\n")
        self._safe: bool = state["safe_formulas"]
        self._done = False

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, fmt: str, fields: list[str], *, bom: bool = False,
             meta: dict[str, Any] | None = None, resume: bool = False,
             safe_formulas: bool = True) -> Download:
        """Start a download to ``path``, or with ``resume=True`` continue the cut one
        whose part file is there (with nothing to continue it starts afresh: check
        ``rows`` and ``cursor``). When resuming, a ``meta`` that is not None must equal
        the recorded one; pass None to read the recorded ``meta`` and check it yourself."""
        path = Path(path)
        fields = list(fields)
        _check_request(path, fmt, fields, bom)
        part = part_path(path)
        if part.exists():
            if not resume:
                raise FormatError(f"{part} exists: a download was cut; add --resume to "
                                  f"continue it, or delete {part}")
            return cls._resume(path, fmt, fields, bom, meta, safe_formulas)
        return cls._start(path, fmt, fields, bom, meta or {}, safe_formulas)

    @classmethod
    def _start(cls, path: Path, fmt: str, fields: list[str], bom: bool,
               meta: dict[str, Any], safe_formulas: bool) -> Download:
        part = part_path(path)
        state: dict[str, Any] = {
            "version": STATE_VERSION, "format": fmt, "fields": fields, "bom": bom,
            "safe_formulas": safe_formulas, "rows": 0, "bytes": 0, "cursor": None,
            "meta": _json_copy(meta, "meta"),
        }
        try:
            fd = _create(part, os.O_WRONLY | os.O_EXCL)
        except FileExistsError:
            raise FormatError(f"{part} exists: a download was cut; add --resume to "
                              f"continue it, or delete {part}") from None
        except OSError as e:
            raise FormatError(f"cannot create {part}: {e.strerror}") from None
        try:
            download = cls(path, state, _locked(fd, part))
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        try:
            if fmt == "csv":
                assert download._text is not None
                if bom:
                    download._text.write("\ufeff")
                download._csv.writerow([download._cell(f) for f in fields])
            download._commit(0, None)
        except BaseException as e:
            download._close()  # nothing worth resuming yet: leave no part file behind
            part.unlink(missing_ok=True)
            state_path(path).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise FormatError(f"cannot write {part}: {e.strerror}") from None
            raise
        return download

    @classmethod
    def _resume(cls, path: Path, fmt: str, fields: list[str], bom: bool,
                meta: dict[str, Any] | None, safe_formulas: bool) -> Download:
        part = part_path(path)
        if not state_path(path).exists():
            raise FormatError(f"{part} cannot be resumed: {state_path(path).name} is "
                              f"missing; delete {part} to start again")
        state = _read_state(path)
        _check_same(part, state, fmt, fields, bom, safe_formulas, meta)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise FormatError(f"cannot open {part}: {e.strerror}") from None
        fh = _locked(fd, part)
        try:
            size = os.fstat(fd).st_size
            if size < state["bytes"]:
                raise FormatError(
                    f"{part} is shorter than {state_path(path).name} records ({size} < "
                    f"{state['bytes']} bytes); delete both to start again")
            os.ftruncate(fd, state["bytes"])  # drop the half-written chunk after a crash
            os.fsync(fd)
            fh.seek(state["bytes"])
        except OSError as e:
            fh.close()
            raise FormatError(f"cannot resume {part}: {e.strerror}") from None
        except FormatError:
            fh.close()
            raise
        return cls(path, state, fh)

    # -- writing ----------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[Any, ...]], cursor: Any) -> None:
        """Append a chunk of rows and record ``cursor`` with it. When this returns, the
        chunk is on disk and a resume continues after it."""
        if self._done or self._text is None:
            raise ValueError(f"download to {self.path} is closed")
        width = len(self.fields)
        for n, row in enumerate(rows):
            if len(row) != width:
                raise ValueError(f"row {n} of the chunk has {len(row)} values for "
                                 f"{width} fields")
        cursor = _json_copy(cursor, "cursor")  # fails here, before any byte is written
        try:
            if self.fmt == "csv":
                self._csv.writerows([self._cell(v) for v in row] for row in rows)
            elif self.fmt == "jsonl":
                fields = self.fields
                for row in rows:
                    obj = {f: _json_value(v) for f, v in zip(fields, row, strict=True)}
                    self._text.write(json.dumps(obj, ensure_ascii=False, default=_json_default)
                                     + "\n")
            else:
                for row in rows:
                    self._text.write(json.dumps([self._xlsx_value(v) for v in row],
                                                ensure_ascii=False) + "\n")
            self._commit(len(rows), cursor)
        except (OSError, UnicodeError) as e:
            self._rollback()
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise FormatError(f"cannot write {part_path(self.path)}: {why}; its first "
                              f"{self.rows} rows are kept, add --resume to continue") from None
        except BaseException:
            self._rollback()
            raise

    def write_csv(self, body: bytes, rows: int, cursor: Any) -> None:
        """Append a chunk that is already CSV: ``rows`` records as :func:`csv_body`
        makes them (or a holder's database, to the same rules), and record ``cursor``
        with it. Only for a CSV download; the bytes go to disk unparsed."""
        if self._done or self._text is None:
            raise ValueError(f"download to {self.path} is closed")
        if self.fmt != "csv":
            raise ValueError(f"a CSV chunk for a {self.fmt} download")
        if body and not body.endswith(b"\n"):
            raise ValueError("a CSV chunk must end with a line break")
        cursor = _json_copy(cursor, "cursor")
        try:
            self._text.flush()
            self._raw.write(body)
            self._commit(rows, cursor)
        except OSError as e:
            self._rollback()
            raise FormatError(f"cannot write {part_path(self.path)}: {e.strerror}; its "
                              f"first {self.rows} rows are kept, add --resume to "
                              f"continue") from None
        except BaseException:
            self._rollback()
            raise

    def _commit(self, added: int, cursor: Any) -> None:
        """Make the written bytes durable, then record them in the sidecar."""
        assert self._text is not None
        self._text.flush()
        os.fsync(self._raw.fileno())
        state = dict(self._state, rows=self._state["rows"] + added, bytes=self._raw.tell(),
                     cursor=cursor)
        _write_state(self.path, state)
        self._state = state
        self.rows, self.cursor = state["rows"], state["cursor"]

    def _rollback(self) -> None:
        """After a failed write: cut the part file back to the last recorded chunk (a
        resume would do so anyway) and close it."""
        if self._text is not None:
            with contextlib.suppress(Exception):
                self._text.flush()
        with contextlib.suppress(OSError):
            os.ftruncate(self._raw.fileno(), self._state["bytes"])
        self._close()

    # -- ending -----------------------------------------------------------------------

    def finish(self) -> int:
        """Put the finished file at ``path`` (replacing what was there), delete the
        part and sidecar files and return the number of data rows."""
        if self._done or self._text is None:
            raise ValueError(f"download to {self.path} is closed")
        part = part_path(self.path)
        try:
            self._text.flush()
            os.fsync(self._raw.fileno())
            if self.fmt == "xlsx":
                _write_xlsx(part, self.path, [self._text_cell(f) for f in self.fields])
                self._close()
                part.unlink()
            else:
                self._close()
                os.replace(part, self.path)
            _fsync_dir(self.path.parent)
            state_path(self.path).unlink(missing_ok=True)
        except OSError as e:
            self._close()
            raise FormatError(f"cannot finish {self.path}: {e.strerror}; the rows are kept "
                              f"in {part}, add --resume to try again") from None
        except BaseException:
            self._close()
            raise
        self._done = True
        return self.rows

    def abort(self) -> None:
        """Stop writing and keep the part and sidecar files, so that a later
        ``open(..., resume=True)`` continues after the last whole chunk."""
        self._close()

    def _close(self) -> None:
        text, self._text = self._text, None
        if text is not None:
            with contextlib.suppress(Exception):
                text.close()  # closes the part file too, which drops the lock
        with contextlib.suppress(Exception):
            self._raw.close()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Leaving the block without :meth:`finish` is an abort."""
        if not self._done:
            self.abort()

    # -- values -----------------------------------------------------------------------

    def _cell(self, value: Any) -> str:
        """One value as CSV text."""
        return csv_cell(value, self._safe)

    def _xlsx_value(self, value: Any) -> Any:
        """One value as it goes into the xlsx part file: a JSON scalar, or a one-key
        object for a date (``d``), datetime (``dt``) or time (``t``) cell."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self._text_cell(value)
        if isinstance(value, int):
            return value if abs(value) < 10**XLSX_EXACT_DIGITS else str(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else _non_finite(value)
        if isinstance(value, Decimal):
            if value.is_finite() and (len(value.normalize().as_tuple().digits)
                                      <= XLSX_EXACT_DIGITS):
                number = float(value)
                if math.isfinite(number):
                    return number
            return _decimal_text(value)
        if isinstance(value, dt.datetime):
            if value.year < _EXCEL_FIRST_YEAR:
                return value.isoformat()
            return {"dt": value.replace(tzinfo=None).isoformat()}
        if isinstance(value, dt.date):
            return value.isoformat() if value.year < _EXCEL_FIRST_YEAR else {
                "d": value.isoformat()}
        if isinstance(value, dt.time):
            return {"t": value.replace(tzinfo=None).isoformat()}
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, dict | list | tuple):
            return json.dumps(value, ensure_ascii=False, default=_json_default)
        return self._text_cell(str(value))

    def _text_cell(self, text: str) -> str:
        return _guard(text, self._safe)


# -- values shared by the formats -------------------------------------------------------

def _guard(text: str, safe: bool) -> str:
    if safe and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def csv_cell(value: Any, safe: bool = True) -> str:
    """One value as CSV text (the rules in the module's docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return _guard(value, safe)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _non_finite(value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return _guard(str(value), safe)


def csv_body(rows: Sequence[Sequence[Any]], safe: bool = True) -> bytes:
    """Rows as the data lines of a CSV download (UTF-8, CRLF, no header), ready for
    :meth:`Download.write_csv`: what a holder sends when its database cannot render
    the page itself (see :func:`sql_csv_cell`)."""
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\r\n")
    w.writerows([csv_cell(v, safe) for v in r] for r in rows)
    return out.getvalue().encode("utf-8")


#: Column kinds whose CSV text a database renders exactly as :func:`csv_cell` does
#: (floats and times are not among them: PostgreSQL writes 100.0 as 100 and a
#: timestamp with a space where Python writes a T).
SQL_CSV_KINDS: Final = frozenset({"str", "int", "decimal", "date", "bool", "uuid"})


def sql_csv_cell(col: Any, kind: str, safe: bool = True) -> Any:
    """A SQLAlchemy expression that makes the database write a column's value as
    :func:`csv_cell` would (for COPY ... TO STDOUT); None when the kind cannot be
    rendered exactly, and the holder formats the rows itself. Written for PostgreSQL,
    the one dialect that exports pages (``Dialect.export_csv``). Values stay bound
    parameters; the formula guard is a CASE on the first character."""
    import sqlalchemy as sa

    if kind not in SQL_CSV_KINDS:
        return None
    if kind == "bool":
        return sa.case((col.is_(True), sa.literal("true")),
                       (col.is_(False), sa.literal("false")), else_=sa.null())
    if kind == "str" and safe:
        # concat() keeps CHAR(n)'s padding, as the driver does; a CASE that mixed CHAR
        # and text would cast to text, which drops it.
        padded = isinstance(col.type, sa.CHAR)
        plain = sa.func.concat(col) if padded else col
        guarded = sa.case((col.is_(None), sa.null()),
                          (sa.func.substr(col, 1, 1).in_(list(_FORMULA_STARTS)),
                           sa.func.concat("'", col)), else_=sa.func.concat(col))
        if isinstance(col.type, sa.Enum) or not isinstance(col.type, sa.String):
            return guarded
        # Most text starts with a byte from "0" to "<" or from "A" up (digits,
        # letters, Chinese), and none of those can start a formula: two byte-order
        # comparisons settle it and only the rest pay for the full check. That halves
        # the cost of the guard (50,000 rows of four text columns: 50 ms, not 90).
        c = col.collate("C")
        return sa.case((sa.and_(c >= "0", sa.or_(c < "=", c >= "A")), plain),
                       else_=guarded)
    return col


def crlf_lines(body: bytes) -> bytes:
    """CSV from a database (LF after each record) with CRLF record ends, as the CSV
    module writes them; a line break inside a quoted value is left as it is. Quotes
    inside values are doubled, so the text outside quotes is every other piece
    between quote characters."""
    if b'"' not in body:
        return body.replace(b"\n", b"\r\n")
    parts = body.split(b'"')
    parts[0::2] = [p.replace(b"\n", b"\r\n") for p in parts[0::2]]
    return b'"'.join(parts)


def _non_finite(number: float) -> str:
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def _decimal_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")  # Decimal("0E-10") from NUMERIC(10,10) is "0.0000000000"


def _json_value(value: Any) -> Any:
    """One value for a JSON Lines object (nested values go through _json_default)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, dict | list):
        return value
    return _json_default(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _decimal_text(value)  # a string: a JSON number would be read as a float
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


# -- checks and the sidecar -------------------------------------------------------------

def _check_request(path: Path, fmt: str, fields: list[str], bom: bool) -> None:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not fields:
        raise FormatError("a download needs at least one field")
    if not all(isinstance(f, str) and f for f in fields):
        raise FormatError("every field name must be a non-empty string")
    if len(set(fields)) != len(fields):
        twice = sorted({f for f in fields if fields.count(f) > 1})
        raise FormatError(f"fields named twice: {', '.join(twice)}")
    if fmt == "xlsx" and len(fields) > XLSX_MAX_COLUMNS:
        raise FormatError(f"{len(fields)} fields are more than the {XLSX_MAX_COLUMNS} "
                          "columns an xlsx sheet has; use csv or jsonl")
    if bom and fmt != "csv":
        raise FormatError("--bom is for csv only")
    if not path.parent.is_dir():
        raise FormatError(f"directory {path.parent} does not exist")
    if path.is_dir():
        raise FormatError(f"{path} is a directory; name the file to write")


def _check_same(part: Path, state: dict[str, Any], fmt: str, fields: list[str], bom: bool,
                safe_formulas: bool, meta: dict[str, Any] | None) -> None:
    """Refuse to continue a download with other settings than it was started with."""
    redo = f"delete {part} to start again"
    if state["format"] != fmt:
        raise FormatError(f"{part} is a {state['format']} download, not {fmt}; {redo}")
    if state["fields"] != fields:
        was, now = state["fields"], fields
        gone = [f for f in was if f not in now]
        new = [f for f in now if f not in was]
        how = "; ".join(x for x in (
            f"not asked now: {', '.join(gone)}" if gone else "",
            f"new: {', '.join(new)}" if new else "") if x) or "in another order"
        raise FormatError(f"{part} was started with other fields ({how}); {redo}")
    if state["bom"] != bom:
        raise FormatError(f"{part} was started {'with' if state['bom'] else 'without'} "
                          f"--bom; give the same options to resume, or {redo}")
    if state["safe_formulas"] != safe_formulas:
        raise FormatError(f"{part} was started with safe formulas "
                          f"{'on' if state['safe_formulas'] else 'off'}; give the same "
                          f"options to resume, or {redo}")
    if meta is not None:
        asked = _json_copy(meta, "meta")
        keys = sorted(k for k in set(asked) | set(state["meta"])
                      if asked.get(k) != state["meta"].get(k))
        if keys:
            raise FormatError(f"{part} was started with a different {', '.join(keys)}; "
                              f"{redo}")


_STATE_TYPES: Final[dict[str, type]] = {
    "version": int, "format": str, "fields": list, "bom": bool, "safe_formulas": bool,
    "rows": int, "bytes": int, "meta": dict,
}


def _read_state(path: Path) -> dict[str, Any]:
    sidecar = state_path(path)
    try:
        state = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"cannot read {sidecar}: {e.strerror}") from None
    except ValueError as e:
        raise FormatError(f"{sidecar} is not a download state ({e}); delete it and "
                          f"{part_path(path).name} to start again") from None
    bad = not isinstance(state, dict) or "cursor" not in state or any(
        not isinstance(state.get(k), t) for k, t in _STATE_TYPES.items())
    if (bad or state["version"] != STATE_VERSION or state["format"] not in FORMATS
            or state["rows"] < 0 or state["bytes"] < 0):
        raise FormatError(f"{sidecar} is not a download state this exnode can resume; "
                          f"delete it and {part_path(path).name} to start again")
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the sidecar atomically: a crash leaves the old state or the new one."""
    sidecar = state_path(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    data = json.dumps(state, ensure_ascii=False, indent=1).encode("utf-8")
    fd = _create(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, sidecar)
    _fsync_dir(path.parent)


def _json_copy(value: Any, what: str) -> Any:
    """``value`` as it comes back from the sidecar; TypeError if it is not JSON-able."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"the download's {what} must be JSON-able: {e}") from None


def _create(path: Path, flags: int) -> int:
    """Create ``path`` 0600 whatever the umask (it may hold personal data)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, _MODE)
    try:
        os.fchmod(fd, _MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def _locked(fd: int, part: Path) -> IO[bytes]:
    fh = os.fdopen(fd, "wb")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise FormatError(f"{part} is being written by another download") from None
    return fh


def _fsync_dir(directory: Path) -> None:
    """Make a create, rename or delete in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- xlsx -------------------------------------------------------------------------------

def _write_xlsx(part: Path, path: Path, header: list[str]) -> None:
    """Convert the JSON Lines part file into ``path``, one row in memory at a time.
    XlsxWriter spools each sheet to a file, and the workbook itself is written, in a
    private (0700) directory next to ``path`` that goes away whatever happens; the
    workbook is then renamed over ``path``."""
    import xlsxwriter  # ~0.1 s to import; only an xlsx download pays it
    from xlsxwriter.exceptions import XlsxWriterException

    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as work:
        tmp = Path(work) / "out.xlsx"
        os.close(_create(tmp, os.O_WRONLY))
        workbook = xlsxwriter.Workbook(str(tmp), {
            "constant_memory": True, "tmpdir": work, "use_zip64": True,
            "strings_to_formulas": False, "strings_to_urls": False,
            "strings_to_numbers": False,
        })
        try:
            _fill_workbook(workbook, part, header)
            workbook.close()
        except XlsxWriterException as e:
            raise FormatError(f"cannot write {path}: {e}") from None
        finally:
            for sheet in workbook.worksheets():  # a failed fill leaves spool files open
                with contextlib.suppress(Exception):
                    sheet._opt_close()
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)


def _fill_workbook(workbook: Any, part: Path, header: list[str]) -> None:
    bold = workbook.add_format({"bold": True})
    formats = {"d": workbook.add_format({"num_format": "yyyy-mm-dd"}),
               "dt": workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
               "t": workbook.add_format({"num_format": "hh:mm:ss"})}
    parse = {"d": dt.date.fromisoformat, "dt": dt.datetime.fromisoformat,
             "t": dt.time.fromisoformat}
    widths = {"d": 11, "dt": 20, "t": 9}
    header_widths = [_display_width(f) + 2 for f in header]
    limit = XLSX_SHEET_ROWS
    sheet: Any = None
    col_widths: list[int] = []

    def new_sheet(number: int) -> Any:
        ws = workbook.add_worksheet(f"Sheet{number}")
        ws.freeze_panes(1, 0)
        for c, name in enumerate(header):
            ws.write_string(0, c, name, bold)
        return ws

    def close_sheet() -> None:
        for c, w in enumerate(col_widths):
            if w > 9:  # wider than Excel's default column, or dates show as ####
                sheet.set_column(c, c, w)

    for n, values in enumerate(_part_rows(part)):
        if n % limit == 0:
            if sheet is not None:
                close_sheet()
            sheet = new_sheet(n // limit + 1)
            col_widths = list(header_widths)
        r = n % limit + 1
        for c, v in enumerate(values):
            if v is None or v == "":  # an empty cell, not an empty string cell
                continue
            if isinstance(v, str):
                sheet.write_string(r, c, v)
            elif isinstance(v, bool):
                sheet.write_boolean(r, c, v)
            elif isinstance(v, int | float):
                sheet.write_number(r, c, v)
            else:
                (kind, text), = v.items()
                sheet.write_datetime(r, c, parse[kind](text), formats[kind])
                col_widths[c] = max(col_widths[c], widths[kind])
    if sheet is None:  # no rows: a sheet with the header only
        sheet = new_sheet(1)
        col_widths = list(header_widths)
    close_sheet()


def _part_rows(part: Path) -> Iterator[list[Any]]:
    with open(part, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _display_width(text: str) -> int:
    """Columns a header needs: CJK characters are about two wide."""
    return sum(1 if ord(ch) < 0x1100 else 2 for ch in text)
