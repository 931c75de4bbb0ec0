"""SQL adapter: one information resource (信息资源) in one relational database.

The adapter reads a resource's rows for capture (keyset chunks, watermark ranges, by
key), applies received change batches exactly once, and fingerprints rows and tables
for verification (核验). It speaks SQLAlchemy Core; what differs between databases
is asked of the :class:`~exnode.adapters.dialects.Dialect` that the adapter's
:class:`~exnode.adapters.dialects.DialectRegistry` picks for the engine when it opens.
Tested on PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL) and SQLite, and the generic,
portable path on PostgreSQL and SQLite; Oracle and SQL Server take that generic path
through their SQLAlchemy dialects (not tested here).

Values read are plain Python values, the same for the same data on every database:
MySQL's TINYINT(1) reads as bool, DOUBLE as float, TIME as ``datetime.time``.

Timestamps. A timestamp without time zone is taken to be in ``naive_tz`` (UTC unless
the adapter is told otherwise) wherever it meets one with a time zone: writing an aware
value into a naive column stores its wall time in ``naive_tz``, writing a naive value
into a zone-aware column (PostgreSQL ``timestamptz``) reads it in ``naive_tz``, and
:func:`row_hash` hashes both as the instant. MySQL sessions are set to UTC so that
TIMESTAMP columns are instants too.

Exactly once. :meth:`SqlAdapter.apply` writes a marker row into ``exnode_applied`` in
the same transaction as the data, so a package applied before a crash is recognised
afterwards. While the transaction runs it also holds a row in ``exnode_applying``;
capture triggers skip changes made while that row is visible, which only the
applier's own session can see, so received changes are not captured and sent back.

Exact values. A value the target column cannot keep exactly is never changed silently:
each target column has a checker, built once from its reflected type by the dialect
(:meth:`~exnode.adapters.dialects.Dialect.exact_checker`), and :meth:`SqlAdapter.apply`
runs it on every value before anything is written. SQLite has no exact decimal type (a
DECIMAL column keeps about 15 significant digits), PostgreSQL rounds a NUMERIC to its
scale and a TIMESTAMP(p) to its precision, MariaDB a DATETIME to whole seconds, a
VARCHAR(n) keeps n characters: a change holding such a value raises
:class:`Unstorable`, which names each such change and why, and the applier quarantines
those and applies the others. A decimal into a text column is stored as its text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from exnode.node.base.config import ResourceSpec
from exnode.policies.changes import ChangeBatch

from .contract import ApplyError, SchemaMismatch
from .dialects import Dialect, DialectRegistry, default_registry
from .dialects.exact import Checker

log = logging.getLogger(__name__)

APPLIED_TABLE = "exnode_applied"
APPLYING_TABLE = "exnode_applying"

_markers = sa.MetaData()
applied_table = sa.Table(
    APPLIED_TABLE, _markers,
    sa.Column("pkg_id", sa.String(64), primary_key=True),
    sa.Column("origin", sa.String(128), nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime, nullable=False),  # UTC
    sa.Column("row_count", sa.Integer, nullable=False),  # ROWS is reserved in MySQL
)
applying_table = sa.Table(
    APPLYING_TABLE, _markers,
    sa.Column("pkg_id", sa.String(64), primary_key=True),
)

_UTC = dt.UTC
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)
_SCAN_ROWS = 5000


def ensure_marker_tables(engine: Engine) -> None:
    """Create ``exnode_applied`` and ``exnode_applying`` in the database's default
    schema if they are missing. Capture triggers refer to ``exnode_applying``: call
    this before installing them."""
    try:
        _markers.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        # Another node process may have created them between the check and the CREATE.
        insp = sa.inspect(engine)
        if not all(insp.has_table(t) for t in (APPLIED_TABLE, APPLYING_TABLE)):
            raise


# ---- canonical row hash -------------------------------------------------------------------

def _canon_decimal(d: Decimal) -> bytes:
    if not d.is_finite():
        return str(d).encode()
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    ds = list(digits)
    while len(ds) > 1 and ds[-1] == 0:
        ds.pop()
        exp += 1
    if ds == [0]:
        return b"0"
    return f"{'-' if sign else ''}{''.join(map(str, ds))}e{exp}".encode()


def _canon(v: Any, naive_tz: dt.tzinfo) -> bytes:
    if v is None:
        return b"N"
    if isinstance(v, bool):
        return b"B1" if v else b"B0"
    if isinstance(v, int):
        return b"I%d" % v
    if isinstance(v, float):
        return b"F" + repr(v + 0.0).encode()  # + 0.0 folds -0.0 into 0.0
    if isinstance(v, Decimal):
        return b"D" + _canon_decimal(v)
    if isinstance(v, str):
        return b"S" + v.encode("utf-8", "surrogatepass")
    if isinstance(v, bytes | bytearray | memoryview):
        return b"Y" + bytes(v)
    if isinstance(v, dt.datetime):
        aware = v if v.utcoffset() is not None else v.replace(tzinfo=naive_tz)
        return b"T%d" % ((aware - _EPOCH_UTC) // _US)
    if isinstance(v, dt.date):
        return b"d" + v.isoformat().encode()
    if isinstance(v, dt.time):
        return b"t" + v.isoformat().encode()
    if isinstance(v, dt.timedelta):
        return b"V%d" % (v // _US)
    if isinstance(v, uuid.UUID):
        return b"U" + v.bytes
    return b"J" + json.dumps(v, sort_keys=True, default=str, ensure_ascii=False).encode()


def row_hash(row: Mapping[str, Any], fields: list[str] | None = None,
             naive_tz: dt.tzinfo = _UTC) -> bytes:
    """128-bit fingerprint of a row, equal for equal data on any database.

    Type-aware: 1, 1.0, Decimal('1') and '1' all differ, and so do True and 1.
    Decimals compare as numbers: Decimal('1.0') equals Decimal('1.00'), because a
    NUMERIC(18,4) column and a plain NUMERIC hold the same amount with different
    scales. Timestamps compare as instants (naive ones in ``naive_tz``). Fields are
    taken in name order, so column order does not matter; a missing field counts as
    NULL.
    """
    h = hashlib.blake2b(digest_size=16, person=b"exnode-row-v1")
    for name in sorted(fields if fields is not None else row):
        nb = name.encode()
        vb = _canon(row.get(name), naive_tz)
        h.update(len(nb).to_bytes(4, "big"))
        h.update(nb)
        h.update(len(vb).to_bytes(8, "big"))
        h.update(vb)
    return h.digest()


# ---- columns ------------------------------------------------------------------------------

@dataclass
class _Col:
    field: str
    column: sa.ColumnElement[Any]
    kind: str
    tz: bool = False
    required: bool = False
    exact: Checker | None = None  # target columns: does it keep a value exactly?


class _Incompatible(Exception):
    pass


class Unstorable(ApplyError):
    """Some changes of a batch hold a value the target table cannot store, or cannot
    store exactly (a rounded decimal, a cut string, lost microseconds); nothing was
    written. ``reasons`` maps the position of each such change in the batch to why, as
    ``"price: 12345678901234.567891 cannot be stored exactly in SQLite column price
    (...)"``. Not transient: apply the other changes and keep these aside."""

    def __init__(self, message: str, reasons: dict[int, str]) -> None:
        super().__init__(message, transient=False)
        self.reasons = reasons


