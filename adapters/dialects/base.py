"""The :class:`Dialect` base class: every operation the SQL adapter and trigger capture
need from a database, written once in portable SQLAlchemy Core.

The base class *is* the generic path, the one any database SQLAlchemy knows (Oracle,
SQL Server, ...) takes when no registered dialect claims it: row comparisons spelled
out as AND/OR, composite-key IN as an OR of ANDs, upsert as an UPDATE of the keys that
exist then an INSERT of the rest, at most :data:`ROWS_PER_STATEMENT` list items per
statement, and no capture triggers. A database module subclasses it and overrides only
what its database does better or differently; the building blocks it may pick from
(:meth:`Dialect.row_value_after`, :meth:`Dialect.row_value_in`,
:func:`on_conflict_upsert`) are here too.

This module also holds the change-table contract that every dialect's capture
triggers fill (:data:`CHANGES`, :func:`changes_table`, :func:`label`, ...), so that the
dialect modules and :mod:`exnode.adapters.triggers` share one definition.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine import Dialect as SaDialect

from exnode.node.base.errors import ExnodeError

from .exact import (
    Checker,
    decimal_checker,
    float_checker,
    fraction_checker,
    int_checker,
    length_checker,
)

#: List items (keys x key width, or rows) per statement: Oracle allows 1000 items in an
#: IN list, SQL Server 2100 parameters per statement.
ROWS_PER_STATEMENT = 1000

#: The change table the capture triggers write (变更表).
CHANGES = "exnode_changes"
#: The SQL adapter's "applying" table (``exnode.adapters.sql.APPLYING_TABLE``): while it
#: holds a row, which only the applying transaction sees, capture triggers record
#: nothing.
APPLYING = "exnode_applying"

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

Key = Sequence[Any]
Row = dict[str, Any]


class DialectError(ExnodeError):
    """A dialect cannot be registered or found as asked (e.g. a duplicate name)."""


class TriggerError(ExnodeError):
    """Capture triggers cannot be installed or removed as asked."""


# ---- the change-table contract --------------------------------------------------------------

def check_identifier(name: str, what: str = "table") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise TriggerError.

    Trigger DDL embeds table, schema and key names (and the ``tbl`` label as a string
    literal), so only names that need no quoting are accepted."""
    if not isinstance(name, str) or not _IDENT_RE.match(name):
        raise TriggerError(f"{what} name {name!r} is not a plain identifier (letters, digits "
                           "and '_', not starting with a digit, at most 63 characters); "
                           "trigger capture refuses it")
    return name


def label(table: str, schema: str | None = None) -> str:
    """What the triggers write into ``tbl`` (and NOTIFY): ``schema.table`` or ``table``."""
    return f"{schema}.{table}" if schema else table


