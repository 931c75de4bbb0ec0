"""The monitor service's table in the state DB (its Alembic branch ``monitor``): the
alerts it raised, one per tracked item and deadline (the unique constraint keeps it so
across repeated scans and restarts), each open until the item is no longer overdue
(cleared) or until an operator acknowledges it (and then cleared all the same)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from exnode.node.kernel.api import StateTables

metadata = MetaData()

alerts = Table(
    "monitor_alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # access | correction | package | ...
    Column("item", String(200), nullable=False),  # the item's id within its kind
    Column("deadline", Float, nullable=False),  # the deadline it missed
    Column("resource", String(128), nullable=False),
    Column("node", String(64), nullable=False),  # the node that has to act ('' if none)
    Column("item_state", String(64), nullable=False),  # the item's state when raised
    Column("text", String(500), nullable=False),  # ids, states and times only
    Column("state", String(16), nullable=False),  # open | acknowledged | cleared
    Column("raised", Float, nullable=False),
    Column("cleared", Float),
    Column("acked_by", String(64)),
    Column("acked_at", Float),
    UniqueConstraint("kind", "item", "deadline", name="uq_monitor_alerts_item"),
    Index("ix_monitor_alerts_state", "state"),
)

TABLES = StateTables("monitor", metadata, Path(__file__).parent / "migrations")