def _from_db_converter(kind: str) -> Callable[[Any], Any] | None:
    """How a driver's value becomes the plain value exnode uses (None: as it is)."""
    if kind == "bool":
        return lambda v: v if v is None or isinstance(v, bool) else bool(v)
    if kind == "float":
        return lambda v: float(v) if isinstance(v, Decimal) else v
    if kind == "time":
        return _time_from_db
    if kind == "decimal":  # SQLite's NUMERIC affinity holds floats and integers
        return _decimal_from_db
    if kind in ("int", "str", "date", "datetime", "uuid"):
        return None
    return lambda v: bytes(v) if isinstance(v, memoryview | bytearray) else v


def _decimal_from_db(v: Any) -> Any:
    if isinstance(v, float):
        return Decimal(repr(v)) if v == v and v not in (_INF, -_INF) else v
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(v)
    return v


_INF = float("inf")


def _time_from_db(v: Any) -> Any:
    # PyMySQL returns TIME as a timedelta (MySQL's TIME also holds durations).
    if isinstance(v, dt.timedelta) and dt.timedelta(0) <= v < dt.timedelta(days=1):
        return (dt.datetime.min + v).time()
    return v


def _to_db(col: _Col, v: Any, naive_tz: dt.tzinfo) -> Any:
    """A received value as the column wants it, or _Incompatible when it would change
    meaning (text into a number, a timestamp into a date, ...)."""
    if v is None:
        return None
    k = col.kind
    if k == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
    elif k == "int":
        if isinstance(v, int):
            return int(v)
        if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
            return int(v)
    elif k == "decimal":
        if isinstance(v, Decimal) or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        if isinstance(v, float):
            return Decimal(repr(v))
    elif k == "float":
        if isinstance(v, float):
            return v
        if isinstance(v, int | Decimal) and not isinstance(v, bool):
            return float(v)
    elif k == "str":
        if isinstance(v, str):
            return v
        if isinstance(v, Decimal):  # a decimal keeps every digit as text
            return format(v, "f") if v.is_finite() else str(v)
    elif k == "bytes":
        if isinstance(v, bytes | bytearray | memoryview):
            return bytes(v)
    elif k == "datetime":
        if not isinstance(v, dt.datetime) and isinstance(v, dt.date):
            v = dt.datetime(v.year, v.month, v.day)
        if isinstance(v, dt.datetime):
            aware = v.utcoffset() is not None
            if col.tz:
                return v if aware else v.replace(tzinfo=naive_tz)
            return v.astimezone(naive_tz).replace(tzinfo=None) if aware else v
    elif k == "date":
        if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
            return v
    elif k == "time":
        if isinstance(v, dt.time):
            return v
    elif k == "interval":
        if isinstance(v, dt.timedelta):
            return v
    elif k == "uuid":
        if isinstance(v, uuid.UUID):
            return v
        if isinstance(v, str):
            try:
                return uuid.UUID(v)
            except ValueError:
                pass
    elif k == "json":
        if isinstance(v, str):
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v
    else:
        return v
    shown = repr(v)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise _Incompatible(f"is {k} but the value is {type(v).__name__} ({shown})")


