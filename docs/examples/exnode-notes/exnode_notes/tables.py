"""The notice board's own table in the state DB, and where its Alembic revisions are.

The same table serves both roles. At the center it is the board: one row per notice,
with the number the center gave it. At a bureau it is the list of notices the bureau
has posted: ``number`` and ``filed_at`` stay empty until the center has answered.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

from exnode.node.kernel.api import StateTables

metadata = MetaData()

notes = Table(
    "notes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number", Integer),  # the notice's number on the center's board
    Column("author", String(64), nullable=False),  # the node that posted it
    Column("title", String(120), nullable=False),
    Column("text", Text, nullable=False),
    Column("posted_at", Float, nullable=False),
    Column("filed_at", Float),  # when the center put it on its board
    Column("pkg_id", String(36), index=True),  # the package that carried it, if any
)

# "notes" is the branch label: the first revision in migrations/ carries it.
TABLES = StateTables("notes", metadata, Path(__file__).parent / "migrations")
