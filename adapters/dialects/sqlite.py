"""SQLite (the standard library's sqlite3 through pysqlite).

What differs from the generic path, and why:

- Keyset pagination and composite-key lookups use row values (SQLite 3.15+), which
  SQLite answers from the primary-key index.
- Upserts are ``INSERT ... ON CONFLICT (key) DO UPDATE`` (SQLite 3.24+).
- Capture triggers: three AFTER triggers per table, each with ``WHEN NOT EXISTS
  (SELECT 1 FROM exnode_applying)``: SQLite has one writer at a time, so that read takes
  no lock anybody waits for. They are replaced in one explicit ``BEGIN IMMEDIATE``
  transaction, because pysqlite commits on its own before DDL.
- Triggers can only reach tables of their own database: a table in an attached
  database cannot be captured (``main`` is the default and is accepted).
- No exact decimal type: a DECIMAL or NUMERIC column has NUMERIC affinity, which keeps
  a decimal as an 8-byte float (about 15 significant digits). Such columns are read as
  the float's shortest decimal (``Decimal(repr(f))``), not SQLAlchemy's rounding to the
  declared scale, which makes up digits (``12345678901234.568359``); a value that would
  not come back the same is refused before the write (:meth:`exact_checker`), and the
  applier quarantines its row. A decimal into a TEXT column is stored as its text,
  exactly. VARCHAR(n) is not enforced (SQLite keeps the whole string) and timestamps
  are text with microseconds, so neither loses anything; integers are 64-bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from .base import (
    APPLYING,
    CHANGES,
    Dialect,
    Row,
    TriggerError,
    label,
    on_conflict_upsert,
    quoter,
    trigger_names,
)
from .exact import Checker, float_checker, int_checker

_INT64 = (-(1 << 63), (1 << 63) - 1)


class SQLiteDialect(Dialect):
    """SQLite: row values, ON CONFLICT, WHEN-guarded triggers in the main database."""

    name: ClassVar[str] = "sqlite"
    sa_names: ClassVar[tuple[str, ...]] = ("sqlite",)
    supports_triggers: ClassVar[bool] = True
    row_value_order: ClassVar[bool] = True
    row_value_in_list: ClassVar[bool] = True
    title: ClassVar[str] = "SQLite"

    # ---- types and exact values ----

    def fix_reflected_type(self, col: sa.Column[Any]) -> None:
        super().fix_reflected_type(col)
        # NUMERIC affinity keeps floats: read them as they are (the adapter turns them
        # into the float's shortest decimal) instead of rounding them to the scale.
        if isinstance(col.type, sa.Numeric) and not isinstance(col.type, sa.Float):
            col.type.asdecimal = False

    def exact_checker(self, col: sa.Column[Any], kind: str) -> Checker | None:
        if kind == "decimal":
            return float_checker(self.where(col, "NUMERIC affinity: kept as an 8-byte "
                                                 "REAL, about 15 significant digits"))
        if kind == "float":
            return float_checker(self.where(col, "REAL affinity"))
        if kind == "int":
            return int_checker(*_INT64, self.where(col, "64-bit INTEGER"))
        return None  # text keeps whole strings, timestamps are text with microseconds

    def write_rows(self, conn: Connection, table: sa.Table, keys: list[str],
                   names: list[str], rows: list[Row]) -> None:
        if rows:
            conn.execute(on_conflict_upsert(sqlite.insert(table), table, keys, names), rows)

    # ---- capture triggers ----

    def trigger_schema(self, schema: str | None) -> str | None:
        if schema is None or schema == "main":
            return None
        raise TriggerError("SQLite triggers cannot reach exnode's tables from an attached "
                           f"database ({schema!r}); capture tables of the main database")

    def install_triggers(self, engine: Engine, table: str, key: Sequence[str],
                         schema: str | None, home: str | None) -> None:
        q = quoter(engine)
        lit = f"'{label(table)}'"
        old = ", ".join(f"OLD.{q(k)}" for k in key)
        new = ", ".join(f"NEW.{q(k)}" for k in key)
        same = " AND ".join(f"(OLD.{q(k)} IS NEW.{q(k)})" for k in key)
        guard = f"WHEN NOT EXISTS (SELECT 1 FROM {APPLYING})"
        ins = f"INSERT INTO {CHANGES} (tbl, op, key)"
        bodies = {
            "INSERT": f"{ins} VALUES ({lit}, 'I', json_array({new}));",
            "UPDATE": f"{ins} SELECT {lit}, 'D', json_array({old}) WHERE NOT ({same}); "
                      f"{ins} SELECT {lit}, CASE WHEN ({same}) THEN 'U' ELSE 'I' END, "
                      f"json_array({new});",
            "DELETE": f"{ins} VALUES ({lit}, 'D', json_array({old}));",
        }
        statements = []
        for tname, (event, body) in zip(trigger_names(table), bodies.items(), strict=True):
            statements.append(f"DROP TRIGGER IF EXISTS {q(tname)}")
            statements.append(f"CREATE TRIGGER {q(tname)} AFTER {event} ON {q(table)} "
                              f"FOR EACH ROW {guard} BEGIN {body} END")
        # pysqlite commits before DDL on its own; run the swap in one explicit
        # transaction so that no write slips through while the triggers are replaced.
        raw = engine.raw_connection()
        try:
            dbapi = raw.driver_connection
            assert dbapi is not None
            saved = dbapi.isolation_level
            dbapi.isolation_level = None
            cur = dbapi.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    for st in statements:
                        cur.execute(st)
                except Exception:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                cur.close()
                dbapi.isolation_level = saved
        finally:
            raw.close()

    def remove_triggers(self, conn: Connection, table: str, schema: str | None,
                        home: str | None) -> None:
        q = quoter(conn)
        for t in trigger_names(table):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {q(t)}")

    def triggers_installed(self, conn: Connection, table: str, schema: str | None) -> bool:
        names = trigger_names(table)
        n = conn.execute(sa.text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t "
            "AND name IN (:n0, :n1, :n2)"),
            {"t": table, "n0": names[0], "n1": names[1], "n2": names[2]}).scalar_one()
        return bool(n == 3)

    def any_triggers(self, conn: Connection) -> bool:
        n = conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
            "AND name LIKE 'exnode\\_%' ESCAPE '\\'").scalar_one()
        return bool(n)