def _lost(field: str, value: Any, why: str) -> str:
    """'price: 12345678901234.567891 cannot be stored exactly in ...'; text is named by
    its length only (it may be personal data)."""
    if isinstance(value, str):
        return f"{field} {why}"
    shown = value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{field}: {shown} {why}"


def _find_column(table: sa.Table | sa.Subquery, name: str) -> sa.ColumnElement[Any] | None:
    """Exact name first; otherwise a unique case-insensitive match (Oracle upper-cases,
    SQLAlchemy lower-cases what is case-insensitive)."""
    col = table.c.get(name)
    if col is not None:
        return col
    found = [c for c in table.c if c.key.lower() == name.lower()]
    return found[0] if len(found) == 1 else None


# ---- the adapter ----------------------------------------------------------------------------

class _Duplicate(Exception):
    pass


@dataclass
class _Target:
    table: sa.Table
    cols: dict[str, _Col]  # by the batch's field name (the target's name when unknown)
    keys: list[_Col]


class SqlAdapter:
    """One resource on one database. Call :meth:`open` first; the object is cheap and
    holds no connection between calls, so one may be used from a worker thread.

    ``dialects`` is where the adapter finds the :class:`Dialect` for ``engine``
    (default: the built-in dialects, :data:`exnode.adapters.dialects.default_registry`);
    a node passes the registry its plugins filled.
    """

    def __init__(self, engine: Engine, resource_id: str, spec: ResourceSpec, *,
                 naive_tz: dt.tzinfo = _UTC, dialects: DialectRegistry | None = None) -> None:
        self.engine = engine
        self.resource_id = resource_id
        self.spec = spec
        self.naive_tz = naive_tz
        self.dialects = dialects if dialects is not None else default_registry
        self._dialect: Dialect | None = None
        self._source: sa.Table | sa.Subquery | None = None
        self._cols: dict[str, _Col] = {}
        self._target: _Target | None = None
        self._markers_ready = False

    # ---- schema ----

    @property
    def fields(self) -> list[str]:
        """Fields exchanged: ``spec.fields`` (key fields first if it left them out) or
        every column of the table or query, in the database's order."""
        self._need_open()
        return list(self._cols)

    @property
    def key(self) -> list[str]:
        """Primary-key fields, in ``spec.key`` order: the order of every key tuple."""
        return list(self.spec.key)

    @property
    def source_name(self) -> str:
        """The table name as messages show it (or 'query')."""
        if self.spec.table is None:
            return "query"
        return f"{self.spec.db_schema}.{self.spec.table}" if self.spec.db_schema \
            else self.spec.table

    def _mismatch(self, what: str) -> SchemaMismatch:
        return SchemaMismatch(f"resource '{self.resource_id}': {what}")

    def _need_open(self) -> None:
        if self._source is None:
            raise RuntimeError("SqlAdapter.open() was not called")

    @property
    def dialect(self) -> Dialect:
        """The dialect that speaks for this database, chosen by :meth:`open` (or by the
        first call that needs it)."""
        if self._dialect is None:
            self._dialect = self.dialects.for_dialect(self.engine.dialect)
        return self._dialect

    def open(self) -> SqlAdapter:
        """Pick the dialect, then reflect the table (or describe the query);
        SchemaMismatch when the table, a field or a key field is missing. Call again
        after the table changed."""
        self._dialect = self.dialects.for_dialect(self.engine.dialect)
        self._target = None
        if self.spec.table is not None:
            table = self._reflect(self.spec.table)
            self._source = table
            names = [c.key for c in table.c]
            where = f"table '{self.source_name}'"
        else:
            self._source = self._describe_query()
            names = [c.key for c in self._source.c]
            where = "the query"
        wanted = list(self.spec.fields) if self.spec.fields else names
        wanted = [k for k in self.spec.key if k not in wanted] + wanted
        cols: dict[str, _Col] = {}
        for f in wanted:
            col = _find_column(self._source, f)
            if col is None:
                role = "key field" if f in self.spec.key else "column"
                raise self._mismatch(f"{where} has no {role} '{f}'")
            kind, tz = self.dialect.column_kind(col.type)
            cols[f] = _Col(f, col, kind, tz)
        self._cols = cols
        return self

    def _reflect(self, name: str) -> sa.Table:
        try:
            table = sa.Table(name, sa.MetaData(), autoload_with=self.engine,
                             schema=self.spec.db_schema)
        except sa.exc.NoSuchTableError:
            shown = f"{self.spec.db_schema}.{name}" if self.spec.db_schema else name
            raise self._mismatch(f"table '{shown}' does not exist") from None
        for col in table.c:
            self.dialect.fix_reflected_type(col)
        return table

    def _describe_query(self) -> sa.Subquery:
        q = self.spec.query or ""
        q = q.strip().rstrip(";").strip()
        probe = sa.select(sa.literal_column("*")).select_from(
            sa.text(q).columns().subquery("exnode_q")).where(sa.false())
        with self._connect() as conn:
            names = list(conn.execute(probe).keys())
        return sa.text(q).columns(*[sa.column(n) for n in names]).subquery("exnode_q")

    # ---- reading ----

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            self.dialect.prepare_session(conn)
            yield conn

    def _select(self) -> sa.Select[Any]:
        return sa.select(*[c.column.label(f) for f, c in self._cols.items()])

    def _key_cols(self) -> list[_Col]:
        return [self._cols[k] for k in self.spec.key]

    def _rows(self, result: sa.CursorResult[Any]) -> Iterator[dict[str, Any]]:
        conv = [(f, _from_db_converter(c.kind)) for f, c in self._cols.items()]
        for r in result:
            yield {f: (fn(v) if fn else v) for (f, fn), v in zip(conv, r, strict=True)}

    def _bind_key(self, cols: list[_Col], values: tuple[Any, ...] | list[Any]) \
            -> list[Any]:
        if len(values) != len(cols):
            raise ValueError(f"key {values!r} has {len(values)} values, the resource's key "
                             f"has {len(cols)}")
        out = []
        for c, v in zip(cols, values, strict=True):
            try:
                out.append(_to_db(c, v, self.naive_tz))
            except _Incompatible as e:
                raise self._mismatch(f"key field '{c.field}' {e}") from None
        return out

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The key tuple of a row read from this adapter."""
        return tuple(row[k] for k in self.spec.key)

    def read_chunks(self, chunk_rows: int, after: tuple[Any, ...] | None = None) \
            -> Iterator[list[dict[str, Any]]]:
        """Every row in key order, ``chunk_rows`` at a time, starting after the key
        ``after`` (resume where a crash stopped). Each chunk is one short query: no
        cursor or transaction stays open while the caller works on a chunk."""
        self._need_open()
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        kcols = self._key_cols()
        last = tuple(after) if after is not None else None
        while True:
            stmt = self._select()
            with self._connect() as conn:
                if last is not None:
                    stmt = stmt.where(self.dialect.keyset_after(
                        [c.column for c in kcols], self._bind_key(kcols, last)))
                stmt = stmt.order_by(*[c.column for c in kcols]).limit(chunk_rows)
                rows = list(self._rows(conn.execute(stmt)))
            if not rows:
                return
            yield rows
            if len(rows) < chunk_rows:
                return
            last = self.key_of(rows[-1])

    def read_since(self, column: str, after_value: Any, after_key: tuple[Any, ...] | None,
                   limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` rows with (column, key) > (after_value, after_key), ordered
        by (column, key): the next page for incremental capture (增量捕获).

        Ties on the watermark are safe: rows sharing ``after_value`` continue after
        ``after_key``. ``after_key`` None means before every key (column >= value);
        ``after_value`` None starts at the beginning. Rows whose column is NULL are
        never returned.
        """
        self._need_open()
        col = self._cols.get(column)
        if col is None:
            found = _find_column(self._source, column)  # type: ignore[arg-type]
            if found is None:
                raise self._mismatch(f"table '{self.source_name}' has no column '{column}'")
            kind, tz = self.dialect.column_kind(found.type)
            col = _Col(column, found, kind, tz)
        kcols = self._key_cols()
        stmt = self._select()
        with self._connect() as conn:
            if after_value is None:
                stmt = stmt.where(col.column.is_not(None))
            else:
                try:
                    bound = _to_db(col, after_value, self.naive_tz)
                except _Incompatible as e:
                    raise self._mismatch(f"watermark column '{column}' {e}") from None
                if after_key is None:
                    stmt = stmt.where(
                        col.column >= self.dialect.typed_literal(col.column, bound))
                else:
                    stmt = stmt.where(self.dialect.keyset_after(
                        [col.column, *[c.column for c in kcols]],
                        [bound, *self._bind_key(kcols, after_key)]))
            stmt = stmt.order_by(col.column, *[c.column for c in kcols]).limit(limit)
            return list(self._rows(conn.execute(stmt)))

    def fetch(self, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The current rows for these keys (absent keys are left out), a bounded IN
        list per query."""
        self._need_open()
        kcols = self._key_cols()
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        step = self.dialect.keys_per_statement(len(kcols))
        with self._connect() as conn:
            for i in range(0, len(keys), step):
                part = [self._bind_key(kcols, k) for k in keys[i:i + step]]
                stmt = self._select().where(
                    self.dialect.keys_in([c.column for c in kcols], part))
                for row in self._rows(conn.execute(stmt)):
                    out[self.key_of(row)] = row
        return out

    # ---- reading for the sharing services (query, verification, catalog) ----

    @property
    def source(self) -> sa.Table | sa.Subquery:
        """The reflected table (or described query): what structured filters compile
        against (``exnode.policies.filters``)."""
        self._need_open()
        assert self._source is not None
        return self._source

    def describe(self) -> list[dict[str, Any]]:
        """Each exchanged field's name, database type and length, for the catalog's
        data elements (数据项)."""
        self._need_open()
        out = []
        for f, c in self._cols.items():
            t = c.column.type
            length = getattr(t, "length", None) or getattr(t, "precision", None)
            try:
                tname = str(t.compile(dialect=self.engine.dialect))
            except Exception:  # a type the dialect cannot print
                tname = type(t).__name__
            out.append({"name": f, "type": tname.lower(),
                        "length": length if isinstance(length, int) else None})
        return out

    def page(self, fields: list[str], where: sa.ColumnElement[bool] | None,
             order: list[Any] | None, after: tuple[Any, ...] | None, limit: int,
             conn: Connection | None = None, offset: int = 0) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows of ``fields`` (tuples, values as the row source gives
        them) matching ``where``; in ``order`` (SQLAlchemy clauses) when given, else in
        key order resuming after the key ``after`` (keyset pagination: each page is one
        short query, whatever the size of the table). Key order puts the key fields
        first in each tuple when ``after`` is used: the caller reads the key there."""
        self._need_open()
        for f in fields:
            if f not in self._cols:
                raise ValueError(f"unknown field {f}")
        kcols = self._key_cols()
        sel_fields = fields if order else [k for k in self.spec.key] + \
            [f for f in fields if f not in self.spec.key]
        stmt = sa.select(*[self._cols[f].column.label(f) for f in sel_fields])
        if where is not None:
            stmt = stmt.where(where)
        if order:  # the key breaks ties, so pages by offset never overlap
            stmt = stmt.order_by(*order, *[c.column for c in kcols]).offset(offset)
        else:
            if after is not None:
                stmt = stmt.where(self.dialect.keyset_after(
                    [c.column for c in kcols], self._bind_key(kcols, after)))
            stmt = stmt.order_by(*[c.column for c in kcols])
        stmt = stmt.limit(limit)
        conv = [_from_db_converter(self._cols[f].kind) for f in sel_fields]
        def run(c: Connection) -> list[tuple[Any, ...]]:
            if not any(conv):
                return [tuple(r) for r in c.execute(stmt)]
            return [tuple(fn(v) if fn else v for fn, v in zip(conv, r, strict=True))
                    for r in c.execute(stmt)]
        if conn is not None:
            return run(conn)
        with self._connect() as c:
            return run(c)

    def export_page(self, fields: list[str], cell: Callable[[Any, str], Any],
                    where: sa.ColumnElement[bool] | None, after: tuple[Any, ...] | None,
                    limit: int) -> tuple[bytes, int, tuple[Any, ...] | None] | None:
        """One keyset page (as :meth:`page` without an order) rendered as CSV by the
        database itself: ``(body, rows, last key; None when no row follows the page)``.
        ``cell(column, kind)`` gives the SQL expression of each field's CSV text, or
        None when it cannot; then, or when the dialect has no export, the result is
        None and the caller formats :meth:`page`'s rows.

        The page's last key is read first (the key ``limit`` rows on, an index range);
        the page is then the rows up to and including it. Both statements run in one
        REPEATABLE READ transaction, one snapshot, so the key handed back always ends
        exactly the rows sent, even while the table changes."""
        self._need_open()
        if not self.dialect.exports_csv:
            return None
        exprs = []
        for f in fields:
            col = self._cols.get(f)
            if col is None:
                raise ValueError(f"unknown field {f}")
            e = cell(col.column, col.kind)
            if e is None:
                return None
            exprs.append(e.label(f))
        kcols = self._key_cols()
        keys = [c.column for c in kcols]
        conv = [_from_db_converter(c.kind) for c in kcols]
        def bounded(stmt: sa.Select[Any]) -> sa.Select[Any]:
            if where is not None:
                stmt = stmt.where(where)
            if after is not None:
                stmt = stmt.where(self.dialect.keyset_after(keys, self._bind_key(kcols, after)))
            return stmt.order_by(*keys)
        with self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ") as c:
            self.dialect.prepare_session(c)
            # the page's last key and whether any row follows it
            edges = c.execute(bounded(sa.select(*keys)).offset(limit - 1).limit(2)).all()
            edge = edges[0] if len(edges) == 2 else None
            stmt = bounded(sa.select(*exprs))
            last: tuple[Any, ...] | None = None
            if edge is not None:
                last = tuple(fn(v) if fn else v for fn, v in zip(conv, edge, strict=True))
                stmt = stmt.where(sa.not_(self.dialect.keyset_after(
                    keys, self._bind_key(kcols, last))))
            out = self.dialect.export_csv(c, stmt.limit(limit))
            c.rollback()
        if out is None:
            return None
        return out[0], out[1], last

    def kind(self, field: str) -> str:
        """The kind of a field's column (bool, int, decimal, float, str, bytes, date,
        datetime, time, interval, uuid, json, other)."""
        self._need_open()
        return self._cols[field].kind

    def from_text(self, field: str, text: str) -> Any:
        """A value typed as text (a CSV cell) as the column holds it; ValueError when
        it cannot be one (then no row can have it)."""
        k = self._cols[field].kind
        if k == "str":
            return text
        if k == "int":
            return int(text)
        if k == "decimal":
            d = Decimal(text)
            if not d.is_finite():
                raise ValueError(text)
            return d
        if k == "float":
            return float(text)
        if k == "date":
            return dt.date.fromisoformat(text)
        if k == "datetime":
            return dt.datetime.fromisoformat(text)
        if k == "bool":
            if text.lower() in ("1", "true", "t", "yes"):
                return True
            if text.lower() in ("0", "false", "f", "no"):
                return False
            raise ValueError(text)
        if k == "uuid":
            return uuid.UUID(text)
        return text

    def lookup(self, keys: list[tuple[Any, ...]], fields: list[str]) \
            -> dict[tuple[Any, ...], tuple[Any, ...]]:
        """Key -> the values of ``fields`` for the keys present (bounded IN lists)."""
        self._need_open()
        kcols = self._key_cols()
        sel = [k for k in self.spec.key] + list(fields)
        conv = [_from_db_converter(self._cols[f].kind) for f in sel]
        nk = len(kcols)
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        step = self.dialect.keys_per_statement(nk)
        # kinds the driver gives in their Python type: no need for SQLAlchemy's rows
        plain = all(self._cols[f].kind in ("str", "int", "decimal", "date", "bool", "uuid")
                    for f in sel)
        text_key = all(c.kind == "str" for c in kcols)
        with self._connect() as conn:
            for i in range(0, len(keys), step):
                part = []
                for k in keys[i:i + step]:
                    if text_key and len(k) == nk and all(type(v) is str for v in k):
                        part.append(list(k))  # what _bind_key makes of text for text
                        continue
                    try:
                        part.append(self._bind_key(kcols, k))
                    except SchemaMismatch:
                        continue  # a key value this column cannot hold is not there
                if not part:
                    continue
                stmt = sa.select(*[self._cols[f].column.label(f) for f in sel]).where(
                    self.dialect.keys_in([c.column for c in kcols], part))
                rows = self.dialect.fetch_all(conn, stmt) if plain \
                    else conn.execute(stmt).all()
                if not any(conv):
                    for r in rows:
                        out[tuple(r[:nk])] = tuple(r[nk:])
                    continue
                for r in rows:
                    vals = tuple(fn(v) if fn else v for fn, v in zip(conv, r, strict=True))
                    out[vals[:nk]] = vals[nk:]
        return out

    # ---- fingerprints ----

    def count(self) -> int:
        """Rows in the resource (for progress bars; one COUNT(*) query)."""
        self._need_open()
        assert self._source is not None
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self._source))
                       .scalar() or 0)

    def row_hash(self, row: Mapping[str, Any]) -> bytes:
        """:func:`row_hash` over this resource's fields."""
        return row_hash(row, self.fields, self.naive_tz)

    def checksum(self) -> tuple[int, bytes]:
        """(row count, 16-byte sum of all row hashes mod 2**128) of the whole resource.

        A sum does not depend on row order and, unlike XOR, two equal rows do not
        cancel out. One streamed query (a consistent snapshot where the database has
        one), at most a few thousand rows in memory.
        """
        self._need_open()
        fields = self.fields
        total, count = 0, 0
        with self._connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_SCAN_ROWS) \
                .execute(self._select())
            for row in self._rows(result):
                total += int.from_bytes(row_hash(row, fields, self.naive_tz), "big")
                count += 1
        return count, (total % (1 << 128)).to_bytes(16, "big")

    def key_hashes(self, chunk_rows: int = _SCAN_ROWS) \
            -> Iterator[tuple[tuple[Any, ...], bytes]]:
        """(key, row hash) for every row, in this database's key order. Compare two
        databases as mappings: string keys may sort differently under their
        collations. Pages by key, so a slow consumer holds no cursor open."""
        fields = self.fields
        for chunk in self.read_chunks(chunk_rows):
            for row in chunk:
                yield self.key_of(row), row_hash(row, fields, self.naive_tz)

    # ---- applying ----

    def _ensure_markers(self) -> None:
        if not self._markers_ready:
            ensure_marker_tables(self.engine)
            self._markers_ready = True

    def _target_info(self) -> _Target:
        if self._target is not None:
            return self._target
        name = self.spec.target_table or self.spec.table
        if name is None:
            raise self._mismatch("maps a query and has no target_table: it cannot "
                                 "receive changes")
        if isinstance(self._source, sa.Table) and name == self.spec.table:
            table = self._source
        else:
            table = self._reflect(name)
        shown = f"{self.spec.db_schema}.{name}" if self.spec.db_schema else name
        cols: dict[str, _Col] = {}
        for c in table.c:
            kind, tz = self.dialect.column_kind(c.type)
            required = (not c.nullable and c.server_default is None and c.computed is None
                        and c.identity is None and c.default is None)
            cols[c.key] = _Col(c.key, c, kind, tz, required,
                               self.dialect.exact_checker(c, kind))
        keys: list[_Col] = []
        for k in self.spec.key:
            col = _find_column(table, k)
            if col is None:
                raise self._mismatch(f"table '{shown}' has no key field '{k}'")
            keys.append(cols[col.key])
        keyset = {c.column.key for c in keys}
        unique = [{c.key for c in table.primary_key.columns}]
        unique += [{c.key for c in idx.columns} for idx in table.indexes if idx.unique]
        unique += [{c.key for c in con.columns} for con in table.constraints
                   if isinstance(con, sa.UniqueConstraint)]
        if keyset not in unique:
            raise self._mismatch(f"table '{shown}' has no primary key or unique index on "
                                 f"({', '.join(self.spec.key)})")
        self._target = _Target(table, cols, keys)
        return self._target

    def _plan(self, batch: ChangeBatch) -> list[tuple[str, list[str], list[Any]]]:
        """Check the whole batch against the target table and turn it into runs of
        deduplicated upserts and deletes, before anything is written. Unstorable when
        some rows hold values the table would not keep exactly."""
        tgt = self._target_info()
        shown = self.spec.target_table or self.spec.table
        by_field: dict[str, _Col] = {}

        def resolve(field: str) -> _Col:
            col = by_field.get(field)
            if col is None:
                found = _find_column(tgt.table, field)
                if found is None:
                    raise self._mismatch(f"table '{shown}' has no column '{field}'")
                col = by_field[field] = tgt.cols[found.key]
            return col

        key_names = [c.column.key for c in tgt.keys]
        seen: set[str] = set()
        runs: list[tuple[str, list[str], list[Any]]] = []
        cur_op: str | None = None
        cur: dict[Any, Any] = {}

        def flush() -> None:
            if cur_op == "delete":
                runs.append(("delete", key_names, list(cur)))
            elif cur_op == "upsert":
                groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for r in cur.values():
                    groups.setdefault(tuple(r), []).append(r)
                for names, rows in groups.items():
                    runs.append(("upsert", list(names), rows))

        unstorable: dict[int, str] = {}
        for i, ch in enumerate(batch.changes):
            if ch.op != cur_op:
                flush()
                cur_op, cur = ch.op, {}
            if ch.op == "delete":
                key = tuple(self._bind_target_key(tgt, ch.key))
                cur[key] = None
                continue
            if ch.op != "upsert" or ch.row is None:
                raise ValueError(f"change {ch!r} is neither an upsert with a row nor a delete")
            out: dict[str, Any] = {}
            lost: list[str] = []
            for field, value in ch.row.items():
                col = resolve(field)
                if col.column.computed is not None:  # type: ignore[attr-defined]
                    continue  # the target computes it
                seen.add(field)
                try:
                    out[col.column.key] = v = _to_db(col, value, self.naive_tz)
                except _Incompatible as e:
                    raise self._mismatch(f"column '{col.column.key}' of table '{shown}' "
                                         f"{e}") from None
                if col.exact is not None and v is not None:
                    # a float column gets the float of a received decimal: check that
                    why = col.exact(value if col.kind == "float" else v)
                    if why is not None:
                        lost.append(_lost(field, value, why))
            if lost:
                unstorable[i] = "; ".join(lost)
                continue
            for kc, kv in zip(tgt.keys, self._bind_target_key(tgt, ch.key), strict=True):
                out.setdefault(kc.column.key, kv)
            key = tuple(out[k] for k in key_names)
            cur.pop(key, None)
            cur[key] = out
        flush()
        if unstorable:
            raise Unstorable(f"{len(unstorable)} of {len(batch)} changes cannot be stored "
                             f"exactly: {unstorable[min(unstorable)]}", unstorable)
        if any(op == "upsert" for op, _, _ in runs):
            sent = {by_field[f].column.key for f in seen} | set(key_names)
            for name, col in tgt.cols.items():
                if col.required and name not in sent:
                    raise self._mismatch(f"column '{name}' of table '{shown}' is NOT NULL "
                                         "without a default, and the batch does not have it")
        return runs

    def _bind_target_key(self, tgt: _Target, key: tuple[Any, ...]) -> list[Any]:
        if len(key) != len(tgt.keys):
            raise self._mismatch(f"a change has key {key!r}, the resource's key has "
                                 f"{len(tgt.keys)} fields")
        out = []
        for c, v in zip(tgt.keys, key, strict=True):
            try:
                out.append(_to_db(c, v, self.naive_tz))
            except _Incompatible as e:
                raise self._mismatch(f"key column '{c.column.key}' {e}") from None
        return out

    def applied(self, pkg_id: str) -> bool:
        """Whether this database already holds the package (its marker row)."""
        if not sa.inspect(self.engine).has_table(APPLIED_TABLE):
            return False
        with self._connect() as conn:
            return conn.execute(sa.select(sa.literal(1)).where(
                applied_table.c.pkg_id == pkg_id)).first() is not None

    def apply(self, batch: ChangeBatch, pkg_id: str, origin: str) -> str:
        """Apply the batch to the target table in one transaction, exactly once.

        Returns "applied", or "duplicate" (nothing written) when ``pkg_id`` was applied
        before. SchemaMismatch, before any write, when the batch does not fit the
        table; Unstorable, before any write, when some changes hold values the table
        cannot keep exactly; ApplyError when the database refuses it (rolled back).
        """
        self._need_open()
        try:
            runs = self._plan(batch)
        except Unstorable as e:
            self._ensure_markers()  # as for any package the database refused
            raise Unstorable(f"resource '{self.resource_id}': package {pkg_id} was not "
                             f"applied to table '{self._target_info().table.name}': {e}",
                             e.reasons) from None
        tgt = self._target_info()
        key_names = [c.column.key for c in tgt.keys]
        dialect = self.dialect
        self._ensure_markers()
        try:
            with self._connect() as conn:
                if conn.execute(sa.select(sa.literal(1)).where(
                        applied_table.c.pkg_id == pkg_id)).first() is not None:
                    return "duplicate"
                try:
                    conn.execute(applied_table.insert().values(
                        pkg_id=pkg_id, origin=origin, resource=self.resource_id,
                        applied_at=dt.datetime.now(_UTC).replace(tzinfo=None),
                        row_count=len(batch)))
                except sa.exc.IntegrityError:
                    raise _Duplicate from None  # applied concurrently by another worker
                conn.execute(applying_table.insert().values(pkg_id=pkg_id))
                for op, names, items in runs:
                    if op == "upsert":
                        dialect.upsert(conn, tgt.table, key_names, names, items)
                    else:
                        dialect.delete_keys(conn, tgt.table, names, items)
                conn.execute(applying_table.delete().where(
                    applying_table.c.pkg_id == pkg_id))
                conn.commit()
        except _Duplicate:
            return "duplicate"
        except sa.exc.DBAPIError as e:
            first = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            transient = bool(e.connection_invalidated) or isinstance(
                e, sa.exc.OperationalError | sa.exc.InterfaceError)
            raise ApplyError(f"resource '{self.resource_id}': package {pkg_id} was not "
                             f"applied to table '{tgt.table.name}': {first}",
                             transient) from e
        log.debug("applied %s (%d changes) to %s", pkg_id, len(batch), tgt.table.name)
        return "applied"
