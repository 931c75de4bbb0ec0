"""The catalog's tables in the state DB (its Alembic branch ``catalog``): every version
of every entry, and a full-text index over the current ones."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from exnode.node.kernel.api import StateTables

metadata = MetaData()

# One row per version of a resource's entry (a change is a new version; old versions
# stay readable). ``seq`` is the center's order of publication: a node that was away
# asks for everything after the last seq it has.
catalog_entries = Table(
    "catalog_entries", metadata,
    Column("resource", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("provider_node", String(64), nullable=False),
    Column("current", Boolean, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("published_at", Float, nullable=False),
    Column("doc", Text, nullable=False),  # the entry as JSON
    Column("search_text", Text, nullable=False),  # what full-text search looks in
    Index("ix_catalog_seq", "seq"),
)

TABLES = StateTables("catalog", metadata, Path(__file__).parent / "migrations")
