"""The corrections service's table in the state DB (its Alembic branch ``corrections``):
corrections (校核纠错) filed by consumers, at the consumer that filed them, at the center
(which forwards them and keeps their deadlines) and at the owner that answers them."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Boolean, Column, Float, Index, MetaData, String, Table, Text

from exnode.node.kernel.api import StateTables

metadata = MetaData()

corrections = Table(
    "corrections", metadata,
    Column("id", String(36), primary_key=True),
    Column("resource", String(128), nullable=False),
    Column("consumer", String(64), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # open | accepted | rejected
    Column("due", Float),  # when the owner's answer is late (working days, 工作日)
    Column("overdue", Boolean, nullable=False),  # flagged (logged) once at this node
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("doc", Text, nullable=False),  # key, field, says, evidence, history
    Index("ix_corrections_status", "status", "due"),
)

TABLES = StateTables("corrections", metadata, Path(__file__).parent / "migrations")
