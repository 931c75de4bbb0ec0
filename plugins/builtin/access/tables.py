"""The access service's table in the state DB (its Alembic branch ``access``): access
requests, at the center (where they are decided), at the consumer that asked and at the
provider that answers, each with the step it is at and that step's deadline."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Boolean, Column, Float, Index, MetaData, String, Table, Text

from exnode.node.kernel.api import StateTables

metadata = MetaData()

access_requests = Table(
    "access_requests", metadata,
    Column("id", String(36), primary_key=True),
    Column("resource", String(128), nullable=False),
    Column("consumer", String(64), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("service", String(16), nullable=False),
    # review (the center's compliance review) | provider (the provider's answer) |
    # granted | refused
    Column("status", String(16), nullable=False),
    Column("due", Float),  # when the current step is late (working days, 工作日)
    Column("overdue", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("doc", Text, nullable=False),  # fields, rows, purpose, basis, until, history...
    Index("ix_access_status", "status", "due"),
)

TABLES = StateTables("access", metadata, Path(__file__).parent / "migrations")
