"""MariaDB and MySQL (PyMySQL; SQLAlchemy dialect names ``mysql`` and ``mariadb``).

What differs from the generic path, and why:

- Sessions are set to UTC (``SET time_zone = '+00:00'``, once per pooled connection):
  MariaDB/MySQL convert TIMESTAMP columns with the session time zone, the server's
  local one by default; in UTC they are instants, like PostgreSQL's ``timestamptz``.
- ``BOOL`` is ``TINYINT(1)``, so a TINYINT(1) column counts as bool.
- Composite-key lookups use a row-value IN; keyset pagination stays on the expanded
  AND/OR form, because MariaDB's optimizer ranges over that but not over a row-value
  comparison.
- Upserts are ``INSERT ... ON DUPLICATE KEY UPDATE``.
- Capture triggers: three AFTER triggers per table. Loop prevention cannot read
  ``exnode_applying`` inside a trigger: a read there is a locking read (REPEATABLE
  READ), so writers would wait for the applier and the applier for every open writer.
  Instead two triggers on ``exnode_applying`` (:data:`FLAG_TRIGGERS`) set the session
  variable ``@exnode_applying`` when its row is inserted and clear it when it is
  deleted, and the capture triggers test that variable, which takes no lock. (A session
  may also set it by hand to keep a bulk load out of the exchange; an apply that fails
  before deleting its row leaves it set on that pooled connection of exnode's until the
  next apply.)
- exnode's bookkeeping tables live in the connection's database (``DATABASE()``);
  trigger bodies qualify them, since unqualified names there mean the trigger's own
  database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from .base import (
    APPLYING,
    CHANGES,
    Dialect,
    Row,
    label,
    quoter,
    trigger_names,
)

#: The triggers on ``exnode_applying`` that set and clear ``@exnode_applying``.
FLAG_TRIGGERS = ("exnode_flag_set", "exnode_flag_clear")


class MySQLDialect(Dialect):
    """MariaDB/MySQL: UTC sessions, TINYINT(1) as bool, ON DUPLICATE KEY, flag triggers."""

    name: ClassVar[str] = "mysql"
    sa_names: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    supports_triggers: ClassVar[bool] = True
    row_value_in_list: ClassVar[bool] = True
    title: ClassVar[str] = "MariaDB/MySQL"

    # ---- sessions and types ----

    def prepare_session(self, conn: Connection) -> None:
        info = conn.connection.info
        if not info.get("exnode_utc"):
            conn.exec_driver_sql("SET time_zone = '+00:00'")
            info["exnode_utc"] = True  # once per pooled DBAPI connection

    def column_kind(self, coltype: sa.types.TypeEngine[Any]) -> tuple[str, bool]:
        if isinstance(coltype, mysql.TINYINT) and getattr(coltype, "display_width", None) == 1:
            return "bool", False
        return super().column_kind(coltype)

    # ---- exact values ----

    def int_bounds(self, coltype: sa.types.TypeEngine[Any]) -> tuple[int, int] | None:
        bits = 8 if isinstance(coltype, mysql.TINYINT) else \
            16 if isinstance(coltype, sa.SmallInteger) else \
            24 if isinstance(coltype, mysql.MEDIUMINT) else \
            64 if isinstance(coltype, sa.BigInteger) else 32
        if getattr(coltype, "unsigned", False):
            return 0, (1 << bits) - 1
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def fraction_digits(self, coltype: sa.types.TypeEngine[Any]) -> int:
        # DATETIME, TIMESTAMP and TIME without (fsp) keep whole seconds.
        fsp = getattr(coltype, "fsp", None)
        return fsp if isinstance(fsp, int) else 0

    # ---- writes ----

    def write_rows(self, conn: Connection, table: sa.Table, keys: list[str],
                   names: list[str], rows: list[Row]) -> None:
        # ON DUPLICATE KEY fires on any unique index, not only the key: the resource's
        # key should be the table's primary key (SqlAdapter checks that it is unique).
        if not rows:
            return
        ins = mysql.insert(table)
        rest = [n for n in names if n not in keys] or keys[:1]
        conn.execute(ins.on_duplicate_key_update({n: ins.inserted[n] for n in rest}), rows)

    # ---- capture triggers ----

    def home_schema(self, engine: Engine) -> str | None:
        return self._query_home(engine, "SELECT DATABASE()")

    def install_triggers(self, engine: Engine, table: str, key: Sequence[str],
                         schema: str | None, home: str | None) -> None:
        q = quoter(engine)
        pre = f"{q(schema)}." if schema else ""
        # A trigger body names tables of the trigger's own database unless qualified.
        hp = f"{q(home)}." if home else ""
        lit = f"'{label(table, schema)}'"
        old = ", ".join(f"OLD.{q(k)}" for k in key)
        new = ", ".join(f"NEW.{q(k)}" for k in key)
        # Compare bytes so that a case-only key change under a _ci collation still counts.
        same = " AND ".join(f"CAST(OLD.{q(k)} AS BINARY) <=> CAST(NEW.{q(k)} AS BINARY)"
                            for k in key)

        def rec(op: str, rowvals: str) -> str:
            return (f"INSERT INTO {hp}{CHANGES} (tbl, op, `key`) "
                    f"VALUES ({lit}, '{op}', JSON_ARRAY({rowvals}));")

        bodies = {
            "INSERT": rec("I", new),
            "UPDATE": f"IF {same} THEN {rec('U', new)} ELSE {rec('D', old)} {rec('I', new)} "
                      "END IF;",
            "DELETE": rec("D", old),
        }
        # (name with schema, DDL after CREATE [OR REPLACE])
        ddls = [
            (f"{hp}{q(FLAG_TRIGGERS[0])}", f"AFTER INSERT ON {hp}{APPLYING} FOR EACH ROW "
             "SET @exnode_applying = 1"),
            (f"{hp}{q(FLAG_TRIGGERS[1])}", f"AFTER DELETE ON {hp}{APPLYING} FOR EACH ROW "
             "SET @exnode_applying = NULL"),
        ]
        for tname, (event, body) in zip(trigger_names(table), bodies.items(), strict=True):
            ddls.append((f"{pre}{q(tname)}", f"AFTER {event} ON {pre}{q(table)} FOR EACH ROW "
                         f"BEGIN IF @exnode_applying IS NULL THEN {body} END IF; END"))
        replace = getattr(engine.dialect, "is_mariadb", False)
        with engine.begin() as c:
            for tname, ddl in ddls:
                if replace:
                    c.exec_driver_sql(f"CREATE OR REPLACE TRIGGER {tname} {ddl}")
                else:  # MySQL has no CREATE OR REPLACE TRIGGER
                    c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {tname}")
                    c.exec_driver_sql(f"CREATE TRIGGER {tname} {ddl}")

    def remove_triggers(self, conn: Connection, table: str, schema: str | None,
                        home: str | None) -> None:
        q = quoter(conn)
        pre = f"{q(schema)}." if schema else ""
        for t in trigger_names(table):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {pre}{q(t)}")

    def triggers_installed(self, conn: Connection, table: str, schema: str | None) -> bool:
        names = trigger_names(table)
        n = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
            "COALESCE(:s, DATABASE()) AND EVENT_OBJECT_TABLE = :t AND TRIGGER_NAME IN "
            "(:n0, :n1, :n2)"),
            {"s": schema, "t": table, "n0": names[0], "n1": names[1],
             "n2": names[2]}).scalar_one()
        flags = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
            "DATABASE() AND TRIGGER_NAME IN (:f0, :f1)"),
            {"f0": FLAG_TRIGGERS[0], "f1": FLAG_TRIGGERS[1]}).scalar_one()
        return bool(n == 3 and flags == 2)

    def any_triggers(self, conn: Connection) -> bool:
        n = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_NAME LIKE 'exnode\\_%' AND TRIGGER_NAME NOT IN (:f0, :f1)"),
            {"f0": FLAG_TRIGGERS[0], "f1": FLAG_TRIGGERS[1]}).scalar_one()
        return bool(n)

    def remove_bookkeeping(self, conn: Connection, home: str | None) -> None:
        q = quoter(conn)
        hp = f"{q(home)}." if home else ""
        for t in FLAG_TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {hp}{q(t)}")