def changes_table(schema: str | None = None) -> sa.Table:
    """Core definition of ``exnode_changes`` in ``schema``.

    One row per change: ``id`` (increasing), ``tbl`` (:func:`label`), ``op`` ('I', 'U'
    or 'D') and ``key`` (the primary key as a JSON array in key order)."""
    return sa.Table(
        CHANGES, sa.MetaData(),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("tbl", sa.String(128), nullable=False),
        sa.Column("op", sa.String(1), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Index("ix_exnode_changes_tbl_id", "tbl", "id"),
        schema=schema, sqlite_autoincrement=True, mysql_charset="utf8mb4",
    )


def short_name(name: str, limit: int = 63) -> str:
    """``name`` cut to ``limit`` characters, with a digest so that cut names stay apart
    (PostgreSQL truncates identifiers at 63 bytes, MySQL refuses longer ones at 64)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9]}_{digest}"


def trigger_names(table: str) -> list[str]:
    """Names of the three row triggers (after insert, update, delete) of ``table``, for
    the dialects that use one trigger per event (MariaDB/MySQL, SQLite)."""
    return [short_name(f"exnode_{table}_{s}") for s in ("ai", "au", "ad")]


def on_conflict_upsert(ins: Any, table: sa.Table, keys: Sequence[str],
                       names: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET`` the non-key ``names`` (DO NOTHING
    when every name is a key), as PostgreSQL and SQLite both spell it. ``ins`` is the
    dialect's own insert construct (``postgresql.insert(table)``, ``sqlite.insert``,
    optionally ``.from_select(...)``)."""
    rest = [n for n in names if n not in keys]
    index = [table.c[k] for k in keys]
    if rest:
        return ins.on_conflict_do_update(index_elements=index,
                                         set_={n: ins.excluded[n] for n in rest})
    return ins.on_conflict_do_nothing(index_elements=index)


# ---- the dialect ------------------------------------------------------------------------------

# SQLAlchemy type classes -> exnode's column kinds, in the order they are tried (Float
# is a Numeric, and Boolean must come before Integer for dialects that derive one from
# the other).
_COLUMN_KINDS: tuple[tuple[Any, str], ...] = (
    (sa.Boolean, "bool"), (sa.Integer, "int"), (sa.Float, "float"), (sa.Numeric, "decimal"),
    (sa.DateTime, "datetime"), (sa.Date, "date"), (sa.Time, "time"),
    (sa.Interval, "interval"), (sa.Uuid, "uuid"), (sa.JSON, "json"),
    (sa.Enum | sa.String, "str"), (sa.types._Binary, "bytes"),
)


class Dialect:
    """What exnode needs from one kind of database; this class is the generic path.

    Instances are stateless and shared by every adapter of a registry. ``name`` is the
    family name ('postgresql', 'mysql', 'sqlite', 'generic', ...) and unique within a
    registry; ``sa_names`` are the SQLAlchemy dialect names (``engine.dialect.name``)
    that :meth:`matches` claims. The generic dialect claims none: a registry falls back
    to it when nothing else matches.
    """

    name: ClassVar[str] = "generic"
    sa_names: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`install_triggers` can work (trigger capture).
    supports_triggers: ClassVar[bool] = False
    #: Keyset paging with a row-value comparison ``(c1, c2) > (v1, v2)`` (the database
    #: has row values and uses an index for them).
    row_value_order: ClassVar[bool] = False
    #: Key lookups with a row-value ``IN`` list.
    row_value_in_list: ClassVar[bool] = False
    #: :meth:`export_csv` is implemented: the database writes CSV itself.
    exports_csv: ClassVar[bool] = False
    #: The database's name in messages ("SQLite column price ...").
    title: ClassVar[str] = "database"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def matches(self, sa_dialect: SaDialect) -> bool:
        """Whether this dialect speaks for a SQLAlchemy dialect (an engine's
        ``engine.dialect``)."""
        return sa_dialect.name in self.sa_names

    # ---- sessions and types ----

    def prepare_session(self, conn: Connection) -> None:
        """Make the session read and write values the same way on every connection;
        called on each connection the adapter takes from the pool. Generic: nothing."""

    def column_kind(self, coltype: sa.types.TypeEngine[Any]) -> tuple[str, bool]:
        """(kind, has time zone) of a reflected column type.

        Kinds: bool, int, decimal, float, str, bytes, date, datetime, time, interval,
        uuid, json, other.
        """
        for types, kind in _COLUMN_KINDS:  # the first match wins: Boolean before Integer
            if isinstance(coltype, types):
                zoned = kind in ("datetime", "time") and bool(getattr(coltype, "timezone", False))
                return kind, zoned
        return "other", False

    def fix_reflected_type(self, col: sa.Column[Any]) -> None:
        """Undo reflection defaults that would change values on the way out.

        A float type reflected with ``asdecimal=True`` (MySQL DOUBLE/FLOAT do that)
        rounds every float to ten decimal places; exnode wants the float the database
        holds. Harmless where floats already read as floats, so every dialect does it.
        """
        if isinstance(col.type, sa.Float) and col.type.asdecimal:
            col.type.asdecimal = False

    # ---- exact values ----

    def where(self, col: sa.Column[Any], note: str = "") -> str:
        """How a message names a target column: ``PostgreSQL column price
        (NUMERIC(20, 6))``."""
        try:
            shown = str(col.type)
        except Exception:
            shown = type(col.type).__name__
        return f"{self.title} column {col.name} ({note or shown})"

    def int_bounds(self, coltype: sa.types.TypeEngine[Any]) -> tuple[int, int] | None:
        """(lowest, highest) integer the column type holds, None if not known.
        Generic: not known (Oracle's INTEGER is a NUMBER(38), for one)."""
        return None

    def fraction_digits(self, coltype: sa.types.TypeEngine[Any]) -> int:
        """Fractional-second digits a timestamp or time column keeps. Generic: the
        type's ``precision`` where reflection gave one, else microseconds (6)."""
        p = getattr(coltype, "precision", None)
        return p if isinstance(p, int) else 6

    def exact_checker(self, col: sa.Column[Any], kind: str) -> Checker | None:
        """The :data:`~exnode.adapters.dialects.exact.Checker` of a target column:
        whether it keeps a value (as the adapter converted it for the column) exactly,
        or None when every value of its kind is kept. Built once per column.

        Generic: a DECIMAL(p, s) keeps at most ``s`` decimal places and ``p - s``
        integer digits, an 8-byte float about 15 significant digits of a decimal, a
        VARCHAR(n) ``n`` characters, a TIMESTAMP(p) ``p`` fractional digits, and an
        integer column what :meth:`int_bounds` says."""
        t = col.type
        if kind == "decimal":
            return decimal_checker(getattr(t, "precision", None), getattr(t, "scale", None),
                                   self.where(col))
        if kind == "float":
            return float_checker(self.where(col))
        if kind == "str":
            n = getattr(t, "length", None)
            return length_checker(n, self.where(col)) if isinstance(n, int) else None
        if kind in ("datetime", "time"):
            return fraction_checker(self.fraction_digits(t), self.where(col))
        if kind == "int":
            bounds = self.int_bounds(t)
            if bounds is not None:
                return int_checker(*bounds, self.where(col))
        return None

    # ---- predicates ----

    def typed_literal(self, col: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[Any]:
        """A bound value with the column's type, so SQLAlchemy formats it the column's
        way (SQLite keeps timestamps as text)."""
        return sa.literal(value, type_=col.type)

    def keyset_after(self, cols: Sequence[sa.ColumnElement[Any]],
                     values: Sequence[Any]) -> sa.ColumnElement[bool]:
        """(c1, c2, ...) > (v1, v2, ...): where keyset pagination resumes. It must agree
        with ``ORDER BY c1, c2, ...`` on the same database. Generic: spelled out; a
        dialect with ``row_value_order`` compares row values."""
        if self.row_value_order and len(cols) > 1:
            return self.row_value_after(cols, values)
        return self.expanded_after(cols, values)

    def expanded_after(self, cols: Sequence[sa.ColumnElement[Any]],
                       values: Sequence[Any]) -> sa.ColumnElement[bool]:
        """The row comparison as ``c1 >= v1 AND (c1 > v1 OR c1 = v1 AND c2 > v2 ...)``:
        portable, and the leading ``c1 >= v1`` gives any optimizer a range to use."""
        ors = []
        for i in range(len(cols)):
            eqs = [cols[j] == self.typed_literal(cols[j], values[j]) for j in range(i)]
            ors.append(sa.and_(*eqs, cols[i] > self.typed_literal(cols[i], values[i])))
        pred = sa.or_(*ors)
        if len(cols) > 1:
            pred = sa.and_(cols[0] >= self.typed_literal(cols[0], values[0]), pred)
        return pred

    def row_value_after(self, cols: Sequence[sa.ColumnElement[Any]],
                        values: Sequence[Any]) -> sa.ColumnElement[bool]:
        """The row comparison as a row value, ``(c1, c2) > (v1, v2)``, for databases
        that have it and use an index for it."""
        lits = [self.typed_literal(c, v) for c, v in zip(cols, values, strict=True)]
        return sa.tuple_(*cols) > sa.tuple_(*lits)

    def keys_in(self, cols: Sequence[sa.ColumnElement[Any]],
                keys: Sequence[Key]) -> sa.ColumnElement[bool]:
        """The rows whose key is one of ``keys`` (at most :meth:`keys_per_statement`
        of them). Generic: ``c IN (...)`` for one column, else an OR of ANDs (Oracle
        and SQL Server have no row-value IN); a dialect with ``row_value_in_list`` uses
        a row-value IN."""
        if self.row_value_in_list:
            return self.row_value_in(cols, keys)
        if len(cols) == 1:
            return cols[0].in_([k[0] for k in keys])
        return sa.or_(*[sa.and_(*[c == self.typed_literal(c, v)
                                  for c, v in zip(cols, k, strict=True)]) for k in keys])

    def row_value_in(self, cols: Sequence[sa.ColumnElement[Any]],
                     keys: Sequence[Key]) -> sa.ColumnElement[bool]:
        """``(c1, c2) IN ((v1, v2), ...)``, for databases that have row values."""
        if len(cols) == 1:
            return cols[0].in_([k[0] for k in keys])
        return sa.tuple_(*cols).in_([tuple(k) for k in keys])

    def keys_per_statement(self, width: int) -> int:
        """Keys per IN list for a key of ``width`` columns."""
        return max(1, ROWS_PER_STATEMENT // max(1, width))

    # ---- writes ----

    def upsert(self, conn: Connection, table: sa.Table, keys: list[str], names: list[str],
               rows: list[Row]) -> None:
        """Insert or update ``rows`` (dicts with exactly ``names``, unique keys) inside
        the transaction that the caller holds, :data:`ROWS_PER_STATEMENT` rows per
        :meth:`write_rows`."""
        for i in range(0, len(rows), ROWS_PER_STATEMENT):
            self.write_rows(conn, table, keys, names, rows[i:i + ROWS_PER_STATEMENT])

    def write_rows(self, conn: Connection, table: sa.Table, keys: list[str],
                   names: list[str], rows: list[Row]) -> None:
        """Upsert one statement's worth of rows. Generic: find which keys exist, UPDATE
        those rows and INSERT the others (correct inside the caller's transaction as
        long as nobody else writes the same keys at the same time, which the adapter's
        exactly-once marker already requires)."""
        if not rows:
            return
        kcols = [table.c[k] for k in keys]
        wanted = [tuple(r[k] for k in keys) for r in rows]
        found: set[tuple[Any, ...]] = set()
        step = self.keys_per_statement(len(keys))
        for i in range(0, len(wanted), step):
            found.update(tuple(r) for r in conn.execute(
                sa.select(*kcols).where(self.keys_in(kcols, wanted[i:i + step]))))
        old = [r for r, k in zip(rows, wanted, strict=True) if k in found]
        new = [r for r, k in zip(rows, wanted, strict=True) if k not in found]
        rest = [n for n in names if n not in keys]
        if old and rest:
            stmt = (table.update()
                    .where(*[table.c[k] == sa.bindparam(f"k_{i}") for i, k in enumerate(keys)])
                    .values({n: sa.bindparam(f"v_{i}") for i, n in enumerate(rest)}))
            conn.execute(stmt, [{**{f"k_{i}": r[k] for i, k in enumerate(keys)},
                                 **{f"v_{i}": r[n] for i, n in enumerate(rest)}} for r in old])
        if new:
            conn.execute(table.insert(), new)

    # ---- reads ----

    def fetch_all(self, conn: Connection, stmt: sa.Select[Any]) -> list[Any]:
        """All rows of ``stmt`` as tuples (or tuple-like rows), values as the driver
        gives them; only for columns whose values the driver already gives in their
        Python type (text, integers, decimals, dates, booleans, UUIDs). Generic:
        SQLAlchemy's result."""
        return conn.execute(stmt).all()

    def export_csv(self, conn: Connection, stmt: sa.Select[Any]) -> tuple[bytes, int] | None:
        """The rows of ``stmt`` written by the database itself as CSV (UTF-8, LF after
        each record, no header) and their number; None when this database has no such
        export and the caller formats the rows. Generic: None."""
        return None

    def delete_keys(self, conn: Connection, table: sa.Table, keys: list[str],
                    values: Sequence[Key]) -> None:
        """Delete the rows with these keys, a bounded IN list at a time."""
        kcols = [table.c[k] for k in keys]
        step = self.keys_per_statement(len(keys))
        for i in range(0, len(values), step):
            conn.execute(table.delete().where(self.keys_in(kcols, values[i:i + step])))

    # ---- capture triggers ----
    #
    # exnode.adapters.triggers checks names, key columns and the change table, then calls
    # these. Names reaching them are plain identifiers (check_identifier), so they may be
    # embedded in DDL; ``schema`` went through trigger_schema() first, and ``home`` is
    # what home_schema() returned.

    def trigger_schema(self, schema: str | None) -> str | None:
        """The schema of a captured table as the trigger DDL should name it (None: the
        connection's default), or TriggerError when triggers cannot capture there."""
        return schema

    def home_schema(self, engine: Engine) -> str | None:
        """Where exnode's bookkeeping tables (the change table, the adapter's markers)
        live: the connection's default schema. None means "unqualified"."""
        return None

    def _query_home(self, engine: Engine, sql: str) -> str:
        with engine.connect() as c:
            v = c.exec_driver_sql(sql).scalar()
        if v is None:
            raise TriggerError("the database URL names no database (schema) to keep the "
                               "change table in")
        return check_identifier(str(v), "schema")

    def install_triggers(self, engine: Engine, table: str, key: Sequence[str],
                         schema: str | None, home: str | None) -> None:
        """Create (or replace) the capture triggers of ``table``; the change table and
        ``exnode_applying`` exist in ``home`` already. Generic: not supported."""
        raise TriggerError(f"trigger capture does not support {engine.dialect.name} (use "
                           "incremental or snapshot capture)")

    def remove_triggers(self, conn: Connection, table: str, schema: str | None,
                        home: str | None) -> None:
        """Drop the capture triggers of ``table`` if they are there. Generic: there can
        be none."""

    def triggers_installed(self, conn: Connection, table: str, schema: str | None) -> bool:
        """Whether every capture trigger of ``table`` is in place."""
        return False

    def any_triggers(self, conn: Connection) -> bool:
        """Whether any table (in any schema) still has exnode capture triggers that
        write into the change table."""
        return False

    def remove_bookkeeping(self, conn: Connection, home: str | None) -> None:
        """After the change table was dropped: drop whatever else the dialect created
        for capture in ``home``. Generic: nothing."""


def quoter(engine_or_conn: Engine | Connection) -> Any:
    """The dialect's identifier quoting function."""
    return engine_or_conn.dialect.identifier_preparer.quote
