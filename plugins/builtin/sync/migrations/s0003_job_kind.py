"""sync_jobs.kind holds 'repair:<node>' (a re-send of a resource to one node)

Revision ID: s0003
Revises: s0002
"""
import sqlalchemy as sa
from alembic import op

revision = 's0003'
down_revision = 's0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sync_jobs') as b:
        b.alter_column('kind', existing_type=sa.String(length=16), type_=sa.String(length=80),
                       existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('sync_jobs') as b:
        b.alter_column('kind', existing_type=sa.String(length=80), type_=sa.String(length=16),
                       existing_nullable=False)
