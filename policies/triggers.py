"""Capture triggers: exnode installs them on a business table so that every row change
lands in the change table ``exnode_changes`` (变更表), which trigger capture reads.

One row per change: ``id`` (increasing), ``tbl`` (table name), ``op`` ('I', 'U' or 'D')
and ``key`` (the primary key as a JSON array in key order). An update that changes the
key is recorded as a 'D' of the old key followed by an 'I' of the new one.

Loop prevention: while exnode applies received changes it holds one uncommitted row in
``exnode_applying`` (the SQL adapter's table). That row is visible only to the applying
transaction, so the triggers skip exactly exnode's own writes and still record every
concurrent write by anybody else. On PostgreSQL and SQLite the triggers look for the
row. On MariaDB/MySQL they cannot: a read inside a trigger is a locking read there
(REPEATABLE READ), so writers would wait for the applier and the applier for every open
writer. Instead two triggers on ``exnode_applying`` set the session variable
``@exnode_applying`` when the row is inserted and clear it when it is deleted, and the
capture triggers test that variable, which takes no lock. (A session may also set it by
hand to keep a bulk load out of the exchange; an apply that fails before deleting its
row leaves it set on that pooled connection of exnode's until the next apply.)

Supported: PostgreSQL (one plpgsql function per table, SECURITY DEFINER, plus a
``pg_notify('exnode_changes', 'schema.table')`` so that capture wakes at once),
MariaDB/MySQL and SQLite (three AFTER triggers each). TRUNCATE is not recorded: run a
snapshot capture to reconcile after one. Binary key columns are refused.

The change table and ``exnode_applying`` live in the database's default schema (the
connection's current schema on PostgreSQL, its database on MariaDB), where the SQL
adapter keeps its marker tables too, whatever schema the captured table is in. The
``tbl`` column (and the NOTIFY payload) is ``schema.table`` when a schema is given,
else ``table``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

from exnode.node.errors import ExnodeError

CHANGES = "exnode_changes"
APPLYING = "exnode_applying"
CHANNEL = "exnode_changes"
PG_TRIGGER = "exnode_capture"
FLAG_TRIGGERS = ("exnode_flag_set", "exnode_flag_clear")  # MariaDB/MySQL only

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class TriggerError(ExnodeError):
    """Capture triggers cannot be installed or removed as asked."""


def check_identifier(name: str, what: str = "table") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise TriggerError."""
    if not isinstance(name, str) or not _IDENT_RE.match(name):
        raise TriggerError(f"{what} name {name!r} is not a plain identifier (letters, digits "
                           "and '_', not starting with a digit, at most 63 characters); "
                           "trigger capture refuses it")
    return name


def changes_table(schema: str | None = None) -> Table:
    """Core definition of ``exnode_changes`` in ``schema``."""
    md = MetaData()
    return Table(
        CHANGES, md,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("tbl", String(128), nullable=False),
        Column("op", String(1), nullable=False),
        Column("key", Text, nullable=False),
        Column("changed_at", DateTime, nullable=False, server_default=func.now()),
        Index("ix_exnode_changes_tbl_id", "tbl", "id"),
        schema=schema, sqlite_autoincrement=True, mysql_charset="utf8mb4",
    )


def home_schema(engine: Engine) -> str | None:
    """Where exnode's bookkeeping tables live: the connection's current schema on
    PostgreSQL, its database on MariaDB/MySQL, None (main) on SQLite."""
    name = engine.dialect.name
    if name not in ("postgresql", "mysql", "mariadb"):
        return None
    with engine.connect() as c:
        v = c.exec_driver_sql("SELECT current_schema()" if name == "postgresql"
                              else "SELECT DATABASE()").scalar()
    if v is None:
        raise TriggerError("the database URL names no database (schema) to keep the "
                           "change table in")
    return check_identifier(str(v), "schema")


def label(table: str, schema: str | None = None) -> str:
    """What the triggers write into ``tbl`` and NOTIFY: ``schema.table`` or ``table``."""
    return f"{schema}.{table}" if schema else table


def _check_args(engine: Engine, table: str, schema: str | None) -> str | None:
    check_identifier(table)
    if schema is None:
        return None
    check_identifier(schema, "schema")
    if engine.dialect.name == "sqlite":
        if schema == "main":
            return None
        raise TriggerError("SQLite triggers cannot reach exnode's tables from an attached "
                           f"database ({schema!r}); capture tables of the main database")
    return schema


