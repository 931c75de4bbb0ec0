"""notes: the notice board's table

The first revision of the notes service's own Alembic branch.

Revision ID: notes_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "notes_0001"
down_revision = None  # the first revision of its branch
branch_labels = ("notes",)  # the name given to StateTables
depends_on = "0001"  # the kernel's first revision runs before this one


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("posted_at", sa.Float(), nullable=False),
        sa.Column("filed_at", sa.Float(), nullable=True),
        sa.Column("pkg_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notes_pkg_id", "notes", ["pkg_id"])


def downgrade() -> None:
    op.drop_index("ix_notes_pkg_id", table_name="notes")
    op.drop_table("notes")
