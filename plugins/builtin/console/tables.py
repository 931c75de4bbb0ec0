"""The console's tables in the state DB (its Alembic branch ``console``): accounts with
their role and lockout state, open sessions, and the audit trail of every console
action (hash-chained like the exchange log, so an edited or deleted entry shows)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from exnode.node.kernel.api import StateTables

metadata = MetaData()

accounts = Table(
    "console_accounts", metadata,
    Column("name", String(32), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("pw_hash", Text, nullable=False),  # argon2id (policies/accounts.py)
    Column("lang", String(8), nullable=False),  # zh | en
    Column("disabled", Boolean, nullable=False),
    Column("failures", Text, nullable=False),  # JSON list of recent failure times
    Column("locked_until", Float, nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("last_login", Float),
)

sessions = Table(
    "console_sessions", metadata,
    Column("sid_hash", String(64), primary_key=True),  # sha256 of the session id
    Column("name", String(32), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

audit = Table(
    "console_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | refused | failed
    Column("detail", Text, nullable=False),
    Column("client", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_console_audit_ts", "ts"),
)

TABLES = StateTables("console", metadata, Path(__file__).parent / "migrations")
