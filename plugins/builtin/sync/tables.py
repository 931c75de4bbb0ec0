"""The database-sync service's own tables in the state DB (its Alembic branch ``sync``
is in ``migrations/``): freshness, row origins, conflicts, rejection notices, initial
loads, capture checkpoints and snapshot hashes, the quarantine and quality statistics."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from exnode.node.kernel.api import StateTables

metadata = MetaData()


freshness = Table(
    "freshness", metadata,
    Column("resource", String(128), primary_key=True),
    Column("node", String(64), primary_key=True),
    Column("last_current", Float, nullable=False),  # last known current (data or zero report)
    Column("last_change", Float),
    Column("last_rows", Integer, nullable=False, default=0),
)

row_origin = Table(
    "row_origin", metadata,
    Column("resource", String(128), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("origin", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("hash", LargeBinary),
)

conflicts = Table(
    "conflicts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource", String(128), nullable=False),
    Column("src", String(64), nullable=False),
    Column("pkg_id", String(36), nullable=False),
    Column("key", String(512), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),  # open|resolved
    Column("created", Float, nullable=False),
    Column("resolved_at", Float),
    Column("resolution", String(16)),  # incoming|current
    Column("change", LargeBinary, nullable=False),
    Column("current", LargeBinary),
    Index("ix_conflicts_open", "status", "resource"),
)

notices = Table(
    "notices", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource", String(128), nullable=False),
    Column("src", String(64), nullable=False),
    Column("pkg_id", String(36), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("items", LargeBinary, nullable=False),
)

sync_jobs = Table(
    "sync_jobs", metadata,
    Column("resource", String(128), primary_key=True),
    Column("kind", String(80), primary_key=True),  # initial | repair:<node>
    Column("status", String(16), nullable=False),  # running|done|failed
    Column("rows", BigInteger, nullable=False, default=0),
    Column("total", BigInteger),
    Column("started", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("error", Text),
    Column("after_key", LargeBinary),
)

# Capture checkpoints (watermarks, consumed change ids, snapshot cursor) and the row
# hashes of the last snapshot: see capture.py.
capture_state = Table(
    "capture_state", metadata,
    Column("resource", String(128), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)

snapshot_rows = Table(
    "snapshot_rows", metadata,
    Column("resource", String(128), primary_key=True),
    Column("key", LargeBinary, primary_key=True),  # encode_key(): sorts in key order
    Column("hash", LargeBinary, nullable=False),
)

# Data rule checks (issue 4): rows that failed, with the rules and reasons.
quarantine = Table(
    "quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource", String(128), nullable=False),
    Column("key", String(512), nullable=False),
    Column("stage", String(8), nullable=False),  # owner|center
    Column("src", String(64), nullable=False),
    Column("pkg_id", String(36)),
    Column("created", Float, nullable=False),
    Column("status", String(16), nullable=False),  # open|retried|dropped
    Column("updated", Float, nullable=False),
    Column("violations", LargeBinary, nullable=False),  # CBOR [[rule, field, reason], ...]
    Column("row", LargeBinary, nullable=False),  # the change, as a one-row batch
    Index("ix_quarantine_open", "status", "resource"),
)

quality_stats = Table(
    "quality_stats", metadata,
    Column("resource", String(128), primary_key=True),
    Column("stage", String(8), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD
    Column("checked", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("by_rule", LargeBinary, nullable=False),  # CBOR {rule: count}
)

# (center) Changes for a subscriber that is not an approved member now (revoked, not
# yet approved, unknown): they wait here, in order, and go out once it is. A problem of
# one subscriber never refuses or blocks the owner's package (issue 9).
held_forwards = Table(
    "held_forwards", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dest", String(64), nullable=False),
    Column("resource", String(128), nullable=False),
    Column("created", Float, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("rows", Integer),  # changes in data (null: held before s0004)
    Index("ix_held_forwards_dest", "dest", "resource", "id"),
)

TABLES = StateTables("sync", metadata, Path(__file__).parent / "migrations")
