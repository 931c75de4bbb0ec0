"""Capture triggers: exnode installs them on a business table so that every row change
lands in the change table ``exnode_changes`` (变更表), which trigger capture
(:class:`exnode.policies.capture.TriggerCapture`) reads.

One row per change: ``id`` (increasing), ``tbl`` (table label), ``op`` ('I', 'U' or
'D') and ``key`` (the primary key as a JSON array in key order). An update that changes
the key is recorded as a 'D' of the old key followed by an 'I' of the new one.

Loop prevention: while exnode applies received changes it holds one uncommitted row in
``exnode_applying`` (the SQL adapter's table). That row is visible only to the applying
transaction, so the triggers skip exactly exnode's own writes and still record every
concurrent write by anybody else. How each database's triggers test for it is in its
dialect module (MariaDB/MySQL cannot read the table inside a trigger without locking
and use a session variable instead; see :mod:`exnode.adapters.dialects.mysql`).

This module checks names and key columns and creates the change table; the DDL itself
comes from the database's :class:`~exnode.adapters.dialects.Dialect` (PostgreSQL,
MariaDB/MySQL and SQLite have triggers; other databases get a TriggerError: use
incremental or snapshot capture there). Each function takes an optional ``dialects``
registry (default: the built-in dialects). TRUNCATE is not recorded: run a snapshot
capture to reconcile after one. Binary key columns are refused.

The change table and ``exnode_applying`` live in the database's default schema (the
connection's current schema on PostgreSQL, its database on MariaDB), where the SQL
adapter keeps its marker tables too, whatever schema the captured table is in. The
``tbl`` column (and the NOTIFY payload) is ``schema.table`` when a schema is given,
else ``table``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy import Engine

from .dialects import Dialect, DialectRegistry, default_registry
from .dialects.base import (
    APPLYING,
    CHANGES,
    TriggerError,
    changes_table,
    check_identifier,
    label,
    trigger_names,
)
from .dialects.mysql import FLAG_TRIGGERS
from .dialects.postgresql import CHANNEL, PG_TRIGGER
from .sql import ensure_marker_tables

__all__ = [
    "APPLYING",
    "CHANGES",
    "CHANNEL",
    "FLAG_TRIGGERS",
    "PG_TRIGGER",
    "TriggerError",
    "changes_table",
    "check_identifier",
    "dialect_of",
    "home_schema",
    "install",
    "installed",
    "label",
    "remove",
    "trigger_names",
]


def dialect_of(engine: Engine, dialects: DialectRegistry | None = None) -> Dialect:
    """The Dialect that writes ``engine``'s trigger DDL."""
    return (dialects if dialects is not None else default_registry).for_dialect(
        engine.dialect)


def home_schema(engine: Engine, *, dialects: DialectRegistry | None = None) -> str | None:
    """Where exnode's bookkeeping tables live: the connection's current schema on
    PostgreSQL, its database on MariaDB/MySQL, None (main) on SQLite."""
    return dialect_of(engine, dialects).home_schema(engine)


def _check_args(d: Dialect, table: str, schema: str | None) -> str | None:
    check_identifier(table)
    if schema is None:
        return None
    check_identifier(schema, "schema")
    return d.trigger_schema(schema)


def _check_key(engine: Engine, table: str, key: Sequence[str], schema: str | None) -> None:
    """Check that the table and its key columns exist and can go into JSON."""
    insp = sa.inspect(engine)
    if not insp.has_table(table, schema=schema):
        raise TriggerError(f"table {label(table, schema)} does not exist")
    cols = {c["name"]: c["type"] for c in insp.get_columns(table, schema=schema)}
    for k in key:
        if k not in cols:
            raise TriggerError(f"key column {k!r} is not a column of {table}")
        if isinstance(cols[k], (sa.LargeBinary, sa.BINARY, sa.VARBINARY)):
            raise TriggerError(f"key column {k!r} of {table} is binary; trigger capture "
                               "cannot record binary keys (use snapshot capture)")


def install(engine: Engine, table: str, key: Sequence[str], schema: str | None = None, *,
            dialects: DialectRegistry | None = None) -> None:
    """Create the change table, ``exnode_applying`` and the capture triggers on
    ``table``. Installing again replaces the triggers (e.g. after a key change)."""
    d = dialect_of(engine, dialects)
    schema = _check_args(d, table, schema)
    key = [check_identifier(k, "key column") for k in key]
    if not key:
        raise TriggerError("trigger capture needs at least one key column")
    if not d.supports_triggers:
        raise TriggerError(f"trigger capture does not support {engine.dialect.name} (use "
                           "incremental or snapshot capture)")
    _check_key(engine, table, key, schema)
    home = d.home_schema(engine)
    changes_table(home).create(engine, checkfirst=True)
    ensure_marker_tables(engine)  # exnode_applying belongs to the SQL adapter
    d.install_triggers(engine, table, key, schema, home)


def remove(engine: Engine, table: str, schema: str | None = None, *,
           drop_changes: bool = False, dialects: DialectRegistry | None = None) -> None:
    """Drop the capture triggers (and function) of ``table``. With ``drop_changes`` also
    forget its pending change rows, and drop the change table once no exnode triggers
    remain. Removing what is not there is not an error."""
    d = dialect_of(engine, dialects)
    schema = _check_args(d, table, schema)
    home = d.home_schema(engine)
    with engine.begin() as c:
        d.remove_triggers(c, table, schema, home)
    if not drop_changes or not sa.inspect(engine).has_table(CHANGES, schema=home):
        return
    changes = changes_table(home)
    with engine.begin() as c:
        c.execute(changes.delete().where(changes.c.tbl == label(table, schema)))
    with engine.connect() as c:
        left = d.any_triggers(c)
    if not left:
        changes.drop(engine, checkfirst=True)
        with engine.begin() as c:
            d.remove_bookkeeping(c, home)


def installed(engine: Engine, table: str, schema: str | None = None, *,
              dialects: DialectRegistry | None = None) -> bool:
    """True when every capture trigger of ``table`` is in place."""
    d = dialect_of(engine, dialects)
    schema = _check_args(d, table, schema)
    with engine.connect() as c:
        return d.triggers_installed(c, table, schema)