def _short(name: str, limit: int = 63) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9]}_{digest}"


def trigger_names(table: str) -> list[str]:
    """Names of the three row triggers on MariaDB/MySQL and SQLite."""
    return [_short(f"exnode_{table}_{s}") for s in ("ai", "au", "ad")]


def _pg_function(table: str, schema: str | None) -> str:
    return _short(f"exnode_chg_{schema}_{table}" if schema else f"exnode_chg_{table}")


def _ensure_bookkeeping(engine: Engine, home: str | None) -> None:
    changes_table(home).create(engine, checkfirst=True)
    # exnode_applying belongs to the SQL adapter (it writes it); create it its way.
    from exnode.adapters.sql import ensure_marker_tables

    ensure_marker_tables(engine)


def _key_info(engine: Engine, table: str, key: Sequence[str],
              schema: str | None) -> None:
    """Check that the table and its key columns exist and can go into JSON."""
    insp = sa.inspect(engine)
    if not insp.has_table(table, schema=schema):
        where = f"{schema}.{table}" if schema else table
        raise TriggerError(f"table {where} does not exist")
    cols = {c["name"]: c["type"] for c in insp.get_columns(table, schema=schema)}
    for k in key:
        if k not in cols:
            raise TriggerError(f"key column {k!r} is not a column of {table}")
        if isinstance(cols[k], (sa.LargeBinary, sa.BINARY, sa.VARBINARY)):
            raise TriggerError(f"key column {k!r} of {table} is binary; trigger capture "
                               "cannot record binary keys (use snapshot capture)")


def install(engine: Engine, table: str, key: Sequence[str], schema: str | None = None) -> None:
    """Create the change table, ``exnode_applying`` and the capture triggers on
    ``table``. Installing again replaces the triggers (e.g. after a key change)."""
    schema = _check_args(engine, table, schema)
    key = [check_identifier(k, "key column") for k in key]
    if not key:
        raise TriggerError("trigger capture needs at least one key column")
    name = engine.dialect.name
    if name not in ("postgresql", "mysql", "mariadb", "sqlite"):
        raise TriggerError(f"trigger capture does not support {name} (use incremental or "
                           "snapshot capture)")
    _key_info(engine, table, key, schema)
    home = home_schema(engine)
    _ensure_bookkeeping(engine, home)
    if name == "postgresql":
        _pg_install(engine, table, key, schema, home)
    elif name == "sqlite":
        _sqlite_install(engine, table, key)
    else:
        _mysql_install(engine, table, key, schema, home)


def remove(engine: Engine, table: str, schema: str | None = None, *,
           drop_changes: bool = False) -> None:
    """Drop the capture triggers (and function) of ``table``. With ``drop_changes`` also
    forget its pending change rows, and drop the change table once no exnode triggers
    remain. Removing what is not there is not an error."""
    schema = _check_args(engine, table, schema)
    q = engine.dialect.identifier_preparer.quote
    home = home_schema(engine)
    pre = f"{q(schema)}." if schema else ""
    name = engine.dialect.name
    with engine.begin() as c:
        if name == "postgresql":
            if c.execute(sa.text("SELECT to_regclass(:t)"),
                         {"t": f"{pre}{q(table)}"}).scalar() is not None:
                c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {pre}{q(table)}")
            c.exec_driver_sql(
                f"DROP FUNCTION IF EXISTS {q(home or 'public')}.{q(_pg_function(table, schema))}()")
        else:
            for t in trigger_names(table):
                c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {pre}{q(t)}")
    if drop_changes and sa.inspect(engine).has_table(CHANGES, schema=home):
        changes = changes_table(home)
        with engine.begin() as c:
            c.execute(changes.delete().where(changes.c.tbl == label(table, schema)))
        if not _any_exnode_triggers(engine):
            changes.drop(engine, checkfirst=True)
            if name in ("mysql", "mariadb"):
                hp = f"{q(home)}." if home else ""
                with engine.begin() as c:
                    for t in FLAG_TRIGGERS:
                        c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {hp}{q(t)}")


def installed(engine: Engine, table: str, schema: str | None = None) -> bool:
    """True when every capture trigger of ``table`` is in place."""
    schema = _check_args(engine, table, schema)
    q = engine.dialect.identifier_preparer.quote
    pre = f"{q(schema)}." if schema else ""
    name = engine.dialect.name
    names = trigger_names(table)
    with engine.connect() as c:
        if name == "postgresql":
            n = c.execute(sa.text(
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid = to_regclass(:rel) AND t.tgname = :tg AND p.proname = :fn"),
                {"rel": f"{pre}{q(table)}", "tg": PG_TRIGGER,
                 "fn": _pg_function(table, schema)}).scalar_one()
            return bool(n == 1)
        if name in ("mysql", "mariadb"):
            n = c.execute(sa.text(
                "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                "COALESCE(:s, DATABASE()) AND EVENT_OBJECT_TABLE = :t AND TRIGGER_NAME IN "
                "(:n0, :n1, :n2)"),
                {"s": schema, "t": table, "n0": names[0], "n1": names[1],
                 "n2": names[2]}).scalar_one()
            flags = c.execute(sa.text(
                "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                "DATABASE() AND TRIGGER_NAME IN (:f0, :f1)"),
                {"f0": FLAG_TRIGGERS[0], "f1": FLAG_TRIGGERS[1]}).scalar_one()
            return bool(n == 3 and flags == 2)
        else:
            n = c.execute(sa.text(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t "
                "AND name IN (:n0, :n1, :n2)"),
                {"t": table, "n0": names[0], "n1": names[1], "n2": names[2]}).scalar_one()
        return bool(n == 3)


def _any_exnode_triggers(engine: Engine) -> bool:
    """Whether any capture trigger is left (in any schema: they all may write here)."""
    name = engine.dialect.name
    with engine.connect() as c:
        if name == "postgresql":
            n = c.execute(sa.text("SELECT count(*) FROM pg_trigger WHERE tgname = :tg"),
                          {"tg": PG_TRIGGER}).scalar_one()
        elif name in ("mysql", "mariadb"):
            n = c.execute(sa.text(
                "SELECT count(*) FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_NAME LIKE 'exnode\\_%' AND TRIGGER_NAME NOT IN (:f0, :f1)"),
                {"f0": FLAG_TRIGGERS[0], "f1": FLAG_TRIGGERS[1]}).scalar_one()
        else:
            n = c.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                "AND name LIKE 'exnode\\_%' ESCAPE '\\'").scalar_one()
    return bool(n)


# --- PostgreSQL ---------------------------------------------------------------------


def _pg_install(engine: Engine, table: str, key: list[str], schema: str | None,
                home: str | None) -> None:
    q = engine.dialect.identifier_preparer.quote
    h = q(home or "public")
    target = f"{q(schema)}.{q(table)}" if schema else q(table)
    fn = f"{h}.{q(_pg_function(table, schema))}"
    old = ", ".join(f"OLD.{q(k)}" for k in key)
    new = ", ".join(f"NEW.{q(k)}" for k in key)
    lit = f"'{label(table, schema)}'"  # checked plain identifiers: safe as a literal

    def rec(op: str, rowvals: str) -> str:
        return (f"INSERT INTO {h}.{CHANGES} (tbl, op, key) "
                f"VALUES ({lit}, '{op}', json_build_array({rowvals})::text);")

    body = f"""
BEGIN
  IF EXISTS (SELECT 1 FROM {h}.{APPLYING}) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    {rec('I', new)}
  ELSIF TG_OP = 'UPDATE' THEN
    IF ROW({old}) IS DISTINCT FROM ROW({new}) THEN
      {rec('D', old)}
      {rec('I', new)}
    ELSE
      {rec('U', new)}
    END IF;
  ELSE
    {rec('D', old)}
  END IF;
  PERFORM pg_notify('{CHANNEL}', {lit});
  RETURN NULL;
END
"""
    with engine.begin() as c:
        # SECURITY DEFINER: business users need no rights on the change table.
        c.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $exnode${body}$exnode$")
        c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {target}")
        c.exec_driver_sql(
            f"CREATE TRIGGER {PG_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {target} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()")


# --- MariaDB / MySQL ----------------------------------------------------------------


def _mysql_install(engine: Engine, table: str, key: list[str], schema: str | None,
                   home: str | None) -> None:
    q = engine.dialect.identifier_preparer.quote
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


# --- SQLite -------------------------------------------------------------------------


def _sqlite_install(engine: Engine, table: str, key: list[str]) -> None:
    q = engine.dialect.identifier_preparer.quote
    lit = f"'{table}'"
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
    # pysqlite commits before DDL on its own; run the swap in one explicit transaction so
    # that no write slips through while the triggers are being replaced.
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
